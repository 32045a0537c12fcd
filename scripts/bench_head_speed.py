"""Speed of each (features x head) candidate: fit from cached features, predict a 1024² region.

Usage::

    python scripts/bench_head_speed.py [--candidates NAME ...] [--threads 2]

Labels: the shipped demo head's prediction of a 1024 x 1024 region of the bundled sample slide
(background / stroma / nuclei-rich tissue), so every head learns the same three classes from
dense labels. For each candidate of ``scripts/bench_heads.py``:

- *fit*: the head fitted on those labels from cached features (features gathered once,
  excluded); a forest draws its 50,000 pixels from them;
- *1024² empty cache*: features + head for another 1024 x 1024 region, nothing cached;
- *1024² cached*: the same region again, features from the cache (the head alone).

The machine's load average is printed with the figures: other jobs inflate them.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import date

import numpy as np

from bench_heads import CANDIDATES

DEFAULT = ("ilastik", "classic/fcn", "classic/forest", "diffusion/fcn", "diffusion+classic/forest")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", nargs="+", default=list(DEFAULT), choices=list(CANDIDATES))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    import torch

    from napari_pathsegdiff._sample_data import sample_slide_path
    from napari_pathsegdiff.core.feature_cache import FeatureCache
    from napari_pathsegdiff.core.progress import drive
    from napari_pathsegdiff.core.region import Region
    from napari_pathsegdiff.core.slide import open_slide
    from napari_pathsegdiff.engine.inference.predict import predict_region
    from napari_pathsegdiff.engine.shipped_models import demo_head_folder
    from napari_pathsegdiff.engine.training.train_head import TrainSample, fit_head, gather_labelled_tiles
    from napari_pathsegdiff.models.features import make_extractor
    from napari_pathsegdiff.models.heads import load_head_and_extractor

    torch.set_num_threads(args.threads)
    slide = open_slide(sample_slide_path())
    train_region, test_region = Region(0, 0, 0, 1024, 1024), Region(0, 1024, 1024, 1024, 1024)
    demo, demo_ex = load_head_and_extractor(demo_head_folder(), device="cpu")
    labels = drive(predict_region(slide, train_region, head=demo, extractor=demo_ex), show=False).labels
    print(f"labels: {dict(zip(*[a.tolist() for a in np.unique(labels, return_counts=True)]))}")
    rows = []
    for name in args.candidates:
        features, kind, settings, _ = CANDIDATES[name]
        extractor = make_extractor(features)
        cache = FeatureCache()
        labelled = drive(gather_labelled_tiles([TrainSample(slide, labels, train_region)], extractor=extractor,
                                               cache=cache), show=False)
        t0 = time.perf_counter()
        head = drive(fit_head(labelled, kind=kind, threads=args.threads, **settings), show=False).head
        fit_s = time.perf_counter() - t0
        cold = FeatureCache()
        t0 = time.perf_counter()
        drive(predict_region(slide, test_region, head=head, extractor=extractor, cache=cold), show=False)
        empty_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        drive(predict_region(slide, test_region, head=head, extractor=extractor, cache=cold), show=False)
        cached_s = time.perf_counter() - t0
        rows.append((name, fit_s, empty_s, cached_s))
        print(f"{name:32s} fit {fit_s:6.2f} s   1024² empty cache {empty_s:6.2f} s   cached {cached_s:5.2f} s  "
              f"(load {os.getloadavg()[0]:.1f})", flush=True)
    print(f"\nMeasured {date.today().isoformat()} on {platform.machine()}, {os.cpu_count()} cores, "
          f"{args.threads} threads, `python scripts/bench_head_speed.py`\n")
    print("| candidate | fit from cached features, s | 1024² empty cache, s | 1024² cached, s |")
    print("|---|---:|---:|---:|")
    for name, fit_s, empty_s, cached_s in rows:
        print(f"| {name} | {fit_s:.2f} | {empty_s:.2f} | {cached_s:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
