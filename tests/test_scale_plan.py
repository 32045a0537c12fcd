"""One analysis-scale plan: the level, its µm/px, the resampling and the notes, decided once."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from napari_pathsegdiff.core.scale_plan import (
    MPP_TOLERANCE,
    ScaleError,
    plan_at_level,
    plan_for_slide,
)
from napari_pathsegdiff.core.slide import Slide


def _pyramid(mpp: float | None) -> Slide:
    """Three levels, downsamples 1, 2, 4."""
    levels = [da.zeros((400 // d, 600 // d, 3), dtype=np.uint8, chunks=64) for d in (1, 2, 4)]
    return Slide(path=None, levels=levels, downsamples=[(1.0, 1.0), (2.0, 2.0), (4.0, 4.0)], mpp=mpp,
                 metadata={"mpp_source": "aperio MPP"} if mpp else {})


@pytest.mark.parametrize("target, level, scale", [
    (0.25, 0, 1.0), (0.5, 1, 1.0), (0.52, 1, 1.04), (0.98, 2, 1.0), (2.0, 2, 2.0), (0.1, 0, 0.4),
])
def test_the_coarsest_level_no_coarser_than_the_model(target, level, scale):
    plan = plan_for_slide(_pyramid(0.25), target_mpp=target)
    assert plan.level == level
    assert plan.scale == pytest.approx(1.0 if abs(scale - 1) <= MPP_TOLERANCE else scale)
    assert plan.analysis_mpp == pytest.approx(target if plan.resampled else 0.25 * 2 ** level)
    assert plan.mpp_source == "aperio MPP" and plan.slide_mpp == 0.25
    assert plan.notes == (() if not plan.resampled else (plan.notes[0],))
    if plan.resampled:
        assert plan.notes[0].startswith(f"level {level} is ") and "resampled" in plan.notes[0]


def test_a_given_mpp_plans_without_changing_the_slide():
    slide = _pyramid(None)
    plan = plan_for_slide(slide, target_mpp=1.0, mpp=0.25)
    assert (plan.level, plan.level_mpp, plan.slide_mpp, plan.mpp_source) == (2, 1.0, 0.25, "given (--mpp)")
    assert slide.mpp is None and "mpp_source" not in slide.metadata


def test_an_unknown_mpp_is_refused_or_planned_at_level_0_with_a_note():
    slide = _pyramid(None)
    with pytest.raises(ScaleError, match=r"µm/px of the slide is unknown and the head analyses at 0\.5"):
        plan_for_slide(slide, target_mpp=0.5, require_mpp=True)
    plan = plan_for_slide(slide, target_mpp=0.5)
    assert (plan.level, plan.scale, plan.analysis_mpp) == (0, 1.0, 0.5)
    assert plan.notes == ("µm/px unknown: level 0 analysed as if it were 0.5 µm/px "
                          "(give the slide's µm/px to resample)",)
    assert plan_for_slide(slide, target_mpp=None).notes == ()


def test_bad_levels_and_values_are_named():
    slide = _pyramid(0.25)
    with pytest.raises(ScaleError, match=r"level 3 does not exist: the slide has levels 0\.\.2"):
        plan_at_level(slide, 3, target_mpp=0.5)
    with pytest.raises(ValueError, match=r"µm/px must be a positive number of µm per pixel, got -1"):
        plan_at_level(slide, 0, target_mpp=0.5, mpp=-1)
    with pytest.raises(ValueError, match=r"model's µm/px must be a positive number.*got 0"):
        plan_for_slide(slide, target_mpp=0)


def test_with_mpp_is_a_copy_sharing_the_pyramid():
    slide = _pyramid(None)
    given = slide.with_mpp(0.5, "given (kept in the session)")
    assert given is not slide and slide.mpp is None and given.mpp == 0.5
    assert given.levels is slide.levels and given.identity == slide.identity
    assert given.metadata["mpp_source"] == "given (kept in the session)" and slide.metadata == {}
    assert given.level_mpp(2) == 2.0
