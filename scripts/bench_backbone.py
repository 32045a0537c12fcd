"""Benchmark of a backbone's features on held-out real data: the one table of issue 4.

Usage::

    python scripts/bench_backbone.py [--backbone default|PATH|HUB_ID] [--data DIR]
                                     [--out FILE.md] [--json FILE.json] [--quick]
                                     [--datasets glas gleason monuseg miccai2015]
                                     [--features diffusion diffusion-uncond random classic rgb]
                                     [--timesteps T ...] [--blocks B ...] [--threads 1]
                                     [--cache-gb 2] [--skip-speed]

On the validation splits of ``core.splits`` (MoNuSeg 24/6, GlaS 7/3, Gleason 3/2, MICCAI 2015
10/5; the backbone's training run excluded exactly these validation images), the same head
(same settings, same seed) is trained on the same labels with each feature extractor:

- ``diffusion``: the backbone's decoder features, conditioned on the guide's embedding;
- ``diffusion-uncond``: the same with the null (zero) condition;
- ``random``: the same architecture (``small``) with random weights, the control;
- ``classic``: the scikit-image filter bank; ``rgb``: the raw pixels.

For each dataset the head is trained on 1 image, on 3 images and on all training images (the 1
and 3 drawn with a fixed seed, nested) and evaluated on the validation images: Dice per class,
mean Dice and mIoU (pixels pooled over the validation images, background left out of the
means) for the head trained on all images, and the mean Dice of the three heads (label
efficiency). Inputs are given their µm/px, so the engine resamples them to the backbone's
0.5 µm/px for diffusion features (classic and rgb features are analysed at the images' own
µm/px, as the engine does for them).

Speed: features + head for a 1024x1024 region of the CMU-1 sample slide (0.499 µm/px) from an
empty feature cache and again from the cache, on this machine with ``--threads`` torch
threads. Size: bytes of the backbone's weights files.

The Markdown table is printed and written to ``--out``; everything (per-image scores, head
training summaries, timings) goes to the JSON file (``--json``, default ``--out`` with the
suffix ``.json``). ``--quick`` runs a reduced version for smoke tests (GlaS only, 3 training
and 1 validation image, short head training); its output says so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SLIDE = ROOT / "src" / "napari_pathsegdiff" / "sample_data" / "CMU-1-Small-Region.svs"

#: Sizes of the label-efficiency subsets besides "all".
SUBSET_SIZES = (1, 3)
#: Seed of the head training and of the choice of the label-efficiency subsets.
SEED = 0


@dataclass(frozen=True)
class DatasetSpec:
    """A labelled dataset of ``../shared/data`` and how to read it."""

    key: str  # key of core.splits.VALIDATION_SIZES
    title: str
    images: str  # folders relative to the data folder
    masks: str
    mpp: float  # µm/px of its images
    scale: str  # "tissue" or "nuclei"
    class_names: dict[int, str] = field(default_factory=dict)


DATASETS = {
    "glas": DatasetSpec("glas", "GlaS", "glas/train/images", "glas/train/masks", 0.8, "tissue",
                        {0: "background", 1: "gland"}),
    "gleason": DatasetSpec("gleason", "Gleason", "gleason/images", "gleason/masks", 0.5, "tissue",
                           {1: "G3", 2: "G4", 3: "G5", 4: "benign", 5: "stroma"}),
    "monuseg": DatasetSpec("monuseg", "MoNuSeg", "monuseg/train/images", "monuseg/train/masks", 0.25,
                           "nuclei", {0: "background", 1: "nucleus"}),
    "miccai2015": DatasetSpec("miccai2015", "MICCAI 2015", "miccai2015/images", "miccai2015/masks", 0.25,
                              "nuclei", {0: "background", 1: "nucleus"}),
}

FEATURES = {
    "diffusion": "diffusion, guide-conditioned",
    "diffusion-uncond": "diffusion, unconditioned",
    "random": "random weights (control)",
    "classic": "classic filter bank",
    "rgb": "rgb",
    # ablations, not in the default run
    "diffusion+classic": "diffusion + classic, fused",
    "diffusion+rgb": "diffusion + rgb, fused",
    "random+classic": "random + classic, fused (control)",
}
#: The rows of the benchmark table (the default ``--features``).
MAIN_FEATURES = ("diffusion", "diffusion-uncond", "random", "classic", "rgb")


# --- pure helpers --------------------------------------------------------------------------------
def label_subsets(names, *, sizes=SUBSET_SIZES, seed: int = SEED) -> dict[str, list[str]]:
    """Nested training subsets for the label-efficiency column.

    The names are put in a seeded random order; the subset of size ``k`` is the first ``k``
    names of that order (all of them when there are fewer), sorted. ``"all"`` holds every name.

    Examples
    --------
    >>> subsets = label_subsets(["a", "b", "c", "d", "e"])
    >>> [len(subsets[k]) for k in ("1", "3", "all")]
    [1, 3, 5]
    >>> set(subsets["1"]) <= set(subsets["3"])
    True
    """
    names = sorted(names)
    if not names:
        raise ValueError("label_subsets: no training images.")
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    subsets = {str(k): sorted(order[: min(k, len(names))]) for k in sizes}
    subsets["all"] = names
    return subsets


def training_steps(model_card: str) -> dict[str, int]:
    """Steps of each stage read from a backbone's ``MODEL_CARD.md`` training table (may be empty).

    Examples
    --------
    >>> training_steps("| stage | objective | steps |\\n|---|---|---|\\n| unet | MSE | 400 |")
    {'unet': 400}
    """
    steps = {}
    for line in model_card.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0] in ("guide", "vae", "unet") and cells[2].isdigit():
            steps[cells[0]] = int(cells[2])
    return steps


def public_text(text: str, *, root: Path = ROOT, home: Path | None = None) -> str:
    """``text`` with this machine's paths shortened: the repository to ``.``, its parent to
    ``..``, the home folder to ``~`` (benchmark output is published).

    Examples
    --------
    >>> public_text("--data /r/shared/data --out /r/repo/x.md", root=Path("/r/repo"), home=Path("/h"))
    '--data ../shared/data --out ./x.md'
    """
    home = Path.home() if home is None else home
    for path, short in ((root, "."), (root.parent, ".."), (home, "~")):
        text = re.sub(re.escape(str(path)) + r"(?=/|\s|$)", short, text)
    return text


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def markdown_table(results: dict, *, datasets: list[str], features: list[str],
                   speed: dict | None = None, sizes: dict | None = None) -> str:
    """The benchmark table: one row per feature extractor, column groups per dataset.

    Parameters
    ----------
    results : dict
        ``results[feature][dataset][subset]`` with ``subset`` in ``"1"``, ``"3"``, ``"all"``:
        ``{"mean_dice", "mean_iou", "per_class": {class id: {"dice", ...}}, "classes_in_mean"}``.
    datasets, features : list of str
        Keys of :data:`DATASETS` and of :data:`FEATURES`, in column and row order.
    speed : dict, optional
        ``speed[feature] = {"empty_cache_s", "cached_s"}``.
    sizes : dict, optional
        ``sizes[feature]`` = text for the weights column.

    Notes
    -----
    A dataset's per-class columns are its foreground classes seen in any row. The best mean
    Dice of each dataset (heads trained on all images) is in bold.
    """
    header, align = ["features"], ["---"]
    class_cols = {}
    for d in datasets:
        spec = DATASETS[d]
        ids = sorted({int(c) for f in features for c in _get(results, f, d, "all", "classes_in_mean") or []})
        class_cols[d] = ids
        if len(ids) > 1:
            header += [f"{spec.title} Dice {spec.class_names.get(c, c)}" for c in ids] + [f"{spec.title} mean Dice"]
        else:
            name = spec.class_names.get(ids[0], ids[0]) if ids else "mean"
            header.append(f"{spec.title} Dice ({name})")
        header += [f"{spec.title} mIoU", f"{spec.title} mean Dice, 1 / 3 / all img"]
    if speed is not None:
        header.append("1024² region s, empty cache / cached")
    if sizes is not None:
        header.append("weights")
    align = ["---"] + ["---:"] * (len(header) - 1)
    best = {d: max((_get(results, f, d, "all", "mean_dice") or -1.0 for f in features), default=-1.0)
            for d in datasets}
    rows = []
    for f in features:
        row = [FEATURES.get(f, f)]
        for d in datasets:
            ids = class_cols[d]
            per_class = _get(results, f, d, "all", "per_class") or {}
            mean = _get(results, f, d, "all", "mean_dice")
            bold = "**" if mean is not None and mean == best[d] else ""
            if len(ids) > 1:
                row += [_fmt((per_class.get(c) or per_class.get(str(c)) or {}).get("dice")) for c in ids]
            row.append(f"{bold}{_fmt(mean)}{bold}")
            row.append(_fmt(_get(results, f, d, "all", "mean_iou")))
            row.append(" / ".join(_fmt(_get(results, f, d, k, "mean_dice")) for k in ("1", "3", "all")))
        if speed is not None:
            s = speed.get(f) or {}
            row.append(f"{_fmt2(s.get('empty_cache_s'))} / {_fmt2(s.get('cached_s'))}")
        if sizes is not None:
            row.append(sizes.get(f, "–"))
        rows.append(row)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _fmt2(x) -> str:
    return "–" if x is None else f"{x:.2f}"


def _get(results, f, d, subset, key):
    return ((results.get(f) or {}).get(d) or {}).get(subset, {}).get(key)


# --- data ----------------------------------------------------------------------------------------
@dataclass
class Item:
    name: str
    slide: object  # core.slide.Slide
    mask: np.ndarray


def load_dataset(data: Path, spec: DatasetSpec, *, max_train: int | None, max_val: int | None):
    """(train items, validation items) of ``spec`` on the project's fixed split."""
    from napari_pathsegdiff.core.images import pair_images_and_masks, read_mask, read_rgb
    from napari_pathsegdiff.core.slide import Slide
    from napari_pathsegdiff.core.splits import VALIDATION_SIZES, holdout_split

    pairs = {img.name: (img, mask) for img, mask in pair_images_and_masks(data / spec.images, data / spec.masks)}
    train, val = holdout_split(pairs, n_val=VALIDATION_SIZES[spec.key])
    if max_train is not None:
        train = label_subsets(train, sizes=(max_train,))[str(max_train)]
    val = val[:max_val] if max_val is not None else val

    def item(name):
        img, mask = pairs[name]
        rgb, m = read_rgb(img), read_mask(mask)
        slide = Slide.from_array(rgb, mpp=spec.mpp, identity=f"{spec.key}/{name}")
        return Item(name, slide, m)

    return [item(n) for n in train], [item(n) for n in val]


