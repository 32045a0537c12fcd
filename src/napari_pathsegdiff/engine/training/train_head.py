"""Train (or fine-tune) a segmentation head on dense masks or sparse labels, from cached features.

Two steps, whatever the head: :func:`gather_labelled_tiles` puts the labels on the analysis
grid and reads the features of every tile holding a labelled pixel, once (through the cache);
then the fit of the head's kind runs on them (:func:`fit_head`: :func:`fit_fcn` here, the
forest's in :mod:`~napari_pathsegdiff.engine.training.fit_forest`). The rest of this note is the FCN's.

Training then touches no backbone. The FCN trains on small *windows* (about ``window`` pixels a side, on the head's trunk grid) around
labelled pixels rather than on whole tiles: each window's feature maps are cropped with one
extra feature pixel per side and a margin of context, so that after the bilinear upsamplings
and the 3x3 convolutions the scores at its labelled pixels equal those of a whole-tile
prediction. A few thousand labelled pixels cost a few dozen small windows, whatever the tile
size: retraining after an edit takes about a second.

- Sparse labels: pixels equal to ``unlabelled`` are ignored (scribbles, brush corrections).
- Class-balanced cross-entropy: weights from the labelled-pixel frequency of each class.
- Augmentation: the 8 flips/rotations by 90°, applied to the fused feature windows and their
  labels together (they commute with the per-map 1x1 reduction and the upsampling).
- Validation on a seeded share of the windows, early stopping, best weights kept.
- Fixed seed → identical result. The generator can be closed between steps: it never writes
  anything, and a head passed in for fine-tuning is copied, never changed.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import inspect
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ...core.feature_cache import FeatureCache
from ...core.progress import Progress, Work
from ...core.region import Region
from ...core.scale_plan import level_mpp, plan_at_level
from ...models.heads import SegmentationHead, new_head
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
    """

    source: object
    mask: np.ndarray
    region: Region | None = None
    name: str = ""
    mpp: float | None = None
    weight: float = 1.0


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
class _Window:
    tile: int  # index into the tile feature list
    y: int  # top-left in the tile's outer pixels
    x: int


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
        Per tile, the index of its sample (for cross-validation grouped by image).
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
    "fcn": "napari_pathsegdiff.engine.training.train_head:fit_fcn",
    "forest": "napari_pathsegdiff.engine.training.fit_forest:fit_forest",
}


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
                out.sources.append(index)
            done += len(batch)
            yield Progress("features", done, n_tiles, f"{done}/{n_tiles} tiles")
    return out


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


