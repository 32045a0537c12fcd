"""The labels of several slides, gathered for one head: painted edits, or imported annotations.

Three steps; :func:`~napari_pathsegdiff.engine.session.slides_training.train_on_slides` then hands
the samples to :func:`~napari_pathsegdiff.engine.training.train_head.train_head` (or
:func:`~napari_pathsegdiff.engine.training.auto_select.auto_train`):

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

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ...core.label_store import ClassInfo
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


# --- 1. one class table ------------------------------------------------------------------------
#: Colours of classes a file or a slide names without one, in turn.
NEW_CLASS_COLORS = ("#f032e6", "#46f0f0", "#bcf60c", "#008080", "#e6beff", "#9a6324", "#800000", "#000075")


def new_class(classes: Sequence[ClassInfo], name: str) -> ClassInfo:
    """A class named ``name`` with the lowest free id and the next unused colour."""
    used = {c.id for c in classes}
    free = next((i for i in range(1, 256) if i not in used), None)
    if free is None:
        raise ValueError(f"All 255 class ids are in use: no room for the class {name!r}.")
    taken = {c.color.lower() for c in classes}
    color = next((c for c in NEW_CLASS_COLORS if c not in taken), NEW_CLASS_COLORS[free % len(NEW_CLASS_COLORS)])
    return ClassInfo(free, name, color)


def class_ids_for(names_colors: dict[str, str | None], classes: Sequence[ClassInfo], *, new_class=new_class
                  ) -> tuple[dict[str, int], list[ClassInfo]]:
    """Class ids of names (exact match, else ignoring case), and the classes to add for the others
    (made by ``new_class(table, name)``, with the colour given when there is one).

    Examples
    --------
    >>> table = [ClassInfo(1, "Tumor", "#ff0000")]
    >>> ids, new = class_ids_for({"tumor": None, "Stroma": "#00ff00"}, table)
    >>> ids, [(c.id, c.name, c.color) for c in new]
    ({'tumor': 1, 'Stroma': 2}, [(2, 'Stroma', '#00ff00')])
    """
    table = list(classes)
    exact = {c.name: c.id for c in table}
    folded: dict[str, int] = {}
    for c in table:
        folded.setdefault(c.name.casefold(), c.id)
    ids: dict[str, int] = {}
    new: list[ClassInfo] = []
    for name, color in names_colors.items():
        if name in exact:
            ids[name] = exact[name]
        elif name.casefold() in folded:
            ids[name] = folded[name.casefold()]
        else:
            made = new_class(table, name)
            made = ClassInfo(made.id, name, color or made.color)
            table.append(made)
            new.append(made)
            exact[name] = folded[name.casefold()] = ids[name] = made.id
    return ids, new


def unify_classes(slides: Sequence[PaintedSlide], base: Sequence[ClassInfo] = (), *, new_class=new_class
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
    table = list(base)
    luts = []
    for s in slides:
        ids, new = class_ids_for({c.name: c.color for c in s.classes}, table, new_class=new_class)
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
