"""Benchmark of projects and QuPath annotations in: import time, and Train on my edits over slides.

Usage::

    python scripts/bench_projects.py [--data DIR] [--polygons 1000] [--side 100000]
                                     [--features classic] [--skip-import | --skip-train]

1. **Import.** A QuPath-style GeoJSON of ``--polygons`` areas (3 classes, 64-vertex blobs of
   100-1000 level-0 px across, one in five with a hole) spread over a ``--side``² slide is read
   and painted into a label store at the analysis level of a 0.25 µm/px scan (downsample 2,
   50k² for 100k²), as the widget's *Import annotations…* does
   (:func:`~napari_pathsegdiff.engine.session.annotation_import.import_annotations`); then the
   same into memory, as ``pathsegdiff train --slides --annotations`` does. No slide pixel is
   read, so no 100k² file is needed: only the store is made.
2. **Train on my edits over three slides.** The three real slides of the shared data (copied to a
   temporary folder, sessions made beside them) get 12 brush strokes each (6 on tissue, 6 on
   glass, from a tissue mask of the coarsest level) and form a project; the project's head is
   trained as the widget does with a project open
   (:func:`~napari_pathsegdiff.engine.session.project.train_project`): first a new head (``auto``,
   the widget's 30 s budget), then a fine-tuning after one more stroke (features cached).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SLIDES = ("slides/CMU-1-Small-Region.svs", "slides/TCGA-CR-7395-pyramid.tif", "slides/TCGA-CR-7395-01A-01-TS1.svs")
CLASSES = ("tumour", "stroma", "necrosis")
COLORS = ([230, 25, 75], [60, 180, 75], [145, 30, 180])


def qupath_geojson(n: int, side: int, seed: int = 0) -> dict:
    """``n`` classified blobs over a ``side``² slide, as QuPath exports them."""
    rng = np.random.default_rng(seed)
    features = []
    angles = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    for i in range(n):
        cx, cy = rng.uniform(1000, side - 1000, 2)
        r = rng.uniform(50, 500) * (1 + 0.2 * np.sin(3 * angles + rng.uniform(0, 6)))
        ring = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], 1)
        rings = [np.vstack([ring, ring[:1]]).tolist()]
        if i % 5 == 0:
            hole = np.stack([cx + 0.3 * r * np.cos(-angles), cy + 0.3 * r * np.sin(-angles)], 1)
            rings.append(np.vstack([hole, hole[:1]]).tolist())
        k = int(rng.integers(0, 3))
        features.append({"type": "Feature", "id": str(i),
                         "geometry": {"type": "Polygon", "coordinates": rings},
                         "properties": {"objectType": "annotation",
                                        "classification": {"name": CLASSES[k], "color": COLORS[k]}}})
    return {"type": "FeatureCollection", "features": features}


def bench_import(n: int, side: int, tmp: Path) -> None:
    from napari_pathsegdiff.core.geojson_read import read_annotations
    from napari_pathsegdiff.core.label_canvas import LabelCanvas
    from napari_pathsegdiff.core.label_store import LabelStore
    from napari_pathsegdiff.core.progress import drive
    from napari_pathsegdiff.engine.session.annotation_import import (
        ImportReport, class_ids_for, import_annotations, paint_annotations)

    path = tmp / "qupath.geojson"
    path.write_text(json.dumps(qupath_geojson(n, side)))
    print(f"\n## Import of {n} polygons on a {side}x{side} slide (file {path.stat().st_size / 1e6:.1f} MB)")
    store = LabelStore.create(tmp / "labels.zarr", shape=(side // 2, side // 2), mpp=0.5, downsample=(2.0, 2.0),
                              slide_identity="bench", classes=[])
    t0 = time.perf_counter()
    read = read_annotations(path)
    t_read = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = drive(import_annotations(path, store=store, slide_size=(side, side)), show=False)
    t_store = time.perf_counter() - t0
    px = sum(report.painted.values())
    print(f"read and check {len(read.annotations)} areas: {t_read:.2f} s")
    print(f"import into the label store ({store.shape[0]}x{store.shape[1]}, 512-px chunks): {t_store:.2f} s "
          f"({px / 1e6:.1f} Mpx painted, {report.kept} px kept, {len(store.edited_windows())} chunks)")
    ids, _ = class_ids_for(read.class_colors(), [])
    canvas = LabelCanvas(store.shape)
    t0 = time.perf_counter()
    drive(paint_annotations(read, ids, canvas, downsample=(2.0, 2.0), report=ImportReport(path)), show=False)
    print(f"paint in memory (train --slides --annotations): {time.perf_counter() - t0:.2f} s")


def bench_train(data: Path, features: str, tmp: Path) -> None:
    from scipy import ndimage as ndi

    from napari_pathsegdiff.core.label_store import ClassInfo
    from napari_pathsegdiff.core.progress import drive
    from napari_pathsegdiff.core.slide import open_slide
    from napari_pathsegdiff.core.tissue import tissue_mask
    from napari_pathsegdiff.engine.session.annotation import AnnotationSession
    from napari_pathsegdiff.engine.session.project import new_project, train_project
    from napari_pathsegdiff.models.features import make_extractor

    folder = tmp / "project"
    folder.mkdir()
    for rel in SLIDES:
        shutil.copy(data / rel, folder / Path(rel).name)
    classes = [ClassInfo(1, "glass", "#a0a0a0"), ClassInfo(2, "tissue", "#e6194b")]
    project = new_project(folder, classes=classes)
    extractor = make_extractor(features)
    rng = np.random.default_rng(0)
    print(f"\n## Train on my edits over {len(project.slides)} slides ({features} features)")
    for path in project.slides:
        slide = open_slide(path)
        with AnnotationSession.open(slide, extractor=extractor, classes=classes, root=tmp / "cache") as s:
            if slide.mpp is None:
                s.set_slide_mpp(0.5)  # the TCGA SVS records none: given, as in the widget's Model section
            coarse = np.asarray(slide.levels[-1])
            tissue = tissue_mask(coarse)
            scale = np.array(s.store.shape) / np.array(tissue.shape)
            for value, where in ((2, ndi.binary_erosion(tissue, iterations=3)), (1, ndi.binary_erosion(~tissue, iterations=3))):
                ys, xs = np.nonzero(where)
                for k in rng.choice(len(ys), 6, replace=False):
                    y, x = int(ys[k] * scale[0]), int(xs[k] * scale[1])
                    h, w = min(8, s.store.shape[0] - y), min(120, s.store.shape[1] - x)
                    s.store.write_edits(y, x, np.full((h, w), value, np.uint8))
            print(f"{path.name}: level {s.level} {s.store.shape[1]}x{s.store.shape[0]}, "
                  f"{s.store.painted_pixel_count()} px painted in {len(s.store.edited_windows())} chunks")
    from napari_pathsegdiff.core.feature_cache import FeatureCache

    cache = FeatureCache()
    t0 = time.perf_counter()
    result, project = drive(train_project(project, extractor=extractor, root=tmp / "cache", cache=cache), show=False)
    t_new = time.perf_counter() - t0
    print(f"new head ({result.note or result.result.head.head_kind}): {t_new:.1f} s; per slide used/painted px: "
          + ", ".join(f"{c.name} {c.used}/{sum(c.painted.values())}" for c in result.counts))
    t0 = time.perf_counter()
    result2, _ = drive(train_project(project, extractor=result.extractor, head=result.result.head,
                                     root=tmp / "cache", cache=cache), show=False)
    print(f"fine-tune of the {result2.result.head.head_kind} head, features cached: {time.perf_counter() - t0:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--polygons", type=int, default=1000)
    parser.add_argument("--side", type=int, default=100_000)
    parser.add_argument("--features", default="classic")
    parser.add_argument("--skip-import", action="store_true")
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    print(f"# bench_projects: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch threads {torch.get_num_threads()}, {time.strftime('%Y-%m-%d')}")
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_import:
            bench_import(args.polygons, args.side, Path(tmp))
        if not args.skip_train:
            os.environ["XDG_CACHE_HOME"] = str(Path(tmp) / "xdg")
            bench_train(args.data, args.features, Path(tmp))


if __name__ == "__main__":
    main()
