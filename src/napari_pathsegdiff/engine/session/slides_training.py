"""One head trained on the labels of several slides (a project's, or the command line's).

The session-level half of :mod:`~napari_pathsegdiff.engine.training.slide_labels`: it gathers
and samples the slides' labels there, then decides, as *Train on my edits* does for one slide,
whether the given head is fine-tuned (it knows every labelled class) or a new head is made for
the common class table (chosen by ``auto`` when candidates are given), and trains it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ...core.label_store import ClassInfo
from ...core.progress import Progress, Work
from ..training.slide_labels import (
    MAX_PIXELS,
    MAX_WINDOWS,
    PaintedSlide,
    SlideCount,
    sample_painted,
    unify_classes,
)
from ..training.train_head import fcn_settings_for
from .annotation import _apply_class_table, _store_to_head_lut, store_ids_for
from .class_presets import next_class

__all__ = ["SlidesTrainResult", "train_on_slides"]


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
        The class table to start from (a project's; default the head's classes); names of the
        slides' classes are matched to it, new names join it.
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
        FCN settings (``steps``, ``lr``, ...) of the fit: an FCN's, or an ensemble's FCN members'.

    Raises
    ------
    ValueError
        No slide has labels, or fewer than two classes are labelled over all slides.
    """
    from ..training.train_head import TrainSample, train_head

    t0 = time.perf_counter()
    yield Progress("labels", 0, len(slides), "reading the labels of every slide")
    if not classes and head is not None:  # names are matched to the head's classes
        classes = [ClassInfo(i, n, c) for i, n, c in zip(store_ids_for(head.class_ids), head.class_names,
                                                          head.class_colors)]
    table, luts = unify_classes(slides, classes, new_class=next_class)
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
    slide_of = {key: i for i, key in enumerate(dict.fromkeys(id(s) for s, _, _ in picked))}
    by_slide = len(slide_of) >= 2  # auto's folds then never score on a slide they trained on
    samples = [TrainSample(s.slide, lut[m], region, name=f"{s.name} at y={region.y}, x={region.x}",
                           group=slide_of[id(s)] if by_slide else None)
               for s, region, m in picked]
    auto = None
    if make_extractor is not None and candidates is not None and not fine_tune:
        from ..training.auto_select import WIDGET_BUDGET_S, auto_train

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
            **fcn_settings_for(kind, options), **class_kwargs)
    _apply_class_table(result.head, {c.id: c for c in table})
    return SlidesTrainResult(result, extractor, table, counts, fine_tune, note=getattr(auto, "note", ""),
                             auto=auto, seconds=time.perf_counter() - t0)
