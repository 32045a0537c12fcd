"""Segmenting a view cold, warm, and after reopening the slide (features from the session folder).

Usage::

    python scripts/bench_feature_cache.py [--region Y X H W] [--threads 2]

On the bundled sample slide with the shipped demo head and the default backbone, through
:class:`~napari_pathsegdiff.engine.session.annotation.AnnotationSession` (what the widget's
"Segment view" runs), in a new session folder:

1. *cold, no disk tier*: a session with ``feature_disk_bytes=0`` (features in memory only);
2. *cold*: a new session (memory and ``features/`` empty): features computed and written;
3. *warm*: the same view again in the same session (features from memory);
4. *after reopening*: the session closed, the slide reopened, a new session (empty memory):
   features read from ``features/``.

Printed: seconds (wall and CPU) of each ``segment`` call, tiles computed and found, and the
size of ``features/``. The machine's load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from datetime import date
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--region", nargs=4, type=int, default=[800, 600, 1024, 1280], metavar=("Y", "X", "H", "W"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    import torch

    from napari_pathsegdiff._sample_data import sample_slide_path
    from napari_pathsegdiff.core.progress import drive
    from napari_pathsegdiff.core.region import Region
    from napari_pathsegdiff.core.slide import open_slide
    from napari_pathsegdiff.engine.session.annotation import AnnotationSession
    from napari_pathsegdiff.engine.session.session_folder import FEATURES
    from napari_pathsegdiff.engine.shipped_models import demo_head_folder
    from napari_pathsegdiff.models.heads import load_head_and_extractor

    torch.set_num_threads(args.threads)
    region = Region(0, *args.region)
    head, extractor = load_head_and_extractor(demo_head_folder(), device="cpu")
    print(f"{date.today()} {platform.machine()} {os.cpu_count()} CPUs, torch threads {args.threads}, "
          f"load average {os.getloadavg()[0]:.1f}; view {region.width}x{region.height} px of the sample, "
          "demo head, default backbone")
    with tempfile.TemporaryDirectory() as tmp:
        with open_slide(sample_slide_path()) as slide:  # load the model before timing
            with AnnotationSession.open(slide, folder=Path(tmp) / "warmup", extractor=extractor, head=head,
                                        feature_disk_bytes=0) as s:
                drive(s.segment(Region(0, 0, 0, 64, 64)), show=False)
        rows = []

        def timed(label, session):
            t0, c0 = time.perf_counter(), time.process_time()
            result = drive(session.segment(region), show=False)
            rows.append((label, time.perf_counter() - t0, time.process_time() - c0,
                         result.cache.get("misses", 0), result.cache.get("hits", 0)))

        folder = Path(tmp) / "session"
        with open_slide(sample_slide_path()) as slide:
            with AnnotationSession.open(slide, folder=Path(tmp) / "memory-only", extractor=extractor, head=head,
                                        feature_disk_bytes=0) as s:
                timed("cold, no disk tier", s)
            with AnnotationSession.open(slide, folder=folder, extractor=extractor, head=head) as s:
                timed("cold (features computed and written)", s)
                timed("warm (same session, memory)", s)
        with open_slide(sample_slide_path()) as slide:
            with AnnotationSession.open(slide, folder=folder) as s:
                timed("after reopening (features from disk)", s)
        files = list((folder / FEATURES).iterdir())
        size = sum(f.stat().st_size for f in files)
    print("| segment call | s | CPU s | tiles computed | tiles from cache |")
    print("|---|---:|---:|---:|---:|")
    for label, seconds, cpu, computed, found in rows:
        print(f"| {label} | {seconds:.1f} | {cpu:.1f} | {computed} | {found} |")
    print(f"features/: {len(files)} files, {size / 1e6:.0f} MB ({size / max(1, len(files)) / 1e6:.2f} MB a tile); "
          f"load average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