# --- extractors ----------------------------------------------------------------------------------
def make_extractors(names, *, backbone, timesteps, blocks):
    """``{feature name: extractor}``; diffusion variants share one loaded backbone.

    A name joining kinds with ``+`` (``diffusion+classic``) fuses their maps
    (:class:`~napari_pathsegdiff.models.fused_features.FusedFeatures`).
    """
    from napari_pathsegdiff.models.features import make_extractor
    from napari_pathsegdiff.models.fused_features import FusedFeatures

    loaded = {}

    def single(name):
        if name in ("diffusion", "diffusion-uncond", "random"):
            from napari_pathsegdiff.models.backbone import build_random_backbone, load_backbone
            from napari_pathsegdiff.models.backbone_configs import get_config
            from napari_pathsegdiff.models.diffusion_features import DiffusionFeatures

            key = "random" if name == "random" else "trained"
            if key not in loaded:
                loaded[key] = (build_random_backbone(get_config("small"), seed=SEED, name="random-small")
                               if key == "random" else load_backbone(backbone))
            return DiffusionFeatures(loaded[key], timesteps=timesteps, blocks=blocks,
                                     conditioned=name != "diffusion-uncond")
        if name in ("classic", "rgb"):
            return make_extractor(name)
        raise ValueError(f"Unknown features {name!r}: use {', '.join(FEATURES)}.")

    out = {}
    for name in names:
        parts = name.split("+")
        out[name] = single(name) if len(parts) == 1 else FusedFeatures([single(p) for p in parts])
    return out


