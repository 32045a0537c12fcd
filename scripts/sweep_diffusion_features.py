"""Sweep of the diffusion features' timesteps and UNet up blocks, to choose their defaults.

Usage::

    python scripts/sweep_diffusion_features.py [--backbone default|PATH|HUB_ID] [--data DIR]
        [--datasets glas monuseg] [--timesteps 10 50 100 200 400 50,150 10,100]
        [--blocks 1 2 3 1,2 2,3 1,2,3] [--grid one-at-a-time|full] [--unconditioned]
        [--max-train N] [--max-val N] [--head-steps N] [--threads 1] [--out FILE.md]

For each setting, the same head as in ``scripts/bench_backbone.py`` (same settings and seed) is
trained on the training images of the fixed split (``core.splits``) and scored on its
validation images: GlaS (tissue scale) and MoNuSeg (nuclei scale) by default. Inputs are
resampled to the backbone's µm/px.

``--grid one-at-a-time`` (default) varies the timesteps with the backbone's default blocks, then
the blocks with its default timesteps; ``--grid full`` tries every combination. The UNet runs
once per tile and timestep of the union of all settings (the noise of a timestep does not
depend on the other timesteps, and the blocks are read from the same pass), and every setting
takes its maps from that one result, so a setting costs only its head.

Prints a table (mean Dice and mIoU per dataset, their mean over the datasets) and the best
setting per scale; writes it to ``--out`` and the figures to the JSON beside it.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_backbone import DATA, DATASETS, SEED, load_dataset, public_text  # noqa: E402


def parse_sets(values: list[str], what: str) -> list[tuple[int, ...]]:
    """``["10", "50,150"]`` → ``[(10,), (50, 150)]`` (sorted, unique within a set).

    Examples
    --------
    >>> parse_sets(["10", "150,50"], "timesteps")
    [(10,), (50, 150)]
    """
    out = []
    for v in values:
        try:
            items = tuple(sorted({int(x) for x in str(v).split(",") if x.strip()}))
        except ValueError:
            raise SystemExit(f"--{what}: {v!r} is not a comma-separated list of integers") from None
        if not items:
            raise SystemExit(f"--{what}: empty set {v!r}")
        if items not in out:
            out.append(items)
    return out


def settings_grid(timestep_sets, block_sets, *, base_timesteps, base_blocks, grid: str):
    """The (timesteps, blocks) settings to try, base setting first.

    Examples
    --------
    >>> settings_grid([(10,), (50, 150)], [(1,), (1, 2)], base_timesteps=(50, 150),
    ...               base_blocks=(1, 2), grid="one-at-a-time")
    [((50, 150), (1, 2)), ((10,), (1, 2)), ((50, 150), (1,))]
    """
    base = (tuple(base_timesteps), tuple(base_blocks))
    if grid == "full":
        combos = list(itertools.product(timestep_sets, block_sets))
    elif grid == "one-at-a-time":
        combos = [(t, base[1]) for t in timestep_sets] + [(base[0], b) for b in block_sets]
    else:
        raise ValueError(f"Unknown grid {grid!r}: use 'one-at-a-time' or 'full'.")
    out = [base]
    for c in combos:
        if c not in out:
            out.append(c)
    return out


class MemoFeatures:
    """Diffusion features of the union of all settings, computed once per tile (by its pixels)."""

    def __init__(self, extractor):
        self.extractor = extractor
        self.memo: dict[bytes, list[np.ndarray]] = {}
        self.seconds = 0.0

    def get(self, tiles: np.ndarray) -> list[list[np.ndarray]]:
        keys = [hashlib.blake2b(t.tobytes(), digest_size=16).digest() for t in tiles]
        missing = [i for i, k in enumerate(keys) if k not in self.memo]
        if missing:
            t0 = time.perf_counter()
            maps = self.extractor.extract(np.ascontiguousarray(tiles[missing]))
            self.seconds += time.perf_counter() - t0
            for j, i in enumerate(missing):
                self.memo[keys[i]] = [np.ascontiguousarray(m[j]) for m in maps]
        return [self.memo[k] for k in keys]


def subset_extractor(sub, memo: MemoFeatures):
    """An extractor that is ``sub`` (identity, channels, ...) but takes its maps from ``memo``."""
    from napari_pathsegdiff.models.features_base import FeatureExtractor

    index = [memo.extractor.maps.index(m) for m in sub.maps]

    class SubsetFeatures(FeatureExtractor):
        kind, multiple, mpp = sub.kind, sub.multiple, sub.mpp
        tile_size, halo = sub.tile_size, sub.halo
        identity = property(lambda self: sub.identity)
        channels = property(lambda self: sub.channels)
        strides = property(lambda self: sub.strides)

        def config(self):
            return sub.config()

        def extract(self, tiles):
            per_tile = memo.get(self.check_tiles(tiles))
            return [np.stack([f[i] for f in per_tile]) for i in index]

    return SubsetFeatures()


def score_setting(spec, extractor, train, val, *, head_steps) -> dict:
    """Head on all training images, pooled Dice / IoU on the validation images."""
    from napari_pathsegdiff.core.metrics import evaluate
    from napari_pathsegdiff.core.progress import drive
    from napari_pathsegdiff.engine.inference.predict import predict_region
    from napari_pathsegdiff.engine.training.train_head import TrainSample, train_head

    classes = sorted({int(c) for it in train for c in np.unique(it.mask)})
    samples = [TrainSample(it.slide, it.mask, name=it.name, mpp=spec.mpp) for it in train]
    t0 = time.perf_counter()
    result = drive(train_head(samples, extractor=extractor, class_ids=classes, seed=SEED,
                              steps=head_steps, threads=1), show=False)
    triples = []
    for it in val:
        pred = drive(predict_region(it.slide, head=result.head, extractor=extractor, mpp=spec.mpp), show=False)
        triples.append((it.name, pred.labels, it.mask))
    scores = evaluate(triples)
    return {"mean_dice": scores["mean_dice"], "mean_iou": scores["mean_iou"],
            "per_class": {int(c): v["dice"] for c, v in scores["per_class"].items()},
            "head_steps": result.steps, "seconds": round(time.perf_counter() - t0, 1)}


def _label(ts, bs) -> str:
    return f"t={','.join(map(str, ts))} blocks={','.join(map(str, bs))}"


def render(report: dict) -> str:
    """Header, one row per setting, and the best setting per scale."""
    ds = list(report["datasets"])
    titles = [DATASETS[d].title for d in ds]
    lines = [f"Diffusion-feature sweep, {report['date']}. Command: `{report['command']}`", "",
             f"- Backbone `{report['backbone']}`, {'null (unconditioned)' if report['unconditioned'] else 'guide'}"
             f" context; head as in bench_backbone (seed 0, steps {report['head_steps']}).",
             "- " + "; ".join(f"{DATASETS[d].title} {len(v['train'])} train / {len(v['val'])} validation"
                              for d, v in report["datasets"].items())
             + f" (`core.splits`). Grid: {report['grid']}.",
             f"- Machine: {os.cpu_count()} cores, torch threads {report['threads']}, load average "
             f"{report['load_average'][0]} → {report['load_average'][1]}; UNet features "
             f"{report['feature_s']:.0f} s, wall {report['wall_s']} s.", ""]
    header = ["timesteps", "blocks", "channels"] + [f"{t} Dice" for t in titles] + [f"{t} mIoU" for t in titles]
    header += ["mean Dice"] if len(ds) > 1 else []
    lines += ["| " + " | ".join(header) + " |", "|---|---|---:|" + "---:|" * (len(header) - 3)]
    best = {d: max(r["scores"][d]["mean_dice"] for r in report["rows"]) for d in ds}
    for r in report["rows"]:
        cells = [",".join(map(str, r["timesteps"])), ",".join(map(str, r["blocks"])), str(r["channels"])]
        for d in ds:
            v = r["scores"][d]["mean_dice"]
            cells.append(f"**{v:.3f}**" if v == best[d] else f"{v:.3f}")
        cells += [f"{r['scores'][d]['mean_iou']:.3f}" for d in ds]
        if len(ds) > 1:
            cells.append(f"{np.mean([r['scores'][d]['mean_dice'] for d in ds]):.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for d in ds:
        top = max(report["rows"], key=lambda r: r["scores"][d]["mean_dice"])
        lines.append(f"Best for {DATASETS[d].title} ({DATASETS[d].scale} scale): "
                     f"{_label(top['timesteps'], top['blocks'])}, Dice {top['scores'][d]['mean_dice']:.3f}.")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="default")
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=["glas", "monuseg"])
    p.add_argument("--timesteps", nargs="+", default=["10", "50", "100", "200", "400", "50,150", "10,100"],
                   help="timestep sets, each one number or a comma-separated list")
    p.add_argument("--blocks", nargs="+", default=["1", "2", "3", "1,2", "2,3", "1,2,3"],
                   help="UNet up-block sets (0 is the lowest resolution)")
    p.add_argument("--grid", choices=["one-at-a-time", "full"], default="one-at-a-time")
    p.add_argument("--unconditioned", action="store_true", help="null context instead of the guide's")
    p.add_argument("--max-train", type=int)
    p.add_argument("--max-val", type=int)
    p.add_argument("--head-steps", type=int, help="head steps (default: the engine's)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if not args.data.is_dir():
        p.error(f"data folder {args.data} does not exist: give --data DIR")

    import torch

    torch.set_num_threads(args.threads)
    from napari_pathsegdiff.models.backbone import load_backbone
    from napari_pathsegdiff.models.diffusion_features import DiffusionFeatures

    start, load0 = time.perf_counter(), os.getloadavg()
    bb = load_backbone(args.backbone)
    t_sets, b_sets = parse_sets(args.timesteps, "timesteps"), parse_sets(args.blocks, "blocks")
    settings = settings_grid(t_sets, b_sets, base_timesteps=bb.default_timesteps,
                             base_blocks=bb.default_blocks, grid=args.grid)
    cond = not args.unconditioned
    union_t = sorted({t for ts, _ in settings for t in ts})
    union_b = sorted({b for _, bs in settings for b in bs})
    full = DiffusionFeatures(bb, timesteps=union_t, blocks=union_b, conditioned=cond)
    subs = [DiffusionFeatures(bb, timesteps=ts, blocks=bs, conditioned=cond) for ts, bs in settings]
    report = {"date": str(date.today()),
              "command": public_text(" ".join(["python scripts/sweep_diffusion_features.py",
                                               *(argv if argv is not None else sys.argv[1:])])),
              "backbone": bb.identity, "unconditioned": args.unconditioned, "grid": args.grid,
              "head_steps": args.head_steps or "engine default", "threads": args.threads,
              "datasets": {}, "rows": [{"timesteps": list(ts), "blocks": list(bs), "channels": sum(s.channels),
                                        "identity": s.identity, "scores": {}}
                                       for (ts, bs), s in zip(settings, subs)]}
    feature_s = 0.0
    for d in args.datasets:
        spec = DATASETS[d]
        train, val = load_dataset(args.data, spec, max_train=args.max_train, max_val=args.max_val)
        report["datasets"][d] = {"train": [it.name for it in train], "val": [it.name for it in val]}
        memo = MemoFeatures(full)
        for row, sub in zip(report["rows"], subs):
            row["scores"][d] = score_setting(spec, subset_extractor(sub, memo), train, val,
                                             head_steps=args.head_steps)
            print(f"[{time.perf_counter() - start:6.0f} s] {spec.title} {_label(row['timesteps'], row['blocks'])}: "
                  f"Dice {row['scores'][d]['mean_dice']:.3f} ({row['scores'][d]['seconds']} s)",
                  file=sys.stderr, flush=True)
        feature_s += memo.seconds
        del memo
    report["feature_s"] = feature_s
    report["load_average"] = [round(load0[0], 1), round(os.getloadavg()[0], 1)]
    report["wall_s"] = round(time.perf_counter() - start)
    text = render(report)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
        args.out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
