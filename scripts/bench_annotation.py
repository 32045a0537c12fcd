"""Benchmark of the annotate-and-retrain loop, with no GUI, through the engine calls the widget
makes (:class:`napari_pathsegdiff.engine.session.annotation.AnnotationSession`).

Usage::

    python scripts/bench_annotation.py [--data DIR] [--features classic diffusion random]
                                       [--backbone default|FOLDER] [--datasets glas gleason monuseg]
                                       [--rounds 10] [--steps N] [--skip-timing | --timing-only]

1. **Simulated annotator.** On the held-out validation images of GlaS, Gleason and MoNuSeg
   (the project's fixed-seed split, ``core/splits.py``), each image gets its own session. It
   starts from ``--strokes`` brush strokes per class (thick lines drawn inside the
   ground-truth class) and a new head is trained on them. Then, in each of ``--rounds`` rounds,
   the whole image is segmented, the largest connected area predicted wrongly is found (from
   the ground truth), one stroke of its true class is painted inside it, and the head is
   fine-tuned on every stroke so far. The Dice after each round is printed (GlaS: gland,
   MoNuSeg: nucleus, Gleason: mean over the classes present), with the first round whose
   mean Dice over the images reaches 0.8.
2. **Timing.** On the sample slide: "Segment view" of a 1280x1024 region (engine work and the
   write to the label store) with an empty and with a warm feature cache, and "Train on my
   edits" with 10 brush strokes (a new head, then a fine-tuning after one more stroke).

Features: ``classic`` (the filter bank), ``diffusion`` (``--backbone``, default the shipped
backbone) and ``random`` (a randomly initialised backbone of the default architecture: a
labelled control, not a result). Without the default backbone, diffusion is skipped with a
note.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
DATASETS = {  # folder, µm/px of the images, whether 0 is a class (shifted to 1 in the store)
    "glas": ("glas/train", 0.8, True),
    "gleason": ("gleason", 0.5, False),
    "monuseg": ("monuseg/train", 0.25, True),
}
STROKE_RADIUS = 3
STROKE_LENGTH = 48
SEED = 0


# --- strokes -------------------------------------------------------------------------------
def stroke_inside(mask: np.ndarray, rng: np.random.Generator, *, radius: int = STROKE_RADIUS,
                  length: int = STROKE_LENGTH, center=None, angle=None) -> np.ndarray:
    """A thick line (a brush stroke) inside ``mask``; empty when ``mask`` is empty."""
    from scipy import ndimage as ndi
    from skimage.draw import line

    out = np.zeros(mask.shape, bool)
    if not mask.any():
        return out
    if center is None:
        inner = ndi.binary_erosion(mask, iterations=radius)
        ys, xs = np.nonzero(inner if inner.any() else mask)
        i = rng.integers(len(ys))
        center = (ys[i], xs[i])
    if angle is None:
        angle = rng.uniform(0, np.pi)
    dy, dx = np.sin(angle) * length / 2, np.cos(angle) * length / 2
    h, w = mask.shape
    y0, x0 = np.clip([center[0] - dy, center[1] - dx], 0, [h - 1, w - 1]).astype(int)
    y1, x1 = np.clip([center[0] + dy, center[1] + dx], 0, [h - 1, w - 1]).astype(int)
    rr, cc = line(y0, x0, y1, x1)
    out[rr, cc] = True
    out = ndi.binary_dilation(out, iterations=radius)
    out &= mask
    if not out.any():  # a thin area: at least the centre
        out[center[0], center[1]] = True
    return out


def correction_stroke(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, int] | None:
    """A stroke of the true class inside the largest wrongly predicted connected area."""
    from scipy import ndimage as ndi
    from skimage.measure import label, regionprops

    best = None
    for k in np.unique(truth):
        wrong = (truth == k) & (pred != k)
        if not wrong.any():
            continue
        lab = label(wrong, connectivity=1)
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        i = int(sizes.argmax())
        if best is None or sizes[i] > best[0]:
            best = (int(sizes[i]), lab == i, int(k))
    if best is None:
        return None
    _, area, k = best
    dist = ndi.distance_transform_edt(area)
    center = np.unravel_index(int(dist.argmax()), dist.shape)
    props = regionprops(area.astype(np.uint8))[0]
    angle = np.pi / 2 - props.orientation  # along the area's major axis (row, col) -> (y, x) angle
    return stroke_inside(area, None, center=center, angle=angle), k


# --- the simulated annotator ------------------------------------------------------------------
def simulate(image, truth, *, mpp, shift, extractor, rounds, strokes, steps, seed, workdir):
    """Dice after the initial strokes and after each correction round, for one image."""
    from napari_pathsegdiff.core.label_store import ClassInfo
    from napari_pathsegdiff.core.metrics import confusion_matrix, scores
    from napari_pathsegdiff.core.progress import drive
    from napari_pathsegdiff.core.region import Region
    from napari_pathsegdiff.core.slide import Slide
    from napari_pathsegdiff.engine.session.annotation import AnnotationSession

    rng = np.random.default_rng(seed)
    truth_ids = [int(k) for k in np.unique(truth) if shift or k != 0]
    to_store = np.arange(256) + (1 if shift else 0)
    classes = [ClassInfo(int(to_store[k]), f"class {k}", "#%06x" % (0x202020 + 0x301010 * i))
               for i, k in enumerate(truth_ids)]
    slide = Slide.from_array(image, mpp=mpp)
    session = AnnotationSession.open(slide, extractor=extractor, classes=classes, folder=workdir)
    store = session.store
    for k in truth_ids:
        for _ in range(strokes):
            s = stroke_inside(truth == k, rng)
            store.write_edits(0, 0, np.where(s, to_store[k], 0).astype(np.uint8), where=s)
    whole = Region(0, 0, 0, *truth.shape)
    dices, seconds = [], []
    for r in range(rounds + 1):
        t0 = time.perf_counter()
        drive(session.train_on_edits(steps=steps, seed=seed), show=False)
        seconds.append(time.perf_counter() - t0)
        pred_store = drive(session.segment(whole, uncertainty=False), show=False).labels
        pred = pred_store.astype(np.int64) - (1 if shift else 0)
        pred = np.clip(pred, 0, 255)
        dices.append(scores(confusion_matrix(pred, truth))["mean_dice"])
        if r == rounds:
            break
        fix = correction_stroke(pred, truth)
        if fix is None:
            dices.extend([dices[-1]] * (rounds - r))
            break
        s, k = fix
        store.write_edits(0, 0, np.where(s, to_store[k], 0).astype(np.uint8), where=s)
    return dices, seconds


def run_annotator(args, kinds) -> None:
    from napari_pathsegdiff.core.images import pair_images_and_masks, read_mask, read_rgb
    from napari_pathsegdiff.core.splits import VALIDATION_SIZES, holdout_split

    for kind, extractor in kinds:
        print(f"\n=== simulated annotator: {kind} features ({extractor.identity})")
        for name in args.datasets:
            folder, mpp, shift = DATASETS[name]
            pairs = pair_images_and_masks(args.data / folder / "images", args.data / folder / "masks")
            _, val = holdout_split([p.name for p, _ in pairs], n_val=VALIDATION_SIZES[name])
            per_image, times = [], []
            for img_path, mask_path in pairs:
                if img_path.name not in val:
                    continue
                image, truth = read_rgb(img_path), read_mask(mask_path)
                with tempfile.TemporaryDirectory() as tmp:
                    dices, secs = simulate(image, truth, mpp=mpp, shift=shift, extractor=extractor,
                                           rounds=args.rounds, strokes=args.strokes, steps=args.steps,
                                           seed=SEED, workdir=Path(tmp) / "session")
                per_image.append(dices)
                times.extend(secs)
                print(f"  {name} {img_path.name}: " + " ".join(f"{d:.3f}" for d in dices), flush=True)
            mean = np.mean(np.array(per_image), axis=0)
            reach = next((r for r, d in enumerate(mean) if d >= 0.8), None)
            print(f"  {name} mean over {len(per_image)} images, rounds 0..{args.rounds}: "
                  + " ".join(f"{d:.3f}" for d in mean))
            print(f"  {name} first round with mean Dice >= 0.8: "
                  f"{reach if reach is not None else f'not within {args.rounds} rounds'}; "
                  f"median train time {np.median(times):.1f} s")


# --- timing -------------------------------------------------------------------------------
def run_timing(args, kinds) -> None:
    from napari_pathsegdiff._sample_data import sample_slide_path
    from napari_pathsegdiff.core.feature_cache import FeatureCache
    from napari_pathsegdiff.core.progress import drive
    from napari_pathsegdiff.core.region import Region
    from napari_pathsegdiff.core.slide import open_slide
    from napari_pathsegdiff.engine.session.annotation import AnnotationSession
    from napari_pathsegdiff.engine.session.class_presets import preset

    sys.path.insert(0, str(ROOT / "scripts"))
    from make_demo_head import demo_labels

    view = Region(0, 800, 400, 1024, 1280)  # a 1280 x 1024 view of the sample slide (level 0)
    for kind, extractor in kinds:
        print(f"\n=== timing: {kind} features ({extractor.identity})")
        with open_slide(sample_slide_path()) as slide, tempfile.TemporaryDirectory() as tmp:
            session = AnnotationSession.open(slide, extractor=extractor, cache=FeatureCache(),
                                             classes=preset("stroma / nuclei-rich"), folder=Path(tmp) / "s")
            labels, _ = demo_labels(slide.read_region(view), mpp=slide.level_mpp(0))
            rng = np.random.default_rng(SEED)
            painted = 0
            for k, n in ((1, 3), (2, 4), (3, 3)):  # 10 strokes
                for _ in range(n):
                    s = stroke_inside(labels == k, rng)
                    session.store.write_edits(view.y, view.x, np.where(s, k, 0).astype(np.uint8), where=s)
                    painted += int(s.sum())
            with Clock() as c:
                outcome = drive(session.train_on_edits(steps=args.steps), show=False)
            w = outcome.result.windows
            print(f"  Train on my edits, 10 strokes ({painted} px), new head: {c} "
                  f"({outcome.result.steps} steps; windows: {w['train']} training, {w['val']} validation)")
            session.cache.clear()
            with Clock() as empty:
                drive(session.segment(view), show=False)
            with Clock() as warm:
                result = drive(session.segment(view), show=False)
            print(f"  Segment view 1280x1024: empty cache {empty}; warm cache {warm} (cache {result.cache})")
            s = stroke_inside(labels == 3, rng)
            session.store.write_edits(view.y, view.x, np.where(s, 3, 0).astype(np.uint8), where=s)
            with Clock() as c:
                outcome = drive(session.train_on_edits(steps=args.steps), show=False)
            print(f"  Train on my edits after one more stroke (fine-tune, features cached): {c} "
                  f"({outcome.result.steps} steps)")


class Clock:
    """Wall time and CPU time of this process (the CPU time shows how busy a shared machine was)."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu

    def __str__(self) -> str:
        return f"{self.wall:.2f} s wall ({self.cpu:.2f} s CPU)"


