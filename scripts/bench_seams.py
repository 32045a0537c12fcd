"""Seams on the tile grid: label changes across tile edges against elsewhere, before and after blending.

Usage::

    python scripts/bench_seams.py [--region Y X H W] [--slide PATH ...] [--threads 2]

For each slide (default: the bundled sample; the shared TCGA pyramid is added when
``--slide`` names it), the shipped demo head predicts ``--region`` twice: with tile cores
pasted side by side (``blend=0``, the former behaviour) and with the default blend of
neighbouring tiles across half their halo. Printed per run: the rate of label changes
between neighbouring rows and columns that straddle a 256-px tile edge, the rate elsewhere,
their ratio (1 = no seams), the same ratio for the uncertainty map (mean absolute change),
and the seconds (wall, and CPU seconds of the process) with an empty feature cache and with
every feature cached (the head and the blending alone). The machine's load average is printed
with the figures: other jobs inflate the wall times more than the CPU times.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import date

import numpy as np


def _uncertainty_ratio(unc: np.ndarray, tile: int, origin: tuple[int, int]) -> tuple[float, float]:
    ratios = []
    for axis, start in ((0, origin[0]), (1, origin[1])):
        steps = np.abs(np.diff(unc.astype(np.float32), axis=axis)).mean(axis=1 - axis)
        on_grid = (start + np.arange(1, unc.shape[axis])) % tile == 0
        ratios.append(float(steps[on_grid].mean() / steps[~on_grid].mean()))
    return ratios[0], ratios[1]


def measure(slide_path: str, region, *, blend):
    from napari_pathsegdiff.core.feature_cache import FeatureCache
    from napari_pathsegdiff.core.metrics import seam_ratios
    from napari_pathsegdiff.core.progress import drive
    from napari_pathsegdiff.core.region import Region
    from napari_pathsegdiff.core.slide import open_slide
    from napari_pathsegdiff.engine.inference.predict import predict_region, uncertainty
    from napari_pathsegdiff.engine.shipped_models import demo_head_folder
    from napari_pathsegdiff.models.heads import load_head_and_extractor

    head, extractor = load_head_and_extractor(demo_head_folder(), device="cpu")
    slide = open_slide(slide_path)
    mpp = 0.5 if slide.mpp is None else None
    warm = Region(region.level, region.y, region.x, 64, 64)  # load the model before timing
    drive(predict_region(slide, warm, head=head, extractor=extractor, mpp=mpp, blend=0), show=False)
    cache = FeatureCache()
    times, tiles = [], 0
    for _ in range(2):  # empty cache, then every feature cached
        t0, c0 = time.perf_counter(), time.process_time()
        pred = drive(predict_region(slide, region, head=head, extractor=extractor, cache=cache,
                                    return_probabilities=True, blend=blend, mpp=mpp), show=False)
        times.append((time.perf_counter() - t0, time.process_time() - c0))
        tiles = tiles or pred.cache["misses"]
    origin = (region.y, region.x)
    seams = seam_ratios(pred.labels, tile=extractor.tile_size, origin=origin)
    unc_rows, unc_cols = _uncertainty_ratio(uncertainty(pred.probabilities), extractor.tile_size, origin)
    slide.close()
    return seams, (unc_rows, unc_cols), times, tiles


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--region", nargs=4, type=int, default=[0, 0, 2048, 2048], metavar=("Y", "X", "H", "W"))
    parser.add_argument("--slide", nargs="*", default=[], help="more slides (level 0)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    import torch

    from napari_pathsegdiff._sample_data import sample_slide_path
    from napari_pathsegdiff.core.region import Region

    torch.set_num_threads(args.threads)
    region = Region(0, *args.region)
    print(f"{date.today()} {platform.machine()} {os.cpu_count()} CPUs, torch threads {args.threads}, "
          f"load average {os.getloadavg()[0]:.1f}; region {tuple(args.region)} of level 0")
    print("| slide | tiles | label changes on grid / elsewhere, rows | columns | uncertainty rows | columns "
          "| s (CPU s), empty cache | s (CPU s), cached |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for path in [str(sample_slide_path()), *args.slide]:
        for name, blend in (("side by side (before)", 0), ("blended (after)", None)):
            seams, unc, times, tiles = measure(path, region, blend=blend)
            print(f"| {os.path.basename(path)} | {name}, {tiles} tiles | "
                  f"{seams['rows_ratio']:.2f}x ({seams['rows_on_grid']:.4f}/{seams['rows_elsewhere']:.4f}) | "
                  f"{seams['cols_ratio']:.2f}x ({seams['cols_on_grid']:.4f}/{seams['cols_elsewhere']:.4f}) | "
                  f"{unc[0]:.2f}x | {unc[1]:.2f}x | {times[0][0]:.1f} ({times[0][1]:.1f}) | "
                  f"{times[1][0]:.1f} ({times[1][1]:.1f}) |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
