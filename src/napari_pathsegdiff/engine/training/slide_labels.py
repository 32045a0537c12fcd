"""Train one head on the labels of several slides: painted edits, or imported annotations.

Three steps, then :func:`~napari_pathsegdiff.engine.training.train_head.train_head` (or
:func:`~napari_pathsegdiff.engine.training.auto_select.auto_train`) does the rest:

1. one class table for all slides (:func:`unify_classes`): classes are matched by name, since
   each slide's session keeps its own table and the same id may name different classes;
2. a sample of the labelled pixels (:func:`sample_painted`) so that the time stays
   interactive however much was painted: at most ``max_windows`` store chunks (512 px a side)
   and about ``max_pixels`` pixels, shared fairly between slides (a slide with little paint
   gives its unused share to the others). Within a slide, the chunks holding most of each
   class come first, so no painted class is dropped, then the others in a seeded random order;
3. :class:`~napari_pathsegdiff.engine.training.train_head.TrainSample` regions on each slide's
   analysis level, trained on together.

Labels are read through two calls, ``edited_windows()`` and ``read(y, x, h, w, which="edits")``:
a slide's :class:`~napari_pathsegdiff.core.label_store.LabelStore` and a
:class:`~napari_pathsegdiff.core.label_canvas.LabelCanvas` of imported GeoJSON both have them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ...core.label_store import ClassInfo
from ...core.progress import Progress, Work
from ...core.region import Region

#: Pixels and store chunks trained on at most, over all slides (see :func:`sample_painted`).
MAX_PIXELS = 200_000
MAX_WINDOWS = 24
#: A class painted on a slide keeps at least this many of its pixels (or all of them).
MIN_CLASS_PIXELS = 2_000


@dataclass
class PaintedSlide:
    """The labels of one slide.

    Attributes
    ----------
    slide : Slide
        The slide.
    labels : LabelStore or LabelCanvas
        Its labels at the analysis level (0: not labelled).
    level : int
        The pyramid level ``labels`` covers.
    classes : list of ClassInfo
        The class table of ``labels``' ids.
    name : str
        For messages and counts.
    """

    slide: object
    labels: object
    level: int
    classes: list[ClassInfo]
    name: str


@dataclass
class SlideCount:
    """Labelled pixels of one slide: all of them per class (ids of the common table), and how
    many were trained on."""

    name: str
    painted: dict[int, int] = field(default_factory=dict)
    used: int = 0
    windows: int = 0
    windows_used: int = 0

    def as_dict(self) -> dict:
        return {"slide": self.name, "painted": {str(k): v for k, v in self.painted.items()},
                "used": self.used, "windows": self.windows, "windows_used": self.windows_used}


@dataclass
class SlidesTrainResult:
    """What :func:`train_on_slides` returns.

    Attributes
    ----------
    result : TrainResult
        The training record; ``result.head`` the trained head.
    extractor : FeatureExtractor
        Its features (``auto`` may choose others than those given).
    classes : list of ClassInfo
        The common class table (the head's names and colours come from it).
    counts : list of SlideCount
        Per slide.
    fine_tuned : bool
        Whether the given head was fine-tuned (else a new head was made).
    note : str
        What ``auto`` chose, when it ran.
    auto : AutoResult or None
        ``auto``'s record.
    seconds : float
        Wall time, features included.
    """

    result: object
    extractor: object
    classes: list[ClassInfo]
    counts: list[SlideCount]
    fine_tuned: bool
    note: str = ""
    auto: object = None
    seconds: float = 0.0

    def summary(self) -> dict:
        """JSON-ready record (for ``training.json``)."""
        return {"slides": [c.as_dict() for c in self.counts], "fine_tuned": self.fine_tuned,
                "classes": [c.__dict__ for c in self.classes], "auto": self.auto.record() if self.auto else None,
                "result": self.result.summary(), "seconds": round(self.seconds, 2)}


# --- 1. one class table ------------------------------------------------------------------------
def unify_classes(slides: Sequence[PaintedSlide], base: Sequence[ClassInfo] = ()
                  ) -> tuple[list[ClassInfo], list[np.ndarray]]:
    """The common class table (``base`` first, then each slide's other names) and, per slide,
    a lookup table from its ids to the common ones.

    Examples
    --------
    >>> a = PaintedSlide(None, None, 0, [ClassInfo(1, "tumour", "#ff0000")], "a")
    >>> b = PaintedSlide(None, None, 0, [ClassInfo(1, "stroma", "#00ff00"), ClassInfo(2, "tumour", "#f00000")], "b")
    >>> table, luts = unify_classes([a, b])
    >>> [(c.id, c.name) for c in table], luts[1][[1, 2]].tolist()
    ([(1, 'tumour'), (2, 'stroma')], [2, 1])
    """
    from ..session.annotation_import import class_ids_for

    table = list(base)
    luts = []
    for s in slides:
        ids, new = class_ids_for({c.name: c.color for c in s.classes}, table)
        table += new
        lut = np.zeros(256, np.uint8)
        for c in s.classes:
            lut[c.id] = ids[c.name]
        luts.append(lut)
    return table, luts


# --- 2. a fair sample ----------------------------------------------------------------------------
def sample_painted(slides: Sequence[PaintedSlide], luts: Sequence[np.ndarray], *, max_pixels: int = MAX_PIXELS,
                   max_windows: int = MAX_WINDOWS, seed: int = 0):
    """Labelled regions of every slide, sampled, as ``(slide, region, mask)`` with common ids.

    Every labelled chunk is read once to count its classes (only the counts are kept), then the
    chosen chunks again: memory follows ``max_windows``, not what was painted.

    Returns
    -------
    (list of (PaintedSlide, Region, ndarray), list of SlideCount)
        Masks hold common class ids, 0 where not labelled (or not sampled).
    """
    rng = np.random.default_rng(seed)
    per_slide, counts = [], []
    for s, lut in zip(slides, luts):
        windows = s.labels.edited_windows()
        hist = np.zeros((len(windows), 256), np.int64)
        for k, w in enumerate(windows):
            hist[k] = np.bincount(lut[s.labels.read(*w, which="edits")].ravel(), minlength=256)
        hist[:, 0] = 0
        total = hist.sum(axis=0)
        count = SlideCount(s.name, {int(i): int(total[i]) for i in np.flatnonzero(total)}, windows=len(windows))
        per_slide.append((windows, hist))
        counts.append(count)
    window_share = _fair_shares([c.windows for c in counts], max_windows)
    chosen_all = []
    for (windows, hist), count, n_windows in zip(per_slide, counts, window_share):
        chosen = _window_order(hist, rng)[:n_windows]
        count.windows_used = len(chosen)
        count.used = int(hist[chosen].sum())  # thinned below
        chosen_all.append([windows[i] for i in chosen])
    pixel_share = _fair_shares([c.used for c in counts], max_pixels)
    samples = []
    for s, lut, chosen, count, quota in zip(slides, luts, chosen_all, counts, pixel_share):
        masks = [(w, lut[s.labels.read(*w, which="edits")]) for w in chosen]
        thinned = _thin(masks, quota, rng)
        count.used = sum(int(np.count_nonzero(m)) for _, m in thinned)
        for (y, x, h, w), m in thinned:
            if m.any():
                samples.append((s, Region(s.level, y, x, h, w), m))
    return samples, counts


def _fair_shares(sizes: Sequence[int], total: int) -> list[int]:
    """Water-filling: each gets at most its size, the rest is split evenly among the others.

    >>> _fair_shares([10, 100, 1000], 300)
    [10, 100, 190]
    """
    shares = [0] * len(sizes)
    left = int(total)
    open_ = sorted(range(len(sizes)), key=lambda i: sizes[i])
    while open_ and left > 0:
        even = left // len(open_)
        i = open_[0]
        if sizes[i] <= even:
            shares[i] = sizes[i]
            left -= sizes[i]
            open_.pop(0)
            continue
        for k, i in enumerate(open_):
            shares[i] = even + (1 if k < left - even * len(open_) else 0)
        break
    return shares


def _window_order(hist: np.ndarray, rng: np.random.Generator) -> list[int]:
    """Window indices: for each class the window holding most of it, then the rest at random.

    ``hist`` holds the labelled pixels of each window per class id, ``(windows, 256)``.
    """
    first: list[int] = []
    for c in np.flatnonzero(hist.sum(axis=0)):
        best = int(np.argmax(hist[:, c]))
        if best not in first:
            first.append(best)
    taken = set(first)
    rest = [i for i in rng.permutation(len(hist)).tolist() if i not in taken]
    return first + rest


def _thin(chosen, quota: int, rng: np.random.Generator):
    """Keep about ``quota`` labelled pixels of the windows, each class at least
    :data:`MIN_CLASS_PIXELS` (or all it has)."""
    total = sum(int(np.count_nonzero(m)) for _, m in chosen)
    if total <= quota:
        return chosen
    fraction = quota / total
    per_class: dict[int, int] = {}
    for _, m in chosen:
        ids, n = np.unique(m[m > 0], return_counts=True)
        for c, k in zip(ids.tolist(), n.tolist()):
            per_class[c] = per_class.get(c, 0) + k
    keep_p = {c: min(1.0, max(fraction, MIN_CLASS_PIXELS / n)) for c, n in per_class.items()}
    lut = np.zeros(256, np.float64)
    for c, p in keep_p.items():
        lut[c] = p
    out = []
    for w, m in chosen:
        keep = rng.random(m.shape) < lut[m]
        out.append((w, np.where(keep, m, 0).astype(np.uint8)))
    return out


# --- 3. training ---------------------------------------------------------------------------------
def train_on_slides(
    slides: Sequence[PaintedSlide],
    *,
    extractor=None,
    head=None,
    classes: Sequence[ClassInfo] = (),
    head_kind: str | None = None,
    make_extractor=None,
    candidates=None,
    budget_s: float | None = None,
    max_pixels: int = MAX_PIXELS,
    max_windows: int = MAX_WINDOWS,
    seed: int = 0,
    cache=None,
    **options,
) -> Work[SlidesTrainResult]:
    """Train one head on the labels of every slide; a generator yielding ``Progress``.

    Parameters
    ----------
    slides : sequence of PaintedSlide
        The slides and their labels.
    extractor : FeatureExtractor, optional
        The features (required unless ``auto`` chooses them with ``make_extractor``).
    head : head, optional
        Fine-tuned when it knows every labelled class; otherwise a new head is made for the
        common class table.
    classes : sequence of ClassInfo
        The class table to start from (a project's); names of the slides' classes join it.
    head_kind : str, optional
        Kind of a new head when ``auto`` does not run.
    make_extractor, candidates : optional
        Both given: a new head is chosen by ``auto`` among ``candidates``
        (:func:`~napari_pathsegdiff.engine.training.auto_select.auto_train`).
    budget_s : float, optional
        ``auto``'s budget.
    max_pixels, max_windows, seed : int
        Sampling (:func:`sample_painted`) and everything random.
    cache : FeatureCache, optional
        Tile features already computed.
    **options
        Settings of the head's fit.

    Raises
    ------
    ValueError
        No slide has labels, or fewer than two classes are labelled over all slides.
    """
    from ..session.annotation import _apply_class_table, _store_to_head_lut, store_ids_for
    from .train_head import TrainSample, train_head

    t0 = time.perf_counter()
    yield Progress("labels", 0, len(slides), "reading the labels of every slide")
    table, luts = unify_classes(slides, classes)
    picked, counts = sample_painted(slides, luts, max_pixels=max_pixels, max_windows=max_windows, seed=seed)
    labelled = {i for c in counts for i in c.painted}
    names = {c.id: c.name for c in table}
    if not labelled:
        raise ValueError(f"No labelled pixel on any of the {len(slides)} slides: paint or import "
                         "annotations of at least two classes first.")
    if len(labelled) < 2:
        [only] = labelled
        raise ValueError(f"Only class {names[only]!r} is labelled over all {len(slides)} slides: label at "
                         "least one more class so the head can learn to tell them apart.")
    head_ids = store_ids_for(head.class_ids) if head is not None else []
    fine_tune = head is not None and labelled <= set(head_ids)
    if fine_tune:
        lut, unlabelled = _store_to_head_lut(head.class_ids)
        class_kwargs = {}
    else:
        ids = sorted(c.id for c in table)
        lut, unlabelled = np.arange(256, dtype=np.uint8), 0
        by_id = {c.id: c for c in table}
        class_kwargs = {"class_ids": ids, "class_names": [by_id[i].name for i in ids],
                        "class_colors": [by_id[i].color for i in ids]}
    samples = [TrainSample(s.slide, lut[m], region, name=f"{s.name} at y={region.y}, x={region.x}")
               for s, region, m in picked]
    auto = None
    if make_extractor is not None and candidates is not None and not fine_tune:
        from .auto_select import WIDGET_BUDGET_S, auto_train

        auto = yield from auto_train(
            samples, make_extractor=make_extractor, candidates=candidates, unlabelled=unlabelled, seed=seed,
            budget_s=WIDGET_BUDGET_S if budget_s is None else budget_s,
            cache_for=(lambda ex: cache) if cache is not None else None, **class_kwargs)
        result, extractor = auto.result, auto.extractor
    else:
        if extractor is None:
            raise ValueError("No features to train on: give an extractor (or let auto choose).")
        kind = head.head_kind if fine_tune else (head_kind or "fcn")
        result = yield from train_head(
            samples, extractor=extractor, head=head if fine_tune else None,
            head_kind=None if fine_tune else kind, unlabelled=unlabelled, seed=seed, cache=cache,
            **(options if kind == "fcn" else {}), **class_kwargs)
    _apply_class_table(result.head, {c.id: c for c in table})
    return SlidesTrainResult(result, extractor, table, counts, fine_tune, note=getattr(auto, "note", ""),
                             auto=auto, seconds=time.perf_counter() - t0)
