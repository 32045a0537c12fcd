"""Where a whole-slide run works: the analysis level, its blocks, and which blocks hold tissue.

Blocks are squares of ``block`` pixels of the analysis level on a grid anchored at (0, 0), so
block ``(row, col)`` is exactly chunk ``(row, col)`` of a label array chunked by ``block``:
writing one block writes one chunk. Blocks at the right and bottom edges are cut by the level.

Tissue is found once per slide on a low-resolution level (at most :data:`TISSUE_MAX_SIDE`
pixels a side, subsampled when the coarsest level is larger), and a block counts as tissue
when any mask pixel under it is tissue.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...core.region import Region
from ...core.scale_plan import AnalysisPlan, ScaleError, check_mpp, plan_for_slide
from ...core.slide import Slide
from ...core.tissue import tissue_mask

#: The tissue mask is computed on at most this many pixels a side.
TISSUE_MAX_SIDE = 2048


class SlideFailed(Exception):
    """A slide that cannot be segmented as asked; the message is the reason, for the summary."""


@dataclass(frozen=True)
class Block:
    """One block of the analysis level: grid position and the pixels it covers."""

    row: int
    col: int
    region: Region

    @property
    def key(self) -> str:
        """A file-name-safe id, ``r<row>-c<col>``."""
        return f"r{self.row}-c{self.col}"

    @property
    def pixels(self) -> int:
        return self.region.height * self.region.width


def choose_level(
    slide: Slide, *, head_mpp: float | None, level: int | None = None, mpp: float | None = None
) -> AnalysisPlan:
    """The analysis plan of ``slide`` for a head analysing at ``head_mpp`` µm/px
    (:func:`~napari_pathsegdiff.core.scale_plan.plan_for_slide`, refusing an unknown µm/px).

    Parameters
    ----------
    slide : Slide
        The open slide (not changed).
    head_mpp : float or None
        µm/px the head was trained at (None: any scale, level 0 unless ``level``).
    level : int, optional
        Force this level (``--level N``).
    mpp : float, optional
        µm/px of level 0 when the file does not say, or to override it (``--mpp``).

    Raises
    ------
    SlideFailed
        The level does not exist, or the head needs a µm/px that neither the file nor
        ``mpp`` gives.
    """
    check_mpp(mpp, what="--mpp")
    try:
        return plan_for_slide(slide, target_mpp=head_mpp, level=level, mpp=mpp, require_mpp=True)
    except ScaleError as exc:
        raise SlideFailed(str(exc)) from exc


def plan_blocks(
    level_shape: tuple[int, int], *, level: int, block: int, within: Region | None = None
) -> list[Block]:
    """Blocks of a level of shape ``(height, width)``, row by row.

    Parameters
    ----------
    level_shape : (int, int)
        Height and width of the analysis level.
    level : int
        The level's index (recorded in each block's region).
    block : int
        Side of a block in pixels.
    within : Region, optional
        Keep only blocks overlapping this region of the level.

    Examples
    --------
    >>> [b.key for b in plan_blocks((300, 500), level=0, block=256)]
    ['r0-c0', 'r0-c1', 'r1-c0', 'r1-c1']
    >>> plan_blocks((300, 500), level=0, block=256)[-1].region
    Region(level=0, y=256, x=256, height=44, width=244)
    """
    if block < 1:
        raise ValueError(f"Block size must be a positive number of pixels, got {block}.")
    height, width = int(level_shape[0]), int(level_shape[1])
    rows, cols = range(math.ceil(height / block)), range(math.ceil(width / block))
    if within is not None:
        within = within.clip((height, width))
        rows = range(within.y // block, math.ceil(within.y1 / block))
        cols = range(within.x // block, math.ceil(within.x1 / block))
    blocks = []
    for r in rows:
        for c in cols:
            y, x = r * block, c * block
            blocks.append(Block(r, c, Region(level, y, x, min(block, height - y), min(block, width - x))))
    return blocks


@dataclass
class TissueMap:
    """A tissue mask of a slide and the geometry to look up any level's region in it.

    Attributes
    ----------
    mask : ndarray of bool
        Tissue pixels of ``slide.levels[level][::step, ::step]``.
    level, step : int
        Level the mask was computed on, and the subsampling step on it.
    downsample : (float, float)
        Level-0 pixels per mask pixel, ``(dy, dx)``.
    """

    mask: np.ndarray
    level: int
    step: int
    downsample: tuple[float, float]

    def fraction(self, region: Region, slide_downsamples) -> float:
        """Share of tissue in the mask pixels under ``region`` (of any level); 0 means none."""
        dy, dx = slide_downsamples[region.level]
        my, mx = self.downsample
        y0, x0 = math.floor(region.y * dy / my), math.floor(region.x * dx / mx)
        y1, x1 = math.ceil(region.y1 * dy / my), math.ceil(region.x1 * dx / mx)
        under = self.mask[max(0, y0) : max(y1, y0 + 1), max(0, x0) : max(x1, x0 + 1)]
        return float(under.mean()) if under.size else 0.0

    def area_mm2(self, level0_mpp: float | None) -> float | None:
        """Tissue area in mm² (None when the µm/px is unknown)."""
        if level0_mpp is None:
            return None
        pixel_um2 = (level0_mpp * self.downsample[0]) * (level0_mpp * self.downsample[1])
        return float(self.mask.sum()) * pixel_um2 / 1e6


def find_tissue(slide: Slide, *, max_side: int = TISSUE_MAX_SIDE) -> TissueMap:
    """Tissue mask of ``slide`` from its finest level that fits in ``max_side`` pixels.

    When even the coarsest level is larger, it is subsampled with a step; dask reads it chunk
    by chunk, so the memory used is about the size of the mask.
    """
    level = len(slide.levels) - 1
    for i, array in enumerate(slide.levels):
        if max(array.shape[:2]) <= max_side:
            level = i
            break
    array = slide.levels[level]
    step = max(1, math.ceil(max(array.shape[:2]) / max_side))
    rgb = array[::step, ::step].compute(scheduler="threads")
    mask = tissue_mask(rgb)
    dy, dx = slide.downsamples[level]
    downsample = (float(dy) * step, float(dx) * step)
    return TissueMap(mask=mask, level=level, step=step, downsample=downsample)