# --- runs ----------------------------------------------------------------------------------------
def run_dataset(spec: DatasetSpec, extractor, train, val, *, cache, head_steps, log) -> dict:
    """Heads on the label-efficiency subsets of ``train``, scored on ``val``."""
    from napari_pathsegdiff.core.metrics import evaluate
    from napari_pathsegdiff.core.progress import drive
    from napari_pathsegdiff.engine.inference.predict import predict_region
    from napari_pathsegdiff.engine.training.train_head import TrainSample, train_head

    by_name = {it.name: it for it in train}
    subsets = label_subsets(by_name)
    classes = sorted({int(c) for it in train for c in np.unique(it.mask)})
    names = [spec.class_names.get(c, f"class {c}") for c in classes]
    heads, out = {}, {}
    for key, members in subsets.items():
        same = next((k for k in heads if out[k]["train_images"] == members), None)
        if same is not None:  # fewer training images than the subset size: the same head
            heads[key], out[key] = heads[same], dict(out[same], same_as=same)
            continue
        t0 = time.perf_counter()
        samples = [TrainSample(by_name[n].slide, by_name[n].mask, name=n, mpp=spec.mpp) for n in members]
        result = drive(train_head(samples, extractor=extractor, class_ids=classes, class_names=names,
                                  seed=SEED, cache=cache, steps=head_steps, threads=1), show=False)
        heads[key] = result.head
        out[key] = {"train_images": members, "train": result.summary(),
                    "train_s": round(time.perf_counter() - t0, 1)}
        log(f"    head on {key} image(s): {out[key]['train_s']} s, {result.steps} steps")
    t0 = time.perf_counter()
    distinct = [k for k in heads if "same_as" not in out[k]]
    triples = {k: [] for k in distinct}
    for it in val:  # the heads one after the other per image: its features stay in the cache
        for key in distinct:
            pred = drive(predict_region(it.slide, head=heads[key], extractor=extractor, cache=cache,
                                        mpp=spec.mpp), show=False)
            triples[key].append((it.name, pred.labels, it.mask))
    for key in heads:
        scores = evaluate(triples[out[key].get("same_as", key)])
        out[key].update({k: scores[k] for k in ("mean_dice", "mean_iou", "pixel_accuracy",
                                                "classes_in_mean", "mean_dice_per_image")})
        out[key]["per_class"] = {int(c): {"dice": v["dice"], "iou": v["iou"]} for c, v in scores["per_class"].items()}
        out[key]["per_image"] = {n: {"mean_dice": s["mean_dice"], "mean_iou": s["mean_iou"]}
                                 for n, s in scores["per_image"].items()}
    log(f"    validation ({len(val)} images x {len(heads)} heads): {time.perf_counter() - t0:.1f} s")
    return out


