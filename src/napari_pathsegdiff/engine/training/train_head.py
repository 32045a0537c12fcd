"""Train (or fine-tune) a segmentation head on dense masks or sparse labels, from cached features.

Two steps, whatever the head:

1. :func:`gather_labelled_tiles` puts the labels on the analysis grid and reads the features of
   every tile holding a labelled pixel, once (through the cache);
2. the fit of the head's kind runs on them (:func:`fit_head`), looked up in a registry
   (:func:`register_fitter`): :mod:`~napari_pathsegdiff.engine.training.fit_fcn` and
   :mod:`~napari_pathsegdiff.engine.training.fit_forest`.

Training touches no backbone once the features are cached.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field

import numpy as np

from ...core.feature_cache import FeatureCache
from ...core.progress import Progress, Work
from ...core.region import Region
from ...core.scale_plan import level_mpp, plan_at_level
from ...models.heads import SegmentationHead
from ..inference.tile_features import as_slide, iter_tile_features, make_grid, whole_level


@dataclass
class TrainSample:
    """One labelled image or region.

    Attributes
    ----------
    source : Slide or ndarray
        A slide or an RGB(A) uint8 image.
    mask : ndarray, shape (h, w)
        Class ids on the region's pixels (``unlabelled`` where not labelled).
    region : Region, optional
        Where the mask lies; default all of level 0.
    name : str
        Used in error messages.
    mpp : float, optional
        µm/px of level 0 of ``source`` when it does not say.
    weight : float
        Weight of its pixels in the loss (e.g. below 1 for generated pairs); samples of
        weight other than 1 are never used for validation.
    group : int, optional
        Its group in ``auto``'s cross-validation (e.g. the slide of a painted region, so that
        no fold scores on a slide it trained on); default the sample itself.
    """

    source: object
    mask: np.ndarray
    region: Region | None = None
    name: str = ""
    mpp: float | None = None
    weight: float = 1.0
    group: int | None = None


@dataclass
class TrainResult:
    """What :func:`train_head` returns.

    Attributes
    ----------
    head : SegmentationHead
        The trained head (eval mode), the best on validation when there was one.
    history : list of dict
        ``{"step", "loss"}`` per step, with ``"val_loss"`` where validation ran.
    steps : int
        Steps run.
    best_step : int
        Step of the kept weights.
    stopped_early : bool
        Whether early stopping ended the training.
    class_pixels : dict
        Labelled training pixels per class id.
    windows : dict
        Number of training and validation windows (and of ``weighted`` training windows,
        from samples of weight other than 1).
    seconds : float
        Time spent in the optimisation (features excluded).
    """

    head: SegmentationHead
    history: list[dict] = field(default_factory=list)
    steps: int = 0
    best_step: int = 0
    stopped_early: bool = False
    class_pixels: dict[int, int] = field(default_factory=dict)
    windows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> dict:
        """JSON-ready summary (no weights)."""
        last = self.history[-1] if self.history else {}
        vals = [h["val_loss"] for h in self.history if "val_loss" in h]
        return {
            "steps": self.steps,
            "best_step": self.best_step,
            "stopped_early": self.stopped_early,
            "final_loss": last.get("loss"),
            "best_val_loss": min(vals) if vals else None,
            "class_pixels": {str(k): v for k, v in self.class_pixels.items()},
            "windows": self.windows,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class LabelledTiles:
    """Labelled pixels and the features of their tiles: what every kind of head trains on.

    Attributes
    ----------
    extractor : FeatureExtractor
        The features.
    classes : list of int
        Class id of each output index.
    class_names, class_colors : list of str or None
        Of a new head (``None``: defaults).
    mpp : float or None
        µm/px of the analysis.
    feats : list of list of ndarray
        Per tile, its feature maps ``(C_i, h_i, w_i)``.
    labels : list of ndarray
        Per tile, output indices over the tile's outer pixels (``-1``: not labelled).
    weights : list of float
        Per tile, the loss weight of its sample.
    sources : list of int
        Per tile, the group of its sample (``TrainSample.group``, else the sample's index):
        what cross-validation groups by.
    """

    extractor: object
    classes: list[int]
    class_names: list[str] | None
    class_colors: list[str] | None
    mpp: float | None
    feats: list[list[np.ndarray]] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    sources: list[int] = field(default_factory=list)

    def subset(self, tiles) -> "LabelledTiles":
        """The same classes and features restricted to the tiles of index ``tiles``."""
        tiles = [int(t) for t in tiles]
        return LabelledTiles(
            self.extractor, self.classes, self.class_names, self.class_colors, self.mpp,
            [self.feats[t] for t in tiles], [self.labels[t] for t in tiles],
            [self.weights[t] for t in tiles], [self.sources[t] for t in tiles],
        )

    def class_counts(self) -> np.ndarray:
        """Labelled pixels per output index."""
        counts = np.zeros(len(self.classes), np.int64)
        for lab in self.labels:
            counts += np.bincount(lab[lab >= 0].ravel(), minlength=len(self.classes))[: len(self.classes)]
        return counts


def train_head(
    samples,
    *,
    extractor,
    head=None,
    head_kind: str | None = None,
    class_ids: list[int] | None = None,
    class_names: list[str] | None = None,
    class_colors: list[str] | None = None,
    unlabelled: int | None = None,
    seed: int = 0,
    cache: FeatureCache | None = None,
    feature_batch_size: int = 4,
    threads: int | None = 1,
    **options,
) -> Work[TrainResult]:
    """Train a head; a generator yielding :class:`Progress` (features, then training).

    Two steps: :func:`gather_labelled_tiles` (the same for every kind of head), then the fit
    of the head's kind (:func:`fit_head`).

    Parameters
    ----------
    samples : iterable of TrainSample or tuples
        ``(source, mask)``, ``(source, mask, region)`` or :class:`TrainSample`.
    extractor : FeatureExtractor
        Features to train on.
    head : head, optional
        Start from this head (the normal case after an edit): its kind, classes, µm/px and
        settings are kept; an FCN is fine-tuned, a forest is grown anew. It is never changed.
    head_kind : str, optional
        Kind of a new head (``"fcn"`` by default, ``"forest"``, any registered kind).
    class_ids, class_names, class_colors : list, optional
        Classes of a new head; default the ids found in the masks.
    unlabelled : int, optional
        Mask value of pixels that are not labelled (ignored). ``None``: every pixel counts.
    seed : int
        Seed of everything random.
    cache : FeatureCache, optional
        Tile features already computed, filled with new ones.
    feature_batch_size : int
        Tiles per feature-extraction batch.
    threads : int or None
        CPU threads of the fit (``None``: leave torch's setting).
    **options
        Settings of the kind's fit (:func:`fit_fcn`, :func:`~napari_pathsegdiff.engine.training.fit_forest.fit_forest`).

    Returns
    -------
    TrainResult
        Through ``StopIteration.value``.
    """
    kind = head.head_kind if head is not None else (head_kind or "fcn")
    if head is not None and head_kind not in (None, kind):
        raise ValueError(f"The head to start from is a {kind} head, not a {head_kind} head.")
    fitter = fitter_of(kind)
    labelled = yield from gather_labelled_tiles(
        samples, extractor=extractor, head=head, class_ids=class_ids, class_names=class_names,
        class_colors=class_colors, unlabelled=unlabelled, cache=cache, feature_batch_size=feature_batch_size,
    )
    return (yield from fit_head(labelled, kind=kind, head=head, seed=seed, threads=threads, fitter=fitter, **options))


def fit_head(labelled: "LabelledTiles", *, kind: str, head=None, seed: int = 0, threads: int | None = 1,
             fitter=None, **options) -> Work[TrainResult]:
    """Fit a head of ``kind`` on gathered labelled tiles; options are the kind's settings."""
    fitter = fitter or fitter_of(kind)
    try:
        inspect.signature(fitter).bind(labelled, head=head, seed=seed, threads=threads, **options)
    except TypeError as exc:
        raise ValueError(f"Settings {sorted(options)} do not apply to a {kind} head: {exc}") from None
    return (yield from fitter(labelled, head=head, seed=seed, threads=threads, **options))


#: The fit of each head kind: ``fit(labelled, *, head, seed, threads, **settings) -> Work[TrainResult]``.
_FITTERS: dict[str, str] = {
    "fcn": "napari_pathsegdiff.engine.training.fit_fcn:fit_fcn",
    "forest": "napari_pathsegdiff.engine.training.fit_forest:fit_forest",
    "ensemble": "napari_pathsegdiff.engine.training.fit_ensemble:fit_ensemble",
}


def fcn_settings_for(kind: str, fcn: dict) -> dict:
    """The settings of a ``kind`` fit made of FCN settings ``fcn`` (``steps``, ``lr``, ...): an FCN
    takes them, an ensemble hands them to its FCN members, other kinds have none."""
    by_kind = {"fcn": dict(fcn), "ensemble": {"member_settings": {"fcn": dict(fcn)}} if fcn else {}}
    return by_kind.get(kind, {})


def register_fitter(kind: str, target: str) -> None:
    """Register the fit of a head kind as ``"module:function"``."""
    _FITTERS[str(kind)] = str(target)


def fitter_of(kind: str):
    """The fit function of a head kind; a :class:`ValueError` listing the kinds otherwise."""
    if kind not in _FITTERS:
        raise ValueError(f"Unknown head {kind!r}: use one of {', '.join(_FITTERS)}.")
    module, name = _FITTERS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def gather_labelled_tiles(
    samples,
    *,
    extractor,
    head=None,
    class_ids: list[int] | None = None,
    class_names: list[str] | None = None,
    class_colors: list[str] | None = None,
    unlabelled: int | None = None,
    cache: FeatureCache | None = None,
    feature_batch_size: int = 4,
) -> Work[LabelledTiles]:
    """The tiles holding labelled pixels, their labels on the analysis grid, and their features.

    Parameters are those of :func:`train_head`; with ``head``, its classes and µm/px are used.
    Yields ``Progress("features", ...)`` per batch of tiles.
    """
    samples = [_as_sample(s, i) for i, s in enumerate(samples)]
    if not samples:
        raise ValueError("No training samples: give at least one image with its mask.")
    if head is not None:
        head.check_compatible(extractor)
        classes = head.class_ids
        if unlabelled is not None and int(unlabelled) in classes:
            raise ValueError(f"The unlabelled value {unlabelled} is one of the head's classes {classes}.")
    else:
        classes = _classes(samples, class_ids, unlabelled)
    encoder = _LabelEncoder(classes, unlabelled, head)
    target_mpp = head.mpp if head is not None else _analysis_mpp(samples, extractor)

    # 1. labels on the analysis grid, and the tiles that hold labelled pixels
    jobs = []  # (slide, level, grid, [(tile, label array over tile.outer)], sample weight, index)
    for index, s in enumerate(samples):
        jobs.append((*_labelled_tiles_of(s, encoder, extractor, target_mpp), index))
    n_tiles = sum(len(job[3]) for job in jobs)
    if n_tiles == 0:
        raise ValueError("No labelled pixels in any mask: paint or label some pixels first.")

    # 2. features, once per tile
    out = LabelledTiles(extractor, list(classes), class_names, class_colors, target_mpp)
    done = 0
    yield Progress("features", 0, n_tiles, f"{n_tiles} labelled tiles")
    for slide, level, grid, tiles, weight, index in jobs:
        lookup = {(t.row, t.col): lab for t, lab in tiles}
        for batch in iter_tile_features(
            slide, level, grid, [t for t, _ in tiles], extractor, cache=cache, batch_size=feature_batch_size
        ):
            for tile, f in batch:
                out.feats.append(f)
                out.labels.append(lookup[(tile.row, tile.col)])
                out.weights.append(weight)
                out.sources.append(_group_of(samples[index], index))
            done += len(batch)
            yield Progress("features", done, n_tiles, f"{done}/{n_tiles} tiles")
    return out


def _group_of(sample: TrainSample, index: int) -> int:
    """The cross-validation group of a sample: its index, or ``-1 - group`` for a given group
    (negative, so that given groups never meet the indices of samples without one)."""
    return index if sample.group is None else -1 - int(sample.group)


def _labelled_tiles_of(s: TrainSample, encoder, extractor, target_mpp):
    """(slide, level, grid, [(tile, outer labels)], weight) of one sample."""
    if not (np.isfinite(s.weight) and s.weight >= 0):
        raise ValueError(f"Weight of {s.name} must be a number >= 0, got {s.weight}.")
    slide = as_slide(s.source, mpp=s.mpp)
    region = whole_level(slide, 0) if s.region is None else s.region
    mask = np.asarray(s.mask)
    if mask.shape != region.shape:
        raise ValueError(
            f"Mask of {s.name} is {mask.shape[0]}x{mask.shape[1]} but its region is "
            f"{region.height}x{region.width}: they must be the same size."
        )
    encoded = encoder(mask, s.name)
    grid = make_grid(extractor, plan_at_level(slide, region.level, target_mpp=target_mpp, mpp=s.mpp).scale)
    box = grid.analysis_box(region)
    labels = grid.labels_to_analysis(encoded, region, box, fill=-1) if grid.resampled else encoded
    tiles = []
    for tile in grid.tiles(box):
        part = tile.core.intersect(box)
        core = labels[part.slices_in(box)]
        if (core >= 0).any():
            outer = np.full((grid.outer_size, grid.outer_size), -1, dtype=np.int8)
            outer[part.slices_in(tile.outer)] = core
            tiles.append((tile, outer))
    return slide, region.level, grid, tiles, float(s.weight)


# --- labels ------------------------------------------------------------------------------------
def _as_sample(s, i: int) -> TrainSample:
    if isinstance(s, TrainSample):
        sample = s
    elif isinstance(s, (tuple, list)) and 2 <= len(s) <= 3:
        sample = TrainSample(s[0], s[1], s[2] if len(s) == 3 else None)
    else:
        raise ValueError(f"Training sample {i} must be (image, mask[, region]) or a TrainSample.")
    if not sample.name:
        sample.name = f"sample {i}"
    return sample


def _classes(samples: list[TrainSample], class_ids, unlabelled) -> list[int]:
    if class_ids is not None:
        ids = [int(c) for c in class_ids]
        if unlabelled is not None and int(unlabelled) in ids:
            raise ValueError(f"The unlabelled value {unlabelled} is also listed as a class id in {ids}.")
        return ids
    found: set[int] = set()
    for s in samples:
        found.update(int(v) for v in np.unique(np.asarray(s.mask)))
    if unlabelled is not None:
        found.discard(int(unlabelled))
    return sorted(found)


class _LabelEncoder:
    """Mask class ids → output indices, -1 for unlabelled; unknown ids are a clear error."""

    def __init__(self, classes: list[int], unlabelled: int | None, head: SegmentationHead | None):
        self.classes, self.unlabelled, self.head = classes, unlabelled, head

    def __call__(self, mask: np.ndarray, name: str) -> np.ndarray:
        if self.head is not None:
            return self.head.encode_labels(mask, unlabelled=self.unlabelled, name=f"Mask of {name}")
        if mask.size and (mask.min() < 0 or mask.max() > 255):
            raise ValueError(f"Mask of {name} holds values {mask.min()}..{mask.max()}: class ids must be 0..255.")
        lut = np.full(256, -2, dtype=np.int16)
        lut[self.classes] = np.arange(len(self.classes))
        if self.unlabelled is not None:
            lut[int(self.unlabelled)] = -1
        out = lut[mask.astype(np.int64)]
        if (out == -2).any():
            unknown = sorted(np.unique(mask[out == -2]).tolist())
            raise ValueError(f"Mask of {name} holds class id(s) {unknown} not among the classes {self.classes}.")
        return out.astype(np.int8) if len(self.classes) < 127 else out


def _analysis_mpp(samples: list[TrainSample], extractor) -> float | None:
    """The µm/px to analyse at: the extractor's, else the median of the samples' (if known)."""
    if extractor.mpp is not None:
        return float(extractor.mpp)
    known = []
    for s in samples:
        slide = as_slide(s.source, mpp=s.mpp)
        level = 0 if s.region is None else s.region.level
        m = level_mpp(slide, level, s.mpp)
        if m is not None:
            known.append(m)
    return float(np.median(known)) if known else None