# --- main ---------------------------------------------------------------------------------
def extractors(args):
    from napari_pathsegdiff.engine.shipped_models import default_backbone_installed
    from napari_pathsegdiff.models.features import make_extractor

    out = []
    for kind in args.features:
        if kind == "classic":
            out.append(("classic", make_extractor("classic")))
        elif kind == "diffusion":
            if args.backbone == "default" and not default_backbone_installed():
                print("note: the default backbone is not installed: diffusion features skipped "
                      "(give --backbone FOLDER)")
                continue
            out.append(("diffusion", make_extractor("diffusion", backbone=args.backbone, device=args.device)))
        elif kind == "random":
            from napari_pathsegdiff.models.backbone import build_random_backbone
            from napari_pathsegdiff.models.backbone_configs import get_config
            from napari_pathsegdiff.models.diffusion_features import DiffusionFeatures

            backbone = build_random_backbone(get_config(args.random_config), seed=0,
                                             name=f"random-{args.random_config}")
            out.append((f"RANDOM-WEIGHTS CONTROL ({args.random_config})", DiffusionFeatures(backbone, device=args.device)))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DATA, help="the shared data folder")
    p.add_argument("--features", nargs="+", default=["classic", "diffusion", "random"],
                   choices=("classic", "diffusion", "random"))
    p.add_argument("--backbone", default="default")
    p.add_argument("--random-config", default="small", help="architecture of the random control")
    p.add_argument("--device", default="auto")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--strokes", type=int, default=2, help="initial strokes per class")
    p.add_argument("--steps", type=int, default=None, help="training steps per round (default: automatic)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--skip-timing", action="store_true")
    group.add_argument("--timing-only", action="store_true")
    args = p.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{load:.1f}, {torch.get_num_threads()} torch threads, "
          f"CUDA: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
    kinds = extractors(args)
    if not args.skip_timing:
        run_timing(args, kinds)
    if not args.timing_only:
        if not args.data.is_dir():
            print(f"error: data folder {args.data} not found (give --data)", file=sys.stderr)
            return 2
        run_annotator(args, kinds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