def speed_1024(extractor, slide) -> dict:
    """Seconds of features + head for a 1024x1024 slide region, empty cache then cached."""
    import torch

    from napari_pathsegdiff.core.feature_cache import FeatureCache
    from napari_pathsegdiff.core.progress import drive
    from napari_pathsegdiff.core.region import Region
    from napari_pathsegdiff.engine.inference.predict import predict_region
    from napari_pathsegdiff.models.heads import new_head

    torch.manual_seed(SEED)
    head = new_head(extractor, [0, 1, 2]).eval()  # speed does not depend on trained weights
    drive(predict_region(slide, Region(0, 0, 0, 64, 64), head=head, extractor=extractor), show=False)
    region, cache = Region(0, 512, 512, 1024, 1024), FeatureCache()
    t = time.perf_counter()
    drive(predict_region(slide, region, head=head, extractor=extractor, cache=cache), show=False)
    cold = time.perf_counter() - t
    t = time.perf_counter()
    drive(predict_region(slide, region, head=head, extractor=extractor, cache=cache), show=False)
    warm = time.perf_counter() - t
    return {"region": "CMU-1 level 0, y 512 x 512, 1024x1024", "empty_cache_s": round(cold, 3),
            "cached_s": round(warm, 3), "cache_mb": round(cache.nbytes / 2**20, 1)}


def head_settings() -> dict:
    """The engine's head-training defaults used for every row (read from ``train_head``), and the seed."""
    import inspect

    from napari_pathsegdiff.engine.training.train_head import train_head

    params = inspect.signature(train_head).parameters
    keys = ("hidden", "depth", "dropout", "lr", "window", "batch_size", "val_fraction", "patience")
    return {**{k: params[k].default for k in keys}, "seed": SEED}


def weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*.safetensors"))


def backbone_info(extractors) -> dict:
    """Identity, training steps (from its model card) and weights size of the loaded backbone."""
    ex = next((e for k, e in extractors.items() if k.split("+")[0] in ("diffusion", "diffusion-uncond")), None)
    if ex is None:
        return {}
    ex = next((p for p in getattr(ex, "parts", [ex]) if hasattr(p, "backbone")), ex)
    from napari_pathsegdiff.models.backbone import default_backbone_folder

    bb = ex.backbone
    folder = default_backbone_folder() if bb.source == "default" else Path(bb.source)
    info = {"identity": bb.identity, "source": bb.source if bb.source == "default" else folder.name,
            "timesteps": ex.timesteps, "blocks": ex.blocks, "mpp": bb.mpp, "tile_size": bb.tile_size}
    if folder.is_dir():
        info["weights_bytes"] = weights_bytes(folder)
        card = folder / "MODEL_CARD.md"
        if card.is_file():
            info["training_steps"] = training_steps(card.read_text(encoding="utf-8"))
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="default", help="default, a backbone folder or a cached hub id")
    p.add_argument("--data", type=Path, default=DATA, help="the shared data folder (default ../shared/data)")
    p.add_argument("--out", type=Path, help="write the Markdown table here")
    p.add_argument("--json", type=Path, help="write all figures here (default: --out with .json)")
    p.add_argument("--quick", action="store_true", help="reduced smoke-test scale (the output says so)")
    p.add_argument("--datasets", nargs="+", choices=list(DATASETS))
    p.add_argument("--features", nargs="+", choices=list(FEATURES), default=list(MAIN_FEATURES),
                   help="default: the table's rows; the fused ones are ablations (slow heads)")
    p.add_argument("--timesteps", type=int, nargs="+", help="diffusion timesteps (default: the backbone's)")
    p.add_argument("--blocks", type=int, nargs="+", help="UNet up blocks (default: the backbone's)")
    p.add_argument("--max-train", type=int, help="use at most this many training images per dataset")
    p.add_argument("--max-val", type=int, help="use at most this many validation images per dataset")
    p.add_argument("--head-steps", type=int, help="head optimisation steps (default: the engine's)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: many times faster than 2 on a loaded 2-core machine)")
    p.add_argument("--cache-gb", type=float, default=1.5, help="feature cache budget per dataset and extractor")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--speed-only", action="store_true", help="only the 1024x1024 speed figures (no datasets)")
    args = p.parse_args(argv)
    if args.quick:
        args.datasets = args.datasets or ["glas"]
        args.max_train = args.max_train or 3
        args.max_val = args.max_val or 1
        args.head_steps = args.head_steps or 60
    datasets = [] if args.speed_only else (args.datasets or list(DATASETS))
    if args.speed_only and args.skip_speed:
        p.error("--speed-only and --skip-speed exclude each other")
    if not args.data.is_dir():
        p.error(f"data folder {args.data} does not exist: give --data DIR")

    import torch

    torch.set_num_threads(args.threads)
    from napari_pathsegdiff.core.feature_cache import FeatureCache
    from napari_pathsegdiff.core.slide import open_slide

    start, load0 = time.perf_counter(), os.getloadavg()

    def log(msg):
        print(f"[{time.perf_counter() - start:7.0f} s] {msg}", file=sys.stderr, flush=True)

    extractors = make_extractors(args.features, backbone=args.backbone, timesteps=args.timesteps,
                                 blocks=args.blocks)
    info = backbone_info(extractors)
    full = not (args.quick or args.max_train or args.max_val or args.head_steps or len(datasets) < len(DATASETS))
    report = {"date": str(date.today()),
              "command": public_text(" ".join(["python scripts/bench_backbone.py",
                                                *(argv if argv is not None else sys.argv[1:])])),
              "scale": {"full": full, "quick": args.quick, "max_train": args.max_train,
                        "max_val": args.max_val, "head_steps": args.head_steps or "engine default",
                        "datasets": datasets},
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "torch_threads": args.threads, "load_average_start": [round(x, 1) for x in load0]},
              "backbone": info,
              "head": head_settings(),
              "extractors": {k: ex.identity for k, ex in extractors.items()},
              "datasets": {}, "results": {k: {} for k in extractors}, "speed": {}}
    for d in datasets:
        spec = DATASETS[d]
        train, val = load_dataset(args.data, spec, max_train=args.max_train, max_val=args.max_val)
        report["datasets"][d] = {"title": spec.title, "mpp": spec.mpp, "scale": spec.scale,
                                 "train": [it.name for it in train], "val": [it.name for it in val],
                                 "subsets": label_subsets([it.name for it in train])}
        for name, ex in extractors.items():
            log(f"{spec.title} ({len(train)} train / {len(val)} val) with {name}")
            cache = FeatureCache(max_bytes=int(args.cache_gb * 2**30))
            t0 = time.perf_counter()
            res = run_dataset(spec, ex, train, val, cache=cache, head_steps=args.head_steps, log=log)
            res["seconds"] = round(time.perf_counter() - t0, 1)
            report["results"][name][d] = res
            log("  mean Dice 1 / 3 / all: " + " / ".join(_fmt(res[k]["mean_dice"]) for k in ("1", "3", "all")))
            del cache
    if not args.skip_speed:
        slide = open_slide(SLIDE)
        for name, ex in extractors.items():
            report["speed"][name] = speed_1024(ex, slide)
            log(f"speed {name}: {report['speed'][name]}")
    sizes = {"classic": "none", "rgb": "none", "random": "(same architecture, not shipped)"}
    if "weights_bytes" in info:
        mb = f"{info['weights_bytes'] / 1e6:.1f} MB"
        sizes.update({k: mb for k in extractors if k.split("+")[0] in ("diffusion", "diffusion-uncond")})
    report["machine"]["load_average_end"] = [round(x, 1) for x in os.getloadavg()]
    report["wall_s"] = round(time.perf_counter() - start)
    text = render(report, sizes=sizes)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    json_path = args.json or (args.out.with_suffix(".json") if args.out else None)
    if json_path:
        json_path.write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
    return 0


