"""Speed and agreement of the torch filter bank against scikit-image on a real H&E region.

A 1024 x 1024 region of the bundled sample slide is cut as the classic features tile it: 4
tiles of 512 px with a halo of ``ceil(4 * sigma_max)`` = 64 px (640 x 640 each). For each
method the script prints the seconds per region (tile by tile, float16 output as
``ClassicFeatures`` stores it, best of ``--repeats`` after a warm-up; wall-clock and this
process's CPU seconds, the fairer figure on a shared machine) and how many float16 values
equal scikit-image's; then the agreement in float32 before the cast, with scikit-image's own
float32 rounding beside it (against this module computing in float64). Methods:

- ``skimage``: :func:`skimage.feature.multiscale_basic_features`, 1 and 2 worker threads;
- ``torch``: :func:`~napari_pathsegdiff.models.filter_bank.filter_bank`, 1 and 2 torch threads.

``--coarse`` also measures the idea of computing the large scales on a downsampled image
(area-averaged by 2 or 4, smoothed with the remaining Gaussian, upsampled bilinearly), with
the derivatives taken either at full resolution on the upsampled image or at the coarse level
and upsampled: per scale and filter, the largest and the root-mean-square difference to the
exact features divided by the feature's standard deviation, on the tiles' 512 x 512 cores.

    python scripts/bench_filter_bank.py [--threads 1 2] [--repeats 3] [--coarse]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time

import numpy as np
import tifffile
import torch
import torch.nn.functional as F
from skimage.feature import multiscale_basic_features

from napari_pathsegdiff._sample_data import sample_slide_path
from napari_pathsegdiff.models.filter_bank import (
    filter_bank, filter_sigmas, gaussian, hessian_eigenvalues, sobel_magnitude,
)

SETTINGS = dict(sigma_min=1.0, sigma_max=16.0, num_sigma=5, intensity=True, edges=True, texture=True)
TILE = 512
HALO = math.ceil(4 * SETTINGS["sigma_max"])
FILTERS = ("intensity", "edges", "eigenvalue 1", "eigenvalue 2")


def region_tiles(y: int = 600, x: int = 900) -> np.ndarray:
    """The 4 uint8 halo tiles (4, 640, 640, 3) of a 1024 x 1024 region of the sample slide."""
    with tifffile.TiffFile(sample_slide_path()) as tif:
        level0 = tif.pages[0].asarray()
    side = TILE + 2 * HALO
    return np.stack([level0[y - HALO + i * TILE:][:side, x - HALO + j * TILE:][:, :side]
                     for i in (0, 1) for j in (0, 1)])


def as_float(tiles: np.ndarray) -> np.ndarray:
    """uint8 (B, H, W, 3) tiles as float32 (B, 3, H, W) in [0, 1]."""
    return np.moveaxis(tiles.astype(np.float32) / 255, -1, 1)


def skimage_bank(tiles: np.ndarray, workers: int) -> np.ndarray:
    """What ``ClassicFeatures.extract`` does today: one tile at a time, stored as float16."""
    out = np.empty((len(tiles), 60, *tiles.shape[1:3]), dtype=np.float16)
    for i, tile in enumerate(tiles):
        feats = multiscale_basic_features(tile.astype(np.float32) / 255.0, channel_axis=-1, workers=workers,
                                          **SETTINGS)
        out[i] = np.moveaxis(feats, -1, 0)
    return out


def torch_bank(tiles: np.ndarray) -> np.ndarray:
    """The same with the torch filter bank: uint8 tiles in, float16 maps out, one tile at a time."""
    out = []
    for tile in torch.from_numpy(tiles):
        image = tile.permute(2, 0, 1)[None].float().div_(255.0)
        out.append(filter_bank(image, **SETTINGS).to(torch.float16)[0].numpy())
    return np.stack(out)


def best_time(run, repeats: int) -> tuple[float, float, np.ndarray]:
    """Best wall-clock and process CPU seconds of ``repeats`` runs after a warm-up, and the output."""
    out = run()
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        out = run()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus), out


def speed_table(tiles: np.ndarray, threads: list[int], repeats: int) -> None:
    print("| method | threads | s per 1024² region, wall | CPU s (all threads) | float16 maps equal to skimage's |")
    print("|---|---:|---:|---:|---:|")
    reference = None
    for n in threads:
        wall, cpu, reference = best_time(lambda: skimage_bank(tiles, n), repeats)
        print(f"| skimage multiscale_basic_features | {n} | {wall:.3f} | {cpu:.3f} | 100% |", flush=True)
    for n in threads:
        torch.set_num_threads(n)
        wall, cpu, out = best_time(lambda: torch_bank(tiles), repeats)
        equal, largest = float16_agreement(out, reference)
        print(f"| torch filter_bank | {n} | {wall:.3f} | {cpu:.3f} | {100 * equal:.2f}% (largest difference "
              f"{largest:.1e}) |", flush=True)
    torch.set_num_threads(1)
    print_float32_agreement(as_float(tiles))


def float16_agreement(out: np.ndarray, reference: np.ndarray | None) -> tuple[float, float]:
    """Share of float16 values equal to the reference's, and the largest absolute difference."""
    if reference is None:
        return float("nan"), float("nan")
    diff = np.abs(out.astype(np.float32) - reference.astype(np.float32))
    return float(np.mean(diff == 0)), float(diff.max())


