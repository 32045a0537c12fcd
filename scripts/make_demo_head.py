"""Make the demo head that ships with the package: background / stroma / nuclei-rich tissue of
the CC0 sample slide, from labels built automatically, trained on a given backbone.

Usage::

    python scripts/make_demo_head.py [--backbone default|FOLDER] [--features diffusion|classic|rgb]
                                     [--out FOLDER] [--steps N] [--seed S] [--device auto]
                                     [--region Y X H W] [--labels-png FILE]

The labels (class ids 1 background, 2 stroma, 3 nuclei-rich tissue; 0 unlabelled):

1. tissue: :func:`napari_pathsegdiff.core.tissue.tissue_mask` of the slide at 1/4 size,
   scaled back up (nearest); everything else is background;
2. hematoxylin density: the hematoxylin channel of scikit-image ``rgb2hed``, smoothed with a
   Gaussian of ``HEMATOXYLIN_SIGMA_UM`` µm; tissue whose density is above the Otsu threshold of
   the density over the tissue is nuclei-rich, the rest of the tissue stroma;
3. clean-up: nuclei-rich areas are opened with a disk of ``OPENING_UM`` µm, and areas and holes
   smaller than ``MIN_AREA_UM2`` µm² are removed / filled;
4. borders: pixels within ``BORDER_UM`` µm of another class are left unlabelled, so the head
   learns from confident pixels only.

The head is trained with :func:`napari_pathsegdiff.engine.training.train_head.train_head` on these
sparse labels (10 % of the windows held out for validation, early stopping), and written to
``--out`` with ``CARD.md`` (this recipe, its numbers and the training record) and
``training.json``. The shipped head (the default ``--out``) must be trained on the default
backbone: the script refuses other features for it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "src" / "napari_pathsegdiff" / "weights" / "head-demo"
HEMATOXYLIN_SIGMA_UM = 6.0
OPENING_UM = 2.0
MIN_AREA_UM2 = 400.0
BORDER_UM = 3.0
TISSUE_SHRINK = 4
CLASSES = [(1, "background", "#a0a0a0"), (2, "stroma", "#3cb44b"), (3, "nuclei-rich tissue", "#911eb4")]


def demo_labels(rgb: np.ndarray, *, mpp: float) -> tuple[np.ndarray, dict]:
    """Sparse labels (0 unlabelled, 1 background, 2 stroma, 3 nuclei-rich) of an H&E image.

    Parameters
    ----------
    rgb : ndarray, shape (H, W, 3), uint8
        The image.
    mpp : float
        Its µm per pixel (the recipe's sizes are in µm).

    Returns
    -------
    labels : ndarray of uint8, shape (H, W)
    numbers : dict
        The thresholds and sizes used, in pixels, for the card.
    """
    from scipy import ndimage as ndi
    from skimage import color, filters, morphology

    from napari_pathsegdiff.core.tissue import tissue_mask

    h, w = rgb.shape[:2]
    small = tissue_mask(rgb[::TISSUE_SHRINK, ::TISSUE_SHRINK])
    tissue = np.repeat(np.repeat(small, TISSUE_SHRINK, 0), TISSUE_SHRINK, 1)[:h, :w]
    hema = color.rgb2hed(rgb)[..., 0].astype(np.float32)
    density = ndi.gaussian_filter(hema, HEMATOXYLIN_SIGMA_UM / mpp)
    threshold = float(filters.threshold_otsu(density[tissue])) if tissue.any() else float("inf")
    rich = tissue & (density > threshold)
    rich = morphology.opening(rich, morphology.disk(max(1, round(OPENING_UM / mpp)))).astype(bool)
    min_px = max(1, int(MIN_AREA_UM2 / mpp**2))
    rich = morphology.remove_small_holes(morphology.remove_small_objects(rich, max_size=min_px), max_size=min_px)
    rich &= tissue
    dense = np.where(tissue, np.where(rich, 3, 2), 1).astype(np.uint8)
    border = max(1, round(BORDER_UM / mpp))
    labels = np.zeros_like(dense)
    footprint = morphology.disk(border)
    for k in (1, 2, 3):
        core = ndi.binary_erosion(dense == k, structure=footprint, border_value=1)
        labels[core] = k
    numbers = {
        "mpp": mpp,
        "tissue_mask_at": f"1/{TISSUE_SHRINK} size",
        "hematoxylin_sigma_px": HEMATOXYLIN_SIGMA_UM / mpp,
        "hematoxylin_threshold": threshold,
        "opening_radius_px": max(1, round(OPENING_UM / mpp)),
        "min_area_px": min_px,
        "border_px": border,
        "pixels": {name: int((labels == k).sum()) for k, name, _ in CLASSES} | {"unlabelled": int((labels == 0).sum())},
    }
    return labels, numbers


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="default", help="backbone of diffusion features: 'default' or a folder")
    p.add_argument("--features", default="diffusion", choices=("diffusion", "classic", "rgb"))
    p.add_argument("--out", type=Path, default=SHIPPED, help="head folder to write (default: the shipped head)")
    p.add_argument("--steps", type=int, default=None, help="optimisation steps (default: from the labels)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--region", type=int, nargs=4, metavar=("Y", "X", "H", "W"),
                   help="train on this part of level 0 only (quick trials)")
    p.add_argument("--labels-png", type=Path, help="also write the labels as a PNG (to look at)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = _parse(argv)
    if args.out.resolve() == SHIPPED.resolve() and (args.features != "diffusion" or args.backbone != "default"):
        print("error: the shipped demo head must be trained on the default backbone "
              "(--features diffusion --backbone default); give --out for other features.", file=sys.stderr)
        return 2

    from napari_pathsegdiff._sample_data import SAMPLE_SLIDE, sample_slide_path
    from napari_pathsegdiff.core.feature_cache import FeatureCache
    from napari_pathsegdiff.core.images import write_labels
    from napari_pathsegdiff.core.progress import drive
    from napari_pathsegdiff.core.region import Region
    from napari_pathsegdiff.core.slide import open_slide
    from napari_pathsegdiff.engine.training.train_head import TrainSample, train_head
    from napari_pathsegdiff.models.features import make_extractor
    from napari_pathsegdiff.models.heads import save_head

    extractor = make_extractor(args.features, backbone=args.backbone, device=args.device)
    with open_slide(sample_slide_path()) as slide:
        level = slide.best_level_for_mpp(extractor.mpp) if extractor.mpp else 0
        h, w = slide.levels[level].shape[:2]
        region = Region(level, 0, 0, int(h), int(w))
        if args.region:
            region = Region(0, *args.region).to_level(level, slide.downsamples).clip((h, w))
        rgb = slide.read_region(region)
        t0 = time.perf_counter()
        labels, numbers = demo_labels(rgb, mpp=slide.level_mpp(level))
        print(f"labels of {region} in {time.perf_counter() - t0:.1f} s: {numbers['pixels']}")
        if args.labels_png:
            write_labels(args.labels_png, labels)
        ids, names, colors = zip(*CLASSES)
        t0 = time.perf_counter()
        result = drive(train_head(
            [TrainSample(slide, labels, region, name=SAMPLE_SLIDE)], extractor=extractor,
            class_ids=list(ids), class_names=list(names), class_colors=list(colors), unlabelled=0,
            steps=args.steps, seed=args.seed, cache=FeatureCache(),
        ))
        seconds = time.perf_counter() - t0
    summary = dict(result.summary(), labels=numbers, region=list(region.__dict__.values()),
                   features=extractor.identity, seconds=round(seconds, 1))
    folder = save_head(result.head, args.out, extra={"training.json": summary})
    (folder / "CARD.md").write_text(_card(args, extractor, region, numbers, result, seconds))
    print(json.dumps({k: v for k, v in summary.items() if k != "labels"}, indent=1))
    print(f"wrote {folder}")
    return 0


def _card(args, extractor, region, numbers, result, seconds) -> str:
    import diffusers
    import torch

    s = result.summary()
    px = numbers["pixels"]
    return f"""# Demo head: background / stroma / nuclei-rich tissue

A segmentation head of napari-pathsegdiff for the bundled sample slide, written by
`scripts/make_demo_head.py` on {date.today().isoformat()}.

## Data

- Slide: `CMU-1-Small-Region.svs` (the package's sample, CC0 1.0; see `sample_data/ORIGIN.md`),
  level {region.level} at {numbers['mpp']:g} µm/px, region (y, x, height, width) =
  ({region.y}, {region.x}, {region.height}, {region.width}).
- No other image was used. Nothing from datasets with evaluation-only terms.

## Labels (made automatically, reproducible with the script)

1. Tissue: `core.tissue.tissue_mask` of the region at {numbers['tissue_mask_at']}, scaled back up
   (nearest); everything else is class 1 (background).
2. Hematoxylin density: channel 0 of `skimage.color.rgb2hed`, Gaussian-smoothed with
   sigma {HEMATOXYLIN_SIGMA_UM:g} µm ({numbers['hematoxylin_sigma_px']:.1f} px). Tissue above the Otsu
   threshold of the density over the tissue ({numbers['hematoxylin_threshold']:.4f}) is class 3
   (nuclei-rich tissue), the rest of the tissue class 2 (stroma).
3. Clean-up: nuclei-rich areas opened with a disk of radius {numbers['opening_radius_px']} px
   ({OPENING_UM:g} µm); objects and holes smaller than {numbers['min_area_px']} px ({MIN_AREA_UM2:g} µm²)
   removed / filled.
4. Pixels within {numbers['border_px']} px ({BORDER_UM:g} µm) of another class are left unlabelled.

Labelled pixels: background {px['background']}, stroma {px['stroma']}, nuclei-rich
{px['nuclei-rich tissue']}; unlabelled {px['unlabelled']}.

## Training

- Features: `{extractor.identity}` (`--features {args.features} --backbone {_backbone_name(args.backbone)}`).
- `engine.train_head.train_head` on the sparse labels (class-balanced cross-entropy, flips
  and 90° rotations, 10 % of the windows held out for validation, early stopping), seed
  {args.seed}, steps {args.steps if args.steps else 'automatic'}.
- Result: {s['steps']} steps (best at step {s['best_step']}, stopped early: {s['stopped_early']}),
  final loss {s['final_loss']:.4f}, best validation loss {s['best_val_loss'] if s['best_val_loss'] is None else round(s['best_val_loss'], 4)},
  {seconds:.0f} s on {platform.machine()} with torch {torch.__version__}, diffusers {diffusers.__version__}.

## Use and limits

The classes are coarse, stain-based tissue types of one slide: the head shows the plugin's
loop on the sample slide and is a starting point to correct with the brush and retrain; it
is not a diagnostic model.
"""


def _backbone_name(spec: str) -> str:
    """'default', or the folder's name (the card names no machine folders)."""
    return spec if spec == "default" else Path(spec).name


if __name__ == "__main__":
    sys.exit(main())