def render(report: dict, *, sizes: dict) -> str:
    """Header lines (scale, backbone, machine) and the table."""
    s, bb, m = report["scale"], report["backbone"], report["machine"]
    if s["full"]:
        scale = "full: every training and validation image of each split, engine-default head training"
    else:
        scale = ("REDUCED (quick/smoke-test) scale, not the benchmark: datasets " + ", ".join(s["datasets"])
                 + f"; at most {s['max_train'] or 'all'} training and {s['max_val'] or 'all'} validation "
                 f"images per dataset; head steps {s['head_steps']}")
    lines = [f"Backbone benchmark, {report['date']}. Command: `{report['command']}`", "",
             f"- Scale: {scale}."]
    if bb:
        steps = ", ".join(f"{k} {v}" for k, v in (bb.get("training_steps") or {}).items())
        lines.append(f"- Backbone `{bb['identity']}` ({bb['source']}; training steps: {steps or 'unknown'}); "
                     f"features at t = {bb['timesteps']}, up blocks {bb['blocks']}, {bb['mpp']} µm/px.")
    splits = "; ".join(f"{d['title']} {len(d['train'])}/{len(d['val'])}" for d in report["datasets"].values())
    lines += [f"- Splits (train/validation, `core.splits`, seed 0): {splits}. Label efficiency: heads "
              "trained on 1, 3 and all training images (nested, seed 0), scored on the same validation images.",
              "- Dice/mIoU: pixels pooled over the validation images, background left out of the means. "
              f"Head: the engine's FCN ({', '.join(f'{k} {v}' for k, v in report['head'].items())}), "
              "the same for every row.",
              f"- Machine: {m['cores']} cores ({m['cpu']}), torch threads {m['torch_threads']}, load average "
              f"{m['load_average_start'][0]} at start and {m.get('load_average_end', ['?'])[0]} at end "
              f"(shared machine); wall time {report.get('wall_s', '?')} s.", ""]
    datasets = list(report["datasets"])
    lines.append(markdown_table(report["results"], datasets=datasets, features=list(report["results"]),
                                speed=report["speed"] or None, sizes=sizes))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