def print_float32_agreement(floats: np.ndarray) -> None:
    """Largest difference to skimage before the float16 cast, absolute and per channel spread.

    skimage's own rounding is measured against this module computing in float64.
    """
    exact = torch.from_numpy(np.stack([
        np.moveaxis(multiscale_basic_features(np.moveaxis(t, 0, -1), channel_axis=-1, **SETTINGS), -1, 0)
        for t in floats]))
    spread = exact.std((0, 2, 3))
    for name, dtype in (("torch filter_bank, float32", torch.float32), ("float64 (skimage's own rounding)", torch.float64)):
        got = torch.cat([filter_bank(torch.from_numpy(t[None]).to(dtype), **SETTINGS).float() for t in floats])
        diff = (got - exact).abs()
        print(f"\n{name} vs skimage before the float16 cast: max abs diff {diff.max():.2e}, "
              f"max over channels of max |diff| / channel std {(diff.amax((0, 2, 3)) / spread).max():.2e}", end="")
    print()


def coarse_features(planes: torch.Tensor, sigma: float, factor: int, derivatives_at: str) -> list[torch.Tensor]:
    """Intensity, edges and eigenvalues of scale ``sigma`` computed on a level ``factor`` times coarser."""
    n, h, w = planes.shape
    ph, pw = -h % factor, -w % factor
    padded = F.pad(planes[:, None], (0, pw, 0, ph), mode="replicate")
    coarse = F.avg_pool2d(padded, factor)[:, 0]
    # Area averaging already blurs by a box of variance (f^2 - 1) / 12 fine pixels.
    sigma_coarse = math.sqrt(sigma**2 - (factor**2 - 1) / 12) / factor
    smoothed = gaussian(coarse, sigma_coarse)

    def up(m: torch.Tensor) -> torch.Tensor:
        return F.interpolate(m[:, None], scale_factor=factor, mode="bilinear", align_corners=False)[:, 0, :h, :w]

    if derivatives_at == "fine":
        fine = up(smoothed)
        return [fine, sobel_magnitude(fine), *hessian_eigenvalues(fine)]
    big, small = hessian_eigenvalues(smoothed)
    return [up(smoothed), up(sobel_magnitude(smoothed)) / factor, up(big) / factor**2, up(small) / factor**2]


def coarse_table(tiles: np.ndarray, repeats: int) -> None:
    torch.set_num_threads(1)
    planes = torch.from_numpy(as_float(tiles)).reshape(-1, *tiles.shape[1:3])
    core = np.s_[:, HALO:-HALO, HALO:-HALO]
    print("\n| scale | level | derivatives | filter | max abs diff / std | rms diff / std | CPU ms (4 tiles) exact → coarse |")
    print("|---:|---:|---|---|---:|---:|---|")
    for sigma in filter_sigmas(SETTINGS["sigma_min"], SETTINGS["sigma_max"], SETTINGS["num_sigma"])[-2:]:
        _, exact_s, exact = best_time(lambda: exact_features(planes, float(sigma)), repeats)
        for factor in (2, 4):
            if sigma / factor < 2:
                continue
            for where in ("fine", "coarse"):
                _, coarse_s, approx = best_time(lambda: coarse_features(planes, float(sigma), factor, where), repeats)
                for name, e, a in zip(FILTERS, exact, approx):
                    e, a = e[core], a[core]
                    std = e.std()
                    print(f"| {sigma:g} | 1/{factor} | {where} | {name} | {(a - e).abs().max() / std:.3f} | "
                          f"{(a - e).pow(2).mean().sqrt() / std:.4f} | {1000 * exact_s:.0f} → {1000 * coarse_s:.0f} |",
                          flush=True)


def exact_features(planes: torch.Tensor, sigma: float) -> list[torch.Tensor]:
    smoothed = gaussian(planes, sigma)
    return [smoothed, sobel_magnitude(smoothed), *hessian_eigenvalues(smoothed)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after a warm-up (the best is shown)")
    parser.add_argument("--coarse", action="store_true", help="also measure large scales on a downsampled level")
    args = parser.parse_args()
    tiles = region_tiles()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}, torch {torch.__version__}; sample slide region, {len(tiles)} tiles "
          f"of {tiles.shape[1]}², settings {SETTINGS}\n")
    speed_table(tiles, args.threads, args.repeats)
    if args.coarse:
        coarse_table(tiles, args.repeats)


if __name__ == "__main__":
    main()
