"""Time of CNN features (EfficientNet-Lite0 stages) per 1024 x 1024 region on this CPU.

A 1024 x 1024 region is cut into the extractor's tiles (core ``tile_size``, plus its halo on
every side, as the engine reads them) and every tile goes through :meth:`CNNFeatures.extract`
in one batch; the time is the median of ``--repeats`` runs after one warm-up. Tile content
does not change the time of a convolutional network, so the tiles are random pixels.

    python scripts/bench_cnn_features.py [--threads 1 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time

import numpy as np
import torch

from napari_pathsegdiff.models.cnn_features import CNNFeatures

REGION = 1024
#: (label, constructor keywords) of the configurations timed.
CONFIGS = [
    ("stages 2,4,8,16, tile 512 (default)", {"stages": (2, 4, 8, 16), "tile_size": 512}),
    ("stages 2,4,8,16, tile 1024", {"stages": (2, 4, 8, 16), "tile_size": 1024}),
    ("stages 2,4,8, tile 512", {"stages": (2, 4, 8), "tile_size": 512}),
]


def region_tiles(extractor: CNNFeatures, rng: np.random.Generator) -> np.ndarray:
    """The tiles (with halo) that cover one ``REGION``-square region."""
    per_side = -(-REGION // extractor.tile_size)
    side = extractor.tile_size + 2 * extractor.halo
    return rng.integers(0, 256, (per_side * per_side, side, side, 3), dtype=np.uint8)


def seconds_per_region(extractor: CNNFeatures, repeats: int) -> tuple[float, int, int]:
    """Median seconds to extract the features of one region, tiles per region, tile side."""
    tiles = region_tiles(extractor, np.random.default_rng(0))
    extractor.extract(tiles[:1])  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        extractor.extract(tiles)
        times.append(time.perf_counter() - start)
    return statistics.median(times), len(tiles), tiles.shape[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per configuration")
    args = parser.parse_args(argv)

    print(f"{datetime.date.today()}  {platform.machine()} CPU, {torch.get_num_threads()} torch threads "
          f"available, torch {torch.__version__}")
    print("| features | tiles per region (side with halo) | torch threads | s per 1024² region |")
    print("|---|---:|---:|---:|")
    for label, kwargs in CONFIGS:
        extractor = CNNFeatures(**kwargs, batch_size=16)
        for threads in args.threads:
            torch.set_num_threads(threads)
            seconds, n_tiles, side = seconds_per_region(extractor, args.repeats)
            print(f"| {label} | {n_tiles} ({side} px) | {threads} | {seconds:.2f} |", flush=True)


if __name__ == "__main__":
    main()
