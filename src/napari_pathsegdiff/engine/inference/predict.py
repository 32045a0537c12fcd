"""Predict class labels (and probabilities) for any region of a slide or an in-memory image.

The region is analysed on the head's µm/px: when the level's µm/px differs by more than 5 %,
tiles are resampled to it and the class probabilities are resampled back to the region's
pixels before the argmax. Tiles sit on a grid anchored to absolute coordinates
(:mod:`~napari_pathsegdiff.core.tiling`), so the prediction of a region is exactly the crop of
the prediction of any larger region, and features of tiles already seen come from the cache.
The probabilities of neighbouring tiles are blended across half their halo, so labels and
uncertainty show no seams on the tile grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ...core.feature_cache import FeatureCache
from ...core.progress import Progress, Work, drive
from ...core.region import Region
from ...core.tiling import Blender
from ...models.dihedral import DihedralView, transforms, untransform
from ...core.scale_plan import AnalysisPlan, plan_at_level
from .tile_features import as_slide, iter_tile_features, prediction_grid, prediction_tiles, whole_level


@dataclass
class Prediction:
    """The result of :func:`predict_region`.

    Attributes
    ----------
    labels : ndarray of uint8, shape (h, w)
        Class ids of the head (the training masks' id space) on the region's pixels.
    probabilities : ndarray of float16, shape (C, h, w), or None
        Class probabilities in the order of ``class_ids`` (when asked for).
    region : Region
        The region predicted.
    class_ids : list of int
        Class id of each probability channel.
    scale : float
        Source pixels per analysis pixel (1.0: no resampling).
    source_mpp, analysis_mpp : float or None
        µm/px of the region's level and of the analysis.
    notes : list of str
        What the caller should know (e.g. an unknown µm/px, so no resampling).
    cache : dict
        Feature-cache hits and misses of this call.
    """

    labels: np.ndarray
    probabilities: np.ndarray | None
    region: Region
    class_ids: list[int]
    scale: float = 1.0
    source_mpp: float | None = None
    analysis_mpp: float | None = None
    notes: list[str] = field(default_factory=list)
    cache: dict[str, int] = field(default_factory=dict)


def predict_region(
    source,
    region: Region | None = None,
    *,
    head,
    extractor,
    cache: FeatureCache | None = None,
    batch_size: int = 4,
    mpp: float | None = None,
    return_probabilities: bool = False,
    tta: int = 1,
    plan: AnalysisPlan | None = None,
    blend: int | None = None,
) -> Work[Prediction]:
    """Predict ``region`` of ``source``; a generator yielding one :class:`Progress` per batch.

    Parameters
    ----------
    source : Slide or ndarray
        A slide, or an RGB(A) uint8 image ``(h, w, 3|4)``.
    region : Region, optional
        Pixels to predict (any level); default all of level 0.
    head : SegmentationHead
        Trained head; it must be compatible with ``extractor``.
    extractor : FeatureExtractor
        The features the head was trained on.
    cache : FeatureCache, optional
        Features of tiles already seen; filled with the new ones.
    batch_size : int
        Tiles per feature-extraction and head batch.
    mpp : float, optional
        µm/px of level 0 of ``source`` when the file does not say (or to override it).
    return_probabilities : bool
        Also return per-class probabilities (float16).
    tta : int
        Dihedral test-time augmentation: the mean probabilities over 1, 2, 4 or 8 flips and
        rotations of every tile (features extracted once per transform).
    plan : AnalysisPlan, optional
        The analysis scale of ``region``'s level when the caller has planned it already
        (:func:`~napari_pathsegdiff.core.scale_plan.plan_at_level`).
    blend : int, optional
        Pixels of the halo over which neighbouring tiles are blended (default: half the halo,
        see :func:`~.tile_features.prediction_grid`); 0 pastes tile cores side by side.

    Returns
    -------
    Prediction
        Through ``StopIteration.value``; use :func:`~napari_pathsegdiff.core.progress.drive`.
    """
    head.check_compatible(extractor)
    slide = as_slide(source, mpp=mpp)
    region = whole_level(slide, 0) if region is None else region
    if plan is None:
        plan = plan_at_level(slide, region.level, target_mpp=head.mpp, mpp=mpp)
    notes = list(plan.notes)  # an unknown µm/px, or the resampling to the head's
    grid = prediction_grid(extractor, plan.scale, blend=blend)
    box, tiles = prediction_tiles(grid, slide, region)
    blender = Blender(grid, box, len(head.class_ids))
    hits0, misses0 = (cache.hits, cache.misses) if cache is not None else (0, 0)
    device = head.device
    done = 0
    yield Progress("predict", 0, len(tiles), f"{len(tiles)} tiles")
    views = [DihedralView(extractor, turns, mirrored) for turns, mirrored in transforms(tta)]
    streams = [iter_tile_features(slide, region.level, grid, tiles, view, cache=cache, batch_size=batch_size)
               for view in views]
    for batches in zip(*streams):
        probs = None
        for (turns, mirrored), batch in zip(transforms(tta), batches):
            maps = [torch.from_numpy(np.stack([f[i] for _, f in batch])).to(device) for i in range(len(batch[0][1]))]
            margin = grid.halo - grid.blend
            p = untransform(head.predict_proba(maps, margin=margin).float().cpu(), turns, mirrored)
            probs = p if probs is None else probs + p
        probs = (probs / len(views)).numpy()
        for (tile, _), p in zip(batches[0], probs):
            blender.add(tile, p)
        done += len(batches[0])
        yield Progress("predict", done, len(tiles), f"{done}/{len(tiles)} tiles")
    probabilities = grid.to_source(blender.result(), box, region)
    indices = probabilities.argmax(0)
    probabilities = probabilities.astype(np.float16) if return_probabilities else None
    stats = {}
    if cache is not None:
        stats = {"hits": cache.hits - hits0, "misses": cache.misses - misses0}
    return Prediction(
        labels=head.decode_indices(indices),
        probabilities=probabilities,
        region=region,
        class_ids=head.class_ids,
        scale=plan.scale,
        source_mpp=plan.level_mpp,
        analysis_mpp=plan.analysis_mpp,
        notes=notes,
        cache=stats,
    )


def predict_image(image: np.ndarray, *, head, extractor, **options) -> Prediction:
    """Predict a whole in-memory RGB image (no progress); options as :func:`predict_region`."""
    return drive(predict_region(image, None, head=head, extractor=extractor, **options), show=False)


def uncertainty(probabilities: np.ndarray, *, kind: str = "entropy") -> np.ndarray:
    """Per-pixel uncertainty in [0, 1] from class probabilities ``(C, h, w)``.

    ``"entropy"``: Shannon entropy divided by ``log(C)``; ``"margin"``: one minus the gap
    between the two most probable classes. 0 means certain, 1 means undecided.
    """
    p = np.asarray(probabilities, dtype=np.float32)
    if p.ndim != 3:
        raise ValueError(f"Expected probabilities of shape (C, h, w), got {p.shape}.")
    c = p.shape[0]
    if c < 2:
        return np.zeros(p.shape[1:], np.float32)
    if kind == "entropy":
        h = -(p * np.log(np.clip(p, 1e-12, 1.0))).sum(0)
        return np.clip(h / np.log(c), 0.0, 1.0).astype(np.float32)
    if kind == "margin":
        top2 = np.partition(p, c - 2, axis=0)[c - 2 :]
        return np.clip(1.0 - (top2[1] - top2[0]), 0.0, 1.0).astype(np.float32)
    raise ValueError(f"Unknown uncertainty {kind!r}: use 'entropy' or 'margin'.")
