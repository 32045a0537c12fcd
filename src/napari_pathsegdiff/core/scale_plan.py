"""The analysis scale, decided in one place: which pyramid level, at which µm/px, resampled how.

Every path that turns slide pixels into features — the widget's session, head training,
``predict`` and the batch block plan — asks this module and nothing else:

- :func:`plan_for_slide` picks the level for a model's µm/px (the coarsest level no coarser
  than it, within :data:`MPP_TOLERANCE`), or takes the level given;
- :func:`plan_at_level` plans a level already chosen (a region to predict, a training tile).

Both return an :class:`AnalysisPlan`: the level, its µm/px, the model's µm/px, the resampling
``scale`` and the notes a summary should show. A level-0 µm/px a person gives (``--mpp``, the
widget's field) is an argument here, never written into the slide.

Examples
--------
>>> import numpy as np
>>> from napari_pathsegdiff.core.slide import Slide
>>> slide = Slide.from_array(np.zeros((64, 64, 3), np.uint8), mpp=0.25)
>>> plan = plan_at_level(slide, 0, target_mpp=0.5)
>>> plan.scale, plan.analysis_mpp, plan.resampled
(2.0, 0.5, True)
>>> plan_at_level(slide, 0, target_mpp=0.26).scale  # within 5 %: no resampling
1.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .slide import MPP_TOLERANCE, Slide

__all__ = [
    "MPP_TOLERANCE",
    "AnalysisPlan",
    "ScaleError",
    "plan_at_level",
    "plan_for_slide",
    "plan_for_labels",
    "DEFAULT_ANALYSIS_MPP",
    "level_mpp",
    "resample_scale",
    "check_mpp",
]


DEFAULT_ANALYSIS_MPP = 0.5
"""µm/px of a label store when neither a head nor the features fix one (about 20x)."""


class ScaleError(ValueError):
    """No analysis scale can be planned as asked; the message says what to give."""


@dataclass(frozen=True)
class AnalysisPlan:
    """Where and at which scale a slide is analysed.

    Attributes
    ----------
    level : int
        The pyramid level read.
    level_mpp : float or None
        µm/px of that level (from the file, or from the level-0 µm/px given); None if unknown.
    target_mpp : float or None
        µm/px the model analyses at; None when it fixes none (the level's pixels are used).
    slide_mpp : float or None
        The level-0 µm/px used (given or from the file).
    mpp_source : str or None
        Where ``slide_mpp`` comes from (the file's tag, or ``"given (...)"``).
    notes : tuple of str
        What a summary should say about the scale (resampling, an unknown µm/px).
    """

    level: int
    level_mpp: float | None
    target_mpp: float | None
    slide_mpp: float | None = None
    mpp_source: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def scale(self) -> float:
        """Level pixels per analysis pixel (1 when within :data:`MPP_TOLERANCE` or unknown)."""
        return resample_scale(self.level_mpp, self.target_mpp)

    @property
    def resampled(self) -> bool:
        """Whether tiles are resampled to the model's µm/px (and labels back)."""
        return self.scale != 1.0

    @property
    def analysis_mpp(self) -> float | None:
        """µm/px of the pixels the model sees."""
        return self.target_mpp if self.resampled else (self.level_mpp or self.target_mpp)


def check_mpp(mpp: float | None, *, what: str = "µm/px") -> float | None:
    """``mpp`` as a float, or None; a clear error for zero, negative or non-finite values."""
    if mpp is None:
        return None
    value = float(mpp)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{what} must be a positive number of µm per pixel, got {mpp!r}.")
    return value


def level_mpp(slide: Slide, level: int, mpp: float | None = None) -> float | None:
    """µm/px of ``level``: from ``mpp`` (level 0, given by a person) or from the slide's file."""
    given = check_mpp(mpp)
    if given is None:
        return slide.level_mpp(level)
    dy, dx = slide.downsamples[level]
    return given * (dy + dx) / 2.0


def resample_scale(level_mpp: float | None, target_mpp: float | None) -> float:
    """Source pixels per analysis pixel, ``target / level``; 1 within the tolerance or unknown."""
    if level_mpp is None or target_mpp is None:
        return 1.0
    scale = float(target_mpp) / float(level_mpp)
    return 1.0 if abs(scale - 1.0) <= MPP_TOLERANCE else scale


def plan_at_level(slide: Slide, level: int, *, target_mpp: float | None,
                  mpp: float | None = None, given_as: str = "given (--mpp)") -> AnalysisPlan:
    """The plan for analysing ``level`` of ``slide`` for a model at ``target_mpp``.

    Parameters
    ----------
    slide : Slide
    level : int
        The level read.
    target_mpp : float or None
        The model's µm/px (None: the level's pixels as they are).
    mpp : float, optional
        Level-0 µm/px given by a person (the file records none, or it is overridden).
    given_as : str
        How the plan's ``mpp_source`` names a given ``mpp``.
    """
    n = len(slide.levels)
    if not 0 <= level < n:
        raise ScaleError(f"level {level} does not exist: the slide has levels 0..{n - 1}")
    slide_mpp = check_mpp(mpp) if mpp is not None else slide.mpp
    source = given_as if mpp is not None else slide.metadata.get("mpp_source")
    at = level_mpp(slide, level, mpp)
    notes = []
    if target_mpp is not None and at is None:
        notes.append(f"µm/px unknown: level {level} analysed as if it were {target_mpp:g} µm/px "
                     "(give the slide's µm/px to resample)")
    elif resample_scale(at, target_mpp) != 1.0:
        notes.append(f"level {level} is {at:.4g} µm/px and the head {target_mpp:.4g} µm/px: tiles "
                     "are resampled to the head's µm/px and the labels back to the level's pixels")
    return AnalysisPlan(level, at, None if target_mpp is None else float(target_mpp),
                        slide_mpp, source, tuple(notes))


def plan_for_slide(slide: Slide, *, target_mpp: float | None, level: int | None = None,
                   mpp: float | None = None, require_mpp: bool = False) -> AnalysisPlan:
    """The plan for analysing ``slide`` for a model at ``target_mpp``, choosing the level.

    The level is ``level`` when given, else the coarsest no coarser than ``target_mpp``
    (within :data:`MPP_TOLERANCE`), else 0 (no ``target_mpp``, or an unknown µm/px).

    Parameters
    ----------
    slide : Slide
    target_mpp : float or None
        The model's µm/px.
    level : int, optional
        Force this level.
    mpp : float, optional
        Level-0 µm/px given by a person.
    require_mpp : bool
        Refuse (:class:`ScaleError`) when the model has a µm/px and the slide's is unknown
        and not given, instead of analysing level 0 as if it matched.
    """
    slide_mpp = check_mpp(mpp) if mpp is not None else slide.mpp
    if level is None:
        if target_mpp is None:
            level = 0
        elif slide_mpp is None:
            if require_mpp:
                raise ScaleError(
                    f"the µm/px of the slide is unknown and the head analyses at {target_mpp:g} "
                    "µm/px: give the slide's level-0 µm/px (--mpp)")
            level = 0
        else:
            level = best_level(slide, target_mpp, slide_mpp)
    return plan_at_level(slide, int(level), target_mpp=target_mpp, mpp=mpp)


def plan_for_labels(slide: Slide, *mpps: float | None, mpp: float | None = None) -> AnalysisPlan:
    """The plan of a slide's label store (the widget's session, labels imported for training):
    at the first µm/px known among ``mpps`` (an analysis µm/px asked for, the head's, the
    features'), else :data:`DEFAULT_ANALYSIS_MPP`; level 0 when the slide's µm/px is unknown."""
    target = next((float(m) for m in mpps if m is not None), DEFAULT_ANALYSIS_MPP)
    return plan_for_slide(slide, target_mpp=target, mpp=mpp)


def best_level(slide: Slide, target_mpp: float, slide_mpp: float) -> int:
    """The coarsest level whose µm/px (from ``slide_mpp``) is at most ``target_mpp`` within
    the tolerance; level 0 when every level is coarser."""
    target = check_mpp(target_mpp, what="the model's µm/px")
    best = 0
    for level, (dy, dx) in enumerate(slide.downsamples):
        if slide_mpp * (dy + dx) / 2.0 <= target * (1 + MPP_TOLERANCE):
            best = level
    return best
