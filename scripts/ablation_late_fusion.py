"""Ablation: late fusion of a diffusion-features head and a classic-features head.

The early fusion of the default-backbone benchmark (one head over both feature sets,
``--features diffusion+classic``) scores below the classic filter bank alone. This ablation
trains the two heads apart, exactly as ``bench_backbone.py`` does (same splits, head settings,
seed, all training images), and scores on the validation images:

- each head alone;
- the mean of their class probabilities (weight 0.5 each, fixed in advance: no weight is
  tuned on the validation images).

    python scripts/ablation_late_fusion.py [--datasets glas gleason monuseg miccai2015] [--out FILE]

Prints a Markdown table (Dice per class and mean, mIoU; pixels pooled over the validation
images, background left out of the means, as in the benchmark).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_backbone as bb  # noqa: E402 - the benchmark's splits, datasets and head settings


def train_one(spec, extractor, train, *, cache, head_steps):
    from napari_pathsegdiff.core.progress import drive
    from napari_pathsegdiff.engine.training.train_head import TrainSample, train_head

    classes = sorted({int(c) for it in train for c in np.unique(it.mask)})
    names = [spec.class_names.get(c, f"class {c}") for c in classes]
    samples = [TrainSample(it.slide, it.mask, name=it.name, mpp=spec.mpp) for it in train]
    return drive(train_head(samples, extractor=extractor, class_ids=classes, class_names=names,
                            seed=bb.SEED, cache=cache, steps=head_steps, threads=1), show=False).head


def probabilities(head, extractor, item, *, cache, mpp):
    from napari_pathsegdiff.core.progress import drive
    from napari_pathsegdiff.engine.inference.predict import predict_region

    pred = drive(predict_region(item.slide, head=head, extractor=extractor, cache=cache, mpp=mpp,
                                return_probabilities=True), show=False)
    return np.asarray(pred.probabilities, np.float32), list(pred.class_ids)


def run(spec, extractors, train, val, *, cache, head_steps, log):
    from napari_pathsegdiff.core.metrics import evaluate

    heads = {}
    for name, ex in extractors.items():
        t0 = time.perf_counter()
        heads[name] = train_one(spec, ex, train, cache=cache, head_steps=head_steps)
        log(f"  {spec.title}: {name} head, {time.perf_counter() - t0:.0f} s")
    triples = {k: [] for k in (*extractors, "late")}
    for it in val:
        probs = {}
        for name, ex in extractors.items():
            probs[name], ids = probabilities(heads[name], ex, it, cache=cache, mpp=spec.mpp)
            triples[name].append((it.name, np.asarray(ids, np.uint8)[probs[name].argmax(0)], it.mask))
        mean = sum(probs.values()) / len(probs)
        triples["late"].append((it.name, np.asarray(ids, np.uint8)[mean.argmax(0)], it.mask))
    return {k: evaluate(v) for k, v in triples.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=bb.DATA)
    p.add_argument("--datasets", nargs="+", default=list(bb.DATASETS), choices=list(bb.DATASETS))
    p.add_argument("--backbone", default="default")
    p.add_argument("--head-steps", type=int)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    import torch

    from napari_pathsegdiff.core.feature_cache import FeatureCache

    torch.set_num_threads(1)
    extractors = bb.make_extractors(["diffusion", "classic"], backbone=args.backbone, timesteps=[50, 150],
                                    blocks=[2, 3])
    lines = []

    def log(text):
        print(text, flush=True)

    t_start = time.perf_counter()
    results = {}
    for key in args.datasets:
        spec = bb.DATASETS[key]
        train, val = bb.load_dataset(args.data, spec, max_train=None, max_val=None)
        results[key] = run(spec, extractors, train, val, cache=FeatureCache(max_bytes=4 << 30),
                           head_steps=args.head_steps, log=log)
    lines.append(f"Late-fusion ablation, {datetime.date.today()}. Command: `python scripts/ablation_late_fusion.py "
                 f"{' '.join(argv if argv is not None else sys.argv[1:])}`")
    lines.append(f"Machine: {os.cpu_count()} cores ({platform.machine()}), torch threads 1; wall time "
                 f"{time.perf_counter() - t_start:.0f} s. Backbone {extractors['diffusion'].identity}. Heads on all "
                 "training images of the benchmark's splits, the benchmark's head settings and seed.")
    lines.append("")
    lines.append("| dataset | class | diffusion | classic | mean of both heads' probabilities |")
    lines.append("|---|---|---:|---:|---:|")
    for key, res in results.items():
        spec = bb.DATASETS[key]
        classes = sorted(int(c) for c in res["classic"]["per_class"] if int(c) != 0)
        for c in classes:
            row = [{int(q): v for q, v in res[k]["per_class"].items()}.get(c, {}).get("dice") for k in ("diffusion", "classic", "late")]
            lines.append(f"| {spec.title} | {spec.class_names.get(c, c)} Dice | " + " | ".join(bb._fmt(v) for v in row) + " |")
        for metric, label in (("mean_dice", "mean Dice"), ("mean_iou", "mIoU")):
            row = [res[k][metric] for k in ("diffusion", "classic", "late")]
            best = max(row)
            cells = [f"**{bb._fmt(v)}**" if v == best else bb._fmt(v) for v in row]
            lines.append(f"| {spec.title} | {label} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(bb.public_text(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
