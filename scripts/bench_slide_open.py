"""Benchmark: open a 100,000 x 100,000 px pyramidal slide lazily, and the set-up's footprint.

What it does:

1. writes a synthetic pyramidal tiled TIFF (JPEG tiles of 256 x 256 px, SubIFD levels halving
   down to under 1,024 px, 0.25 µm/px) into a temporary folder. The tiles are real H&E: cut
   from the bundled sample slide, flipped and rotated, laid out as an elliptical tissue
   section on a white background; they are JPEG-encoded once and the bytes written tile by
   tile, so writing needs little memory. Coarser levels reuse the same tiles (their content
   does not matter for timing). The file is removed afterwards;
2. in a fresh Python process per repeat, measures the time to open it with ``open_slide``, to
   read the whole lowest level, and to read one 1,024 x 1,024 region of level 0, and the
   process's peak resident memory (RSS);
3. reports the size of the project's ``.venv``, and with ``--install`` the time of
   ``make setup`` on a fresh copy of the project (a new virtual environment; a few minutes).

Usage::

    python scripts/bench_slide_open.py [--size 100000] [--repeat 3] [--install]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TILE = 256
MPP = 0.25
JPEG = dict(compression="jpeg", compressionargs={"level": 85}, photometric="rgb")


# --- the synthetic slide ------------------------------------------------------------------


def tile_pool(count: int = 32, seed: int = 0) -> tuple[list[bytes], bytes, bytes | None]:
    """JPEG bytes of ``count`` tissue tiles and of one background tile, and the JPEG tables."""
    import io

    import tifffile

    from napari_pathsegdiff._sample_data import sample_slide_path
    from napari_pathsegdiff.core.slide import open_slide

    with open_slide(sample_slide_path()) as slide:
        image = np.asarray(slide.levels[0])
    rng = np.random.default_rng(seed)
    tiles = []
    while len(tiles) < count:
        y = int(rng.integers(0, image.shape[0] - TILE))
        x = int(rng.integers(0, image.shape[1] - TILE))
        tile = image[y : y + TILE, x : x + TILE]
        if tile.mean() < 200:  # tissue, not glass
            k = len(tiles)
            tiles.append(np.ascontiguousarray(np.rot90(tile[:, ::-1] if k % 2 else tile, k // 2 % 4)))
    background = np.full((TILE, TILE, 3), 242, np.uint8)
    strip = np.concatenate([*tiles, background], axis=0)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, strip, tile=(TILE, TILE), **JPEG)
    buffer.seek(0)
    with tifffile.TiffFile(buffer) as tif:
        page = tif.pages.first
        raw = []
        for offset, length in zip(page.dataoffsets, page.databytecounts):
            tif.filehandle.seek(offset)
            raw.append(tif.filehandle.read(length))
        tables = page.jpegtables
    return raw[:-1], raw[-1], tables


def level_tiles(height: int, width: int, pool: list[bytes], background: bytes):
    """Encoded tiles of one level in row-major order: an elliptical section of tissue."""
    rows, cols = math.ceil(height / TILE), math.ceil(width / TILE)
    for row in range(rows):
        for col in range(cols):
            dy = (row + 0.5) / rows - 0.5
            dx = (col + 0.5) / cols - 0.5
            inside = (dy / 0.45) ** 2 + (dx / 0.35) ** 2 <= 1.0
            yield pool[(row * 7 + col * 13) % len(pool)] if inside else background


def write_synthetic_slide(path: Path, size: int) -> list[tuple[int, int]]:
    """Write the pyramid; returns the level shapes."""
    import tifffile

    pool, background, tables = tile_pool()
    shapes = [(size, size)]
    while max(shapes[-1]) > 1024:
        shapes.append((math.ceil(shapes[-1][0] / 2), math.ceil(shapes[-1][1] / 2)))
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for index, (h, w) in enumerate(shapes):
            per_cm = 1e4 / (MPP * 2**index)
            extra = dict(subifds=len(shapes) - 1) if index == 0 else dict(subfiletype=1)
            tif.write(
                level_tiles(h, w, pool, background),
                shape=(h, w, 3),
                dtype=np.uint8,
                tile=(TILE, TILE),
                jpegtables=tables,
                resolution=(per_cm, per_cm),
                resolutionunit="CENTIMETER",
                **JPEG,
                **extra,
            )
    return shapes


# --- measuring in a fresh process ---------------------------------------------------------


def measure(path: str) -> dict:
    """Open, read the lowest level and one 1024 x 1024 region of level 0; time and memory."""
    import resource

    import psutil

    t0 = time.perf_counter()
    from napari_pathsegdiff.core.region import Region
    from napari_pathsegdiff.core.slide import open_slide

    t_import = time.perf_counter() - t0
    rss_imported = psutil.Process().memory_info().rss

    t0 = time.perf_counter()
    slide = open_slide(path)
    t_open = time.perf_counter() - t0

    t0 = time.perf_counter()
    lowest = np.asarray(slide.levels[-1])
    t_lowest = time.perf_counter() - t0

    h, w = slide.shape
    t0 = time.perf_counter()
    region = slide.read_region(Region(0, h // 2 - 512, w // 2 - 512, 1024, 1024))
    t_region = time.perf_counter() - t0

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    return {
        "levels": [list(level.shape) for level in slide.levels],
        "mpp": slide.mpp,
        "lowest_shape": list(lowest.shape),
        "region_shape": list(region.shape),
        "import_s": t_import,
        "open_s": t_open,
        "lowest_s": t_lowest,
        "region_s": t_region,
        "total_s": t_open + t_lowest + t_region,
        "rss_after_import_mb": rss_imported / 2**20,
        "peak_rss_mb": peak / 2**20,
    }


def measure_in_subprocess(path: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--measure", str(path)], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- the environment ----------------------------------------------------------------------


def du_mb(path: Path) -> float:
    out = subprocess.run(["du", "-sk", str(path)], check=True, capture_output=True, text=True)
    return int(out.stdout.split()[0]) / 1024


def time_fresh_setup() -> tuple[float, float]:
    """Seconds and MB of ``make setup`` in a fresh copy of the project (new .venv)."""
    with tempfile.TemporaryDirectory(prefix="pathsegdiff-setup-") as tmp:
        copy = Path(tmp) / "project"
        shutil.copytree(
            ROOT, copy, ignore=shutil.ignore_patterns(".venv", ".git", "*.egg-info", "__pycache__", ".pytest_cache")
        )
        env = dict(os.environ, NAPARI_CONFIG="")  # leave the user's napari settings alone
        t0 = time.perf_counter()
        subprocess.run(["make", "setup"], cwd=copy, env=env, check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - t0
        return seconds, du_mb(copy / ".venv")


# --- main ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=100_000, help="level-0 side in pixels")
    parser.add_argument("--repeat", type=int, default=3, help="fresh processes to measure in")
    parser.add_argument("--install", action="store_true", help="also time `make setup` on a fresh copy")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.measure:
        print(json.dumps(measure(args.measure)))
        return 0

    with tempfile.TemporaryDirectory(prefix="pathsegdiff-bench-") as tmp:
        path = Path(tmp) / "synthetic.tif"
        t0 = time.perf_counter()
        shapes = write_synthetic_slide(path, args.size)
        written_s = time.perf_counter() - t0
        print(f"wrote {args.size:,} x {args.size:,} px, {len(shapes)} levels, "
              f"{path.stat().st_size / 2**30:.2f} GiB in {written_s:.0f} s")
        runs = [measure_in_subprocess(path) for _ in range(args.repeat)]

    first = runs[0]
    print(f"levels: {[tuple(s[:2]) for s in first['levels']]}, mpp {first['mpp']}")
    print("run  open_s  lowest_s  region_s  total_s  peak_rss_MB  (rss after imports MB, import s)")
    for i, r in enumerate(runs, 1):
        print(f"{i:>3}  {r['open_s']:6.3f}  {r['lowest_s']:8.3f}  {r['region_s']:8.3f}  {r['total_s']:7.3f}"
              f"  {r['peak_rss_mb']:11.0f}  ({r['rss_after_import_mb']:.0f}, {r['import_s']:.2f})")
    print(f"median total {np.median([r['total_s'] for r in runs]):.3f} s, "
          f"max peak RSS {max(r['peak_rss_mb'] for r in runs):.0f} MB (goal: < 2 s, < 500 MB)")

    venv = ROOT / ".venv"
    if venv.is_dir():
        print(f".venv size: {du_mb(venv) / 1024:.2f} GiB")
    if args.install:
        seconds, size_mb = time_fresh_setup()
        print(f"fresh `make setup`: {seconds:.0f} s, .venv {size_mb / 1024:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
