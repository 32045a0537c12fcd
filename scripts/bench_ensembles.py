"""Which heads to average: every pair and triple of four single heads, on the validation splits.

Usage::

    python scripts/bench_ensembles.py [--datasets glas gleason monuseg miccai2015]

For each data set of ``core.splits`` the four heads below are trained on all training images,
each on its own features (gathered once per feature kind), and predict the validation images
with the test-time augmentation ``pathsegdiff predict`` gives them by default (8 orientations
for a forest, none for an FCN). Then the class probabilities of every single head, pair and
triple are averaged and scored: mean Dice of the foreground classes, pixels pooled over the
validation images, as ``scripts/bench_heads.py``. The ``ensemble`` head
(``--features classic+cnn --head ensemble``) is the pair ``classic/fcn + cnn/fcn`` made one
head; ``bench_heads.py`` measures it as the product runs it (both parts on the same tiles).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
from datetime import date
from pathlib import Path

import numpy as np

from bench_heads import BB

#: (features, head, test-time augmentation of ``predict --tta auto``)
HEADS = (("classic", "fcn", 1), ("classic", "forest", 8), ("cnn", "forest", 8), ("cnn", "fcn", 1))


def validation_probabilities(spec, train, val) -> tuple[dict[str, list[np.ndarray]], object]:
    """Per head name, the class probabilities of every validation image; and a head to decode."""
    from napari_pathsegdiff.core.feature_cache import FeatureCache
    from napari_pathsegdiff.core.progress import drive
    from napari_pathsegdiff.engine.inference.predict import predict_region
    from napari_pathsegdiff.engine.training.train_head import TrainSample, fit_head, gather_labelled_tiles
    from napari_pathsegdiff.models.features import make_extractor

    classes = sorted({int(c) for it in train for c in np.unique(it.mask)})
    names = [spec.class_names.get(c, f"class {c}") for c in classes]
    samples = [TrainSample(it.slide, it.mask, name=it.name, mpp=spec.mpp) for it in train]
    probs, decoder = {}, None
    for features in dict.fromkeys(f for f, _, _ in HEADS):
        extractor, cache = make_extractor(features), FeatureCache(4 * 2**30)
        labelled = drive(gather_labelled_tiles(samples, extractor=extractor, class_ids=classes, class_names=names,
                                               cache=cache), show=False)
        for _, kind, tta in (h for h in HEADS if h[0] == features):
            head = drive(fit_head(labelled, kind=kind, seed=0, threads=2 if kind == "forest" else 1), show=False).head
            probs[f"{features}/{kind}"] = [
                drive(predict_region(it.slide, head=head, extractor=extractor, cache=cache, mpp=spec.mpp,
                                     return_probabilities=True, tta=tta), show=False).probabilities.astype(np.float32)
                for it in val
            ]
            decoder = head
        del labelled
    return probs, decoder


def combination_scores(probs, decoder, val) -> dict[str, float]:
    """Mean Dice of every single head, pair and triple (probabilities averaged)."""
    from napari_pathsegdiff.core.metrics import evaluate

    scores = {}
    for r in (1, 2, 3):
        for combo in itertools.combinations(probs, r):
            triples = [(it.name, decoder.decode_indices((sum(probs[k][i] for k in combo) / r).argmax(0)), it.mask)
                       for i, it in enumerate(val)]
            scores[" + ".join(combo)] = evaluate(triples)["mean_dice"]
    return scores


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=BB.DATA)
    parser.add_argument("--datasets", nargs="+", default=["glas", "gleason", "monuseg", "miccai2015"],
                        choices=list(BB.DATASETS))
    parser.add_argument("--json", type=Path, default=None, help="also write the scores here")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    table: dict[str, dict[str, float]] = {}
    for d in args.datasets:
        spec = BB.DATASETS[d]
        train, val = BB.load_dataset(args.data, spec, max_train=None, max_val=None)
        probs, decoder = validation_probabilities(spec, train, val)
        table[spec.title] = combination_scores(probs, decoder, val)
        print(spec.title, json.dumps({k: round(v, 3) for k, v in table[spec.title].items()}), flush=True)
    rows = list(next(iter(table.values())))
    lines = [f"Measured {date.today().isoformat()} on {platform.machine()} with {os.cpu_count()} CPU cores, "
             "`python scripts/bench_ensembles.py`.", "",
             "| heads averaged | " + " | ".join(table) + " |", "|---" + "|---:" * len(table) + "|"]
    for r in rows:
        lines.append(f"| {r} | " + " | ".join(f"{table[t][r]:.3f}" for t in table) + " |")
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
