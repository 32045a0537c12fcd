"""Regions of a slide pyramid, and the only place where (x, y) and (y, x) meet.

Inside the project every coordinate is (y, x), like numpy, dask and napari. OpenSlide-style
APIs and GeoJSON speak (x, y) and level-0 locations: convert at the edge with
:meth:`Region.from_xywh` / :meth:`Region.to_xywh` and :func:`yx_to_xy`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

Downsample = tuple[float, float]  # (dy, dx): level-0 pixels per pixel of a level


@dataclass(frozen=True)
class Region:
    """A rectangle of pixels at one pyramid level, in (y, x) order.

    Parameters
    ----------
    level : int
        Pyramid level the coordinates refer to (0 is full resolution).
    y, x : int
        Top-left corner, in pixels of ``level``.
    height, width : int
        Size in pixels of ``level``.

    Examples
    --------
    >>> r = Region(level=1, y=10, x=20, height=100, width=50)
    >>> r.to_level(0, [(1.0, 1.0), (4.0, 4.0)])
    Region(level=0, y=40, x=80, height=400, width=200)
    """

    level: int
    y: int
    x: int
    height: int
    width: int

    def __post_init__(self):
        if self.level < 0:
            raise ValueError(f"Region level must be >= 0, got {self.level}.")
        if self.height <= 0 or self.width <= 0:
            raise ValueError(
                f"Region must have a positive size, got height={self.height}, width={self.width}."
            )

    # --- numpy / dask access -------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """(height, width)."""
        return (self.height, self.width)

    @property
    def slices(self) -> tuple[slice, slice]:
        """(y-slice, x-slice) for indexing an array of this level."""
        return (slice(self.y, self.y + self.height), slice(self.x, self.x + self.width))

    @property
    def y1(self) -> int:
        """Exclusive bottom edge."""
        return self.y + self.height

    @property
    def x1(self) -> int:
        """Exclusive right edge."""
        return self.x + self.width

    # --- level conversion ----------------------------------------------------------------
    def to_level(self, level: int, downsamples: Sequence[Downsample]) -> "Region":
        """The same area expressed at another pyramid ``level``.

        The result covers the whole area: the start is floored and the end is ceiled, so a
        region never shrinks when it changes level.
        """
        if level == self.level:
            return self
        src_dy, src_dx = _downsample(downsamples, self.level)
        dst_dy, dst_dx = _downsample(downsamples, level)
        fy, fx = src_dy / dst_dy, src_dx / dst_dx
        y0, x0 = math.floor(self.y * fy + 1e-9), math.floor(self.x * fx + 1e-9)
        y1, x1 = math.ceil(self.y1 * fy - 1e-9), math.ceil(self.x1 * fx - 1e-9)
        return Region(level, y0, x0, max(1, y1 - y0), max(1, x1 - x0))

    def clip(self, level_shape: tuple[int, int]) -> "Region":
        """Intersect with a level of shape ``(height, width)``; raises if nothing is left."""
        h, w = int(level_shape[0]), int(level_shape[1])
        y0, x0 = max(0, self.y), max(0, self.x)
        y1, x1 = min(h, self.y1), min(w, self.x1)
        if y1 <= y0 or x1 <= x0:
            raise ValueError(
                f"{self} lies outside the level of shape {(h, w)}: nothing to read."
            )
        return replace(self, y=y0, x=x0, height=y1 - y0, width=x1 - x0)

    def grow(self, margin: int) -> "Region":
        """A region ``margin`` pixels larger on every side (may extend past the level)."""
        return replace(
            self,
            y=self.y - margin,
            x=self.x - margin,
            height=self.height + 2 * margin,
            width=self.width + 2 * margin,
        )

    # --- the (x, y) edge -----------------------------------------------------------------
    @classmethod
    def from_xywh(cls, x: int, y: int, width: int, height: int, level: int = 0) -> "Region":
        """Build from OpenSlide-style ``(x, y, width, height)``."""
        return cls(level=level, y=int(y), x=int(x), height=int(height), width=int(width))

    def to_xywh(self) -> tuple[int, int, int, int]:
        """OpenSlide-style ``(x, y, width, height)`` at this region's level."""
        return (self.x, self.y, self.width, self.height)


def _downsample(downsamples: Sequence[Downsample], level: int) -> Downsample:
    if not 0 <= level < len(downsamples):
        raise ValueError(
            f"Pyramid level {level} does not exist: the slide has levels 0..{len(downsamples) - 1}."
        )
    d = downsamples[level]
    return (float(d[0]), float(d[1]))


def downsamples_from_shapes(shapes: Sequence[tuple[int, ...]]) -> list[Downsample]:
    """Per-level (dy, dx) downsample factors from level shapes ``(h, w, ...)``."""
    h0, w0 = shapes[0][0], shapes[0][1]
    return [(h0 / s[0], w0 / s[1]) for s in shapes]


def yx_to_xy(points: np.ndarray) -> np.ndarray:
    """Swap the last axis of an ``(..., 2)`` array between (y, x) and (x, y)."""
    points = np.asarray(points)
    if points.shape[-1] != 2:
        raise ValueError(f"Expected points with a last axis of 2, got shape {points.shape}.")
    return points[..., ::-1]


xy_to_yx = yx_to_xy