def fit_fcn(
    labelled: LabelledTiles,
    *,
    head: SegmentationHead | None = None,
    seed: int = 0,
    threads: int | None = 1,
    steps: int | None = None,
    lr: float = 1e-2,
    val_fraction: float = 0.1,
    patience: int = 5,
    augment: bool = True,
    batch_size: int = 32,
    window: int = 32,
    hidden: int = 16,
    depth: int = 2,
    dropout: float = 0.1,
) -> Work[TrainResult]:
    """Train (or fine-tune a copy of) an FCN head on labelled tiles; yields one Progress per step.

    Parameters
    ----------
    labelled : LabelledTiles
        From :func:`gather_labelled_tiles`.
    head : SegmentationHead, optional
        Fine-tune a copy of this head; its feature normalisation is kept.
    seed : int
        Seed of everything random.
    threads : int or None
        Torch threads during each optimisation step (``None``: leave as is). The steps are
        many small operations: one thread is as fast as two on an idle machine and many times
        faster on a busy one, where threads wait for each other.
    steps : int, optional
        Optimisation steps; default from the number of windows (:func:`default_steps`).
    lr, val_fraction, patience : float, float, int
        AdamW learning rate; share of windows held out for validation (none when fewer than
        10 windows); validations without improvement before stopping.
    augment : bool
        Random flips and 90° rotations.
    batch_size, window : int
        Windows per step and their side in pixels.
    hidden, depth, dropout : int, int, float
        Architecture of a new head (see :class:`SegmentationHead`).
    """
    fine_tune = head is not None
    head = copy.deepcopy(head) if head is not None else None
    extractor, classes, feats = labelled.extractor, labelled.classes, labelled.feats
    tile_labels, tile_weights = labelled.labels, labelled.weights
    class_names, class_colors, target_mpp = labelled.class_names, labelled.class_colors, labelled.mpp
    rng = np.random.default_rng(seed)
    # --- windows around labelled pixels, split, head -------------------------------------------
    trunk = int(min(extractor.strides))
    margin = (depth if head is None else int(head.config.depth)) + (1 if trunk > 1 else 0)
    outer = tile_labels[0].shape[0]
    windows, win_labels, side = _windows(tile_labels, outer=outer, window=window, margin=margin, trunk=trunk)
    win_weights = np.array([tile_weights[w.tile] for w in windows], dtype=np.float32)
    plain = np.flatnonzero(win_weights == 1.0)  # only these may validate
    n_val = int(round(len(plain) * val_fraction)) if len(plain) >= 10 and val_fraction > 0 else 0
    order = plain[rng.permutation(len(plain))]
    val_idx = np.sort(order[:n_val])
    train_idx = np.setdiff1d(np.arange(len(windows)), val_idx)
    weighted = bool((win_weights[train_idx] != 1.0).any())
    train_lab = win_labels[train_idx]
    counts = np.bincount(train_lab[train_lab >= 0].ravel(), minlength=len(classes))
    if head is None and (counts > 0).sum() < 2:
        present = [classes[i] for i in np.flatnonzero(counts)]
        raise ValueError(
            f"Only class {present} has labelled pixels: label at least two classes to train a head."
        )
    class_pixels = {int(classes[i]): int(counts[i]) for i in range(len(classes))}
    weights = _class_weights(counts)
    strides = list(extractor.strides)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if head is None:
            head = new_head(
                extractor, classes, class_names=class_names, class_colors=class_colors,
                mpp=target_mpp, hidden=hidden, depth=depth, dropout=dropout,
            )
            head.set_normalization(*_feature_stats(feats, rng))
        head.train()
        opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
        n_steps = (default_steps(len(train_idx), batch_size, fine_tune=fine_tune)
                   if steps is None else int(steps))
        batches_per_epoch = max(1, math.ceil(len(train_idx) / batch_size))
        eval_every = max(5, min(batches_per_epoch, max(1, n_steps // 10)))
        w_tensor = torch.as_tensor(weights, dtype=torch.float32)
        result = TrainResult(head=head, class_pixels=class_pixels,
                             windows={"train": int(len(train_idx)), "val": int(len(val_idx)),
                                      "weighted": int((win_weights[train_idx] != 1.0).sum())})
        best_val, best_state, stale = math.inf, None, 0
        t0 = time.perf_counter()
        perm, pos = rng.permutation(train_idx), 0
        yield Progress("train", 0, n_steps, "training")
        for step in range(1, n_steps + 1):
            if pos >= len(perm):
                perm, pos = rng.permutation(train_idx), 0
            idx = perm[pos : pos + batch_size]
            pos += batch_size
            with _torch_threads(threads):
                fused = _fused_windows(head, feats, [windows[i] for i in idx], strides, side)
                labels = torch.from_numpy(win_labels[idx].astype(np.int64))
                if augment:
                    fused, labels = _augment(fused, labels, rng)
                logits = head.upsample_scores(head.classify(fused))
                if weighted:
                    loss = weighted_cross_entropy(logits, labels, w_tensor, torch.from_numpy(win_weights[idx]))
                else:
                    loss = F.cross_entropy(logits, labels, weight=w_tensor, ignore_index=-1)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                record = {"step": step, "loss": float(loss.detach())}
                if n_val and (step % eval_every == 0 or step == n_steps):
                    record["val_loss"] = _val_loss(
                        head, feats, windows, win_labels, val_idx, strides, side, w_tensor, batch_size
                    )
                    if record["val_loss"] < best_val - 1e-4:
                        best_val, stale = record["val_loss"], 0
                        best_state = copy.deepcopy(head.state_dict())
                        result.best_step = step
                    else:
                        stale += 1
            result.history.append(record)
            result.steps = step
            metrics = {k: v for k, v in record.items() if k != "step"}
            yield Progress("train", step, n_steps, f"step {step}/{n_steps}", metrics)
            if n_val and stale >= patience:
                result.stopped_early = True
                break
        if best_state is not None:
            head.load_state_dict(best_state)
        else:
            result.best_step = result.steps
        head.eval()
        result.seconds = time.perf_counter() - t0
    return result


def weighted_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor, window_weights: torch.Tensor
) -> torch.Tensor:
    """Class-weighted cross-entropy whose windows also carry a weight each.

    ``sum(w_window * w_class * loss) / sum(w_window * w_class)`` over the labelled pixels: with
    every window weight 1 it equals ``F.cross_entropy(..., weight=class_weights, ignore_index=-1)``.
    """
    per_pixel = F.cross_entropy(logits, labels, weight=class_weights, ignore_index=-1, reduction="none")
    valid = labels >= 0
    w = class_weights[labels.clamp_min(0)] * valid * window_weights.view(-1, 1, 1).to(per_pixel)
    return (per_pixel * window_weights.view(-1, 1, 1).to(per_pixel)).sum() / w.sum().clamp_min(1e-12)


@contextlib.contextmanager
def _torch_threads(n: int | None):
    """Run the block with ``n`` torch intra-op threads, then restore the previous number."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def default_steps(n_windows: int, batch_size: int, *, fine_tune: bool = False) -> int:
    """Steps when none are given: about 10 passes over the windows, between 60 and 2000.

    Fine-tuning a trained head on corrections needs half as many (at least 30).
    """
    steps = min(2000, max(60, 10 * math.ceil(n_windows / batch_size)))
    return int(max(30, steps // 2) if fine_tune else steps)


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


def _class_weights(counts: np.ndarray) -> np.ndarray:
    """Inverse-frequency weights (mean 1 over the classes present; 0 for absent ones)."""
    counts = counts.astype(np.float64)
    present = counts > 0
    w = np.zeros_like(counts)
    w[present] = counts[present].sum() / (present.sum() * counts[present])
    return np.clip(w, 0.0, 50.0)


# --- windows -------------------------------------------------------------------------------------
def _windows(tile_labels, *, outer: int, window: int, margin: int, trunk: int):
    """Windows covering every labelled pixel once, their labels, and their side in trunk pixels.

    Windows live on the head's trunk grid (``trunk`` pixels per trunk pixel). Their cores
    tile the tile; each adds ``margin`` trunk pixels of context (clamped to the tile) so that
    the convolutions and the final upsampling see the same neighbours as in a whole-tile
    prediction. Labels are ``(side * trunk, side * trunk)`` pixels, -1 outside the core.
    """
    outer_t = outer // trunk
    side = min(max(-(-window // trunk), 2 * margin + 8), outer_t)
    step = side - 2 * margin
    if step < 1:
        raise ValueError(f"Tiles of {outer} px are too small for a head with a margin of {margin}.")
    windows, labels = [], []
    for ti, lab in enumerate(tile_labels):
        ys, xs = np.nonzero(lab >= 0)
        if len(ys) == 0:
            continue
        cells = set(zip((ys // trunk // step).tolist(), (xs // trunk // step).tolist()))
        for cy, cx in sorted(cells):
            cy0, cx0 = cy * step, cx * step
            wy = min(max(cy0 - margin, 0), outer_t - side)
            wx = min(max(cx0 - margin, 0), outer_t - side)
            out = np.full((side * trunk, side * trunk), -1, dtype=np.int8)
            y0, y1 = max(cy0, wy) * trunk, min(cy0 + step, wy + side) * trunk
            x0, x1 = max(cx0, wx) * trunk, min(cx0 + step, wx + side) * trunk
            out[y0 - wy * trunk : y1 - wy * trunk, x0 - wx * trunk : x1 - wx * trunk] = lab[y0:y1, x0:x1]
            windows.append(_Window(ti, wy, wx))
            labels.append(out)
    return windows, np.stack(labels), side


def _crop_indices(start: int, size: int, stride: int, n: int) -> tuple[np.ndarray, int]:
    """Feature rows covering trunk rows ``[start, start + size)`` plus one per side, edge-clamped.

    ``stride`` is in trunk pixels. Returns the indices and the offset of ``start`` in the
    crop upsampled by ``stride``.
    """
    f0 = start // stride - 1
    length = -(-size // stride) + 2
    return np.clip(np.arange(f0, f0 + length), 0, n - 1), start - f0 * stride


def _fused_windows(head: SegmentationHead, feats, windows: list[_Window], strides, size: int) -> torch.Tensor:
    """Fused head features ``(B, hidden, size, size)`` of windows, as in a whole-tile pass."""
    trunk = head.trunk_stride
    fused = None
    for i, s in enumerate(strides):
        r = s // trunk
        crops, offsets = [], []
        for w in windows:
            f = feats[w.tile][i]
            if r == 1:
                crops.append(f[:, w.y : w.y + size, w.x : w.x + size])
                continue
            iy, oy = _crop_indices(w.y, size, r, f.shape[1])
            ix, ox = _crop_indices(w.x, size, r, f.shape[2])
            crops.append(f[:, iy][:, :, ix])
            offsets.append((oy, ox))
        x = head.reduce_map(i, torch.from_numpy(np.stack(crops)).float())
        if r > 1:
            x = F.interpolate(x, scale_factor=r, mode="bilinear", align_corners=False)
            x = torch.stack([x[b, :, oy : oy + size, ox : ox + size] for b, (oy, ox) in enumerate(offsets)])
        fused = x if fused is None else fused + x
    return fused


def _window_scores(head: SegmentationHead, feats, windows: list[_Window], strides, size: int) -> torch.Tensor:
    """Class scores of windows at their pixels, ``(B, K, size * trunk, size * trunk)``."""
    return head.upsample_scores(head.classify(_fused_windows(head, feats, windows, strides, size)))


def _augment(fused: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator):
    """A random flip/rotation by 90° per window, the same for features and labels."""
    ks = rng.integers(0, 8, size=len(fused))
    xs, ys = [], []
    for x, y, k in zip(fused, labels, ks):
        if k >= 4:
            x, y = x.flip(-1), y.flip(-1)
        r = int(k % 4)
        xs.append(torch.rot90(x, r, dims=(-2, -1)))
        ys.append(torch.rot90(y, r, dims=(-2, -1)))
    return torch.stack(xs), torch.stack(ys)


def _val_loss(head, feats, windows, win_labels, val_idx, strides, size, weights, batch_size) -> float:
    head.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(val_idx), batch_size):
            idx = val_idx[start : start + batch_size]
            labels = torch.from_numpy(win_labels[idx].astype(np.int64))
            logits = _window_scores(head, feats, [windows[i] for i in idx], strides, size)
            loss = F.cross_entropy(logits, labels, weight=weights, ignore_index=-1, reduction="sum")
            valid = labels >= 0
            total += float(loss)
            n += float(weights[labels[valid]].sum())
    head.train()
    return total / max(n, 1e-12)


def _feature_stats(feats, rng: np.random.Generator, max_pixels: int = 200_000):
    """Per-channel mean and standard deviation of each map over (a sample of) the tiles."""
    means, stds = [], []
    for i in range(len(feats[0])):
        total = sum(f[i].shape[1] * f[i].shape[2] for f in feats)
        keep = min(1.0, max_pixels / total)
        parts = []
        for f in feats:
            m = f[i].reshape(f[i].shape[0], -1)
            if keep < 1.0:
                m = m[:, rng.random(m.shape[1]) < keep]
            parts.append(m.astype(np.float64))
        allv = np.concatenate(parts, axis=1)
        means.append(allv.mean(1))
        stds.append(allv.std(1))
    return means, stds
