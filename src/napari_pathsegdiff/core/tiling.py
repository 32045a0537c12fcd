"""Tile grids anchored to absolute pixel coordinates: read tiles with a halo, stitch their cores.

A region of a pyramid level (or of an in-memory image) is analysed on an *analysis grid*: the
level's pixels, resampled by ``scale`` (source pixels per analysis pixel; ``1.0`` means no
resampling, e.g. when the image is already at the model's µm/px). The centre of analysis pixel
``(Y, X)`` lies at source coordinates ``((Y + 0.5) * scale - 0.5, (X + 0.5) * scale - 0.5)``.

Tiles are squares of ``tile`` analysis pixels whose corners are multiples of ``tile`` in
*absolute* analysis coordinates, and each is read with ``halo`` pixels of context taken from the
image itself (padded only beyond the image border). A tile's pixels, hence its features and its
prediction, depend only on its position, never on the region that asked for it: the prediction of
a region is exactly the crop of the prediction of any larger region.

Neighbouring tiles see different context, so their predictions disagree a little at the
shared edge; pasted side by side they leave seams on the grid. With ``blend > 0`` each tile's
prediction reaches ``blend`` pixels into its halo and neighbours are averaged with a cosine
window (:func:`blend_window`, as in MONAI's sliding-window inference): the weights of two
neighbours sum to one across the ``2 * blend`` pixels around their common edge, and the
outermost ``halo - blend`` pixels of a tile, whose features see the tile border, are never
used. :class:`Blender` accumulates the weighted tiles.

Examples
--------
>>> from napari_pathsegdiff.core.region import Region
>>> grid = TileGrid(tile=256, halo=32)
>>> box = grid.analysis_box(Region(level=0, y=100, x=300, height=200, width=100))
>>> [(t.row, t.col) for t in grid.tiles(box)]
[(0, 1), (1, 1)]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .region import Region

#: Pixel value of the image outside its border (white glass, like the slide readers pad).
PAD_VALUE = 255


@dataclass(frozen=True)
class Box:
    """A half-open rectangle ``[y0, y1) x [x0, x1)`` in absolute analysis coordinates."""

    y0: int
    x0: int
    y1: int
    x1: int

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width)."""
        return (self.y1 - self.y0, self.x1 - self.x0)

    def intersect(self, other: "Box") -> "Box | None":
        """The common part of two boxes, or ``None`` when they do not overlap."""
        y0, x0 = max(self.y0, other.y0), max(self.x0, other.x0)
        y1, x1 = min(self.y1, other.y1), min(self.x1, other.x1)
        if y1 <= y0 or x1 <= x0:
            return None
        return Box(y0, x0, y1, x1)

    def slices_in(self, outer: "Box") -> tuple[slice, slice]:
        """Slices selecting this box inside an array that covers ``outer``."""
        return (
            slice(self.y0 - outer.y0, self.y1 - outer.y0),
            slice(self.x0 - outer.x0, self.x1 - outer.x0),
        )


@dataclass(frozen=True)
class Tile:
    """One tile of a grid: its ``core`` (the pixels it predicts) and the ``outer`` box it reads."""

    row: int
    col: int
    core: Box
    outer: Box


@dataclass(frozen=True)
class TileGrid:
    """A grid of square tiles with a halo, on a level resampled by ``scale``.

    Parameters
    ----------
    tile : int
        Side of a tile's core in analysis pixels.
    halo : int
        Context read on every side of the core (cropped after prediction).
    scale : float
        Source pixels per analysis pixel (``analysis µm/px / source µm/px``); 1.0 for none.
    blend : int
        Pixels of the halo on every side over which a tile's prediction is blended with its
        neighbour's (0: cores pasted side by side). At most ``halo`` and ``tile // 2``.
    """

    tile: int
    halo: int
    scale: float = 1.0
    blend: int = 0

    def __post_init__(self):
        if self.tile <= 0:
            raise ValueError(f"Tile size must be positive, got {self.tile}.")
        if self.halo < 0:
            raise ValueError(f"Tile halo must be >= 0, got {self.halo}.")
        if not (self.scale > 0 and math.isfinite(self.scale)):
            raise ValueError(f"Resampling scale must be a positive number, got {self.scale}.")
        if not 0 <= self.blend <= min(self.halo, self.tile // 2):
            raise ValueError(
                f"Blend width must be between 0 and the halo ({self.halo}) and half the tile "
                f"({self.tile // 2}), got {self.blend}."
            )

    @property
    def outer_size(self) -> int:
        """Side of a tile as read, core plus halo on both sides."""
        return self.tile + 2 * self.halo

    @property
    def resampled(self) -> bool:
        """Whether analysis pixels differ from source pixels."""
        return self.scale != 1.0

    # --- geometry -------------------------------------------------------------------------
    def analysis_box(self, region: Region) -> Box:
        """Analysis pixels needed to predict every pixel of ``region`` (source coordinates).

        Without resampling this is the region itself; with it, the box also holds the
        neighbours that linear interpolation back to the source grid reads.
        """
        if not self.resampled:
            return Box(region.y, region.x, region.y1, region.x1)
        y0, y1 = self._axis_span(region.y, region.y1)
        x0, x1 = self._axis_span(region.x, region.x1)
        return Box(y0, x0, y1, x1)

    def _axis_span(self, start: int, stop: int) -> tuple[int, int]:
        first = math.floor((start + 0.5) / self.scale - 0.5)
        last = math.floor((stop - 1 + 0.5) / self.scale - 0.5) + 1
        return first, last + 1

    def tile_at(self, row: int, col: int) -> Tile:
        """The tile in grid ``row`` and ``col`` (absolute: row 0 starts at analysis y = 0)."""
        y0, x0 = row * self.tile, col * self.tile
        core = Box(y0, x0, y0 + self.tile, x0 + self.tile)
        h = self.halo
        return Tile(row, col, core, Box(y0 - h, x0 - h, core.y1 + h, core.x1 + h))

    def support(self, tile: Tile) -> Box:
        """Pixels to which ``tile``'s prediction contributes: its core plus ``blend`` each side."""
        b, c = self.blend, tile.core
        return Box(c.y0 - b, c.x0 - b, c.y1 + b, c.x1 + b)

    def tiles(self, box: Box, *, extent: Box | None = None) -> list[Tile]:
        """Tiles whose predictions reach ``box`` (their :meth:`support`), row by row.

        With ``extent`` (the analysis box of the whole image), tiles that only blend into
        ``box`` from beyond the image are left out: they would see only padding. Without
        blending, these are the tiles whose cores overlap ``box``.
        """
        b = self.blend
        rows = range((box.y0 - b) // self.tile, -(-(box.y1 + b) // self.tile))
        cols = range((box.x0 - b) // self.tile, -(-(box.x1 + b) // self.tile))
        tiles = [self.tile_at(r, c) for r in rows for c in cols]
        if extent is not None:
            tiles = [t for t in tiles if t.core.intersect(box) or t.core.intersect(extent)]
        return tiles

    # --- pixels ---------------------------------------------------------------------------
    def read_tile(self, source, level: int, tile: Tile) -> np.ndarray:
        """RGB pixels of ``tile.outer``, shape ``(outer_size, outer_size, 3)`` uint8.

        ``source`` is anything with ``read_region(Region) -> (h, w, 3) uint8`` that pads
        outside the image with 255 (a :class:`~napari_pathsegdiff.core.slide.Slide`).
        Resampled tiles are low-pass filtered before linear interpolation when shrinking,
        like :func:`skimage.transform.resize` with ``anti_aliasing``.
        """
        o = tile.outer
        if not self.resampled:
            return np.asarray(source.read_region(Region(level, o.y0, o.x0, *o.shape)))
        sy, sx = self._source_coords(o.y0, o.y1), self._source_coords(o.x0, o.x1)
        sigma = max(0.0, (self.scale - 1.0) / 2.0)
        margin = int(math.ceil(4 * sigma)) + 2
        wy0, wx0 = int(math.floor(sy[0])) - margin, int(math.floor(sx[0])) - margin
        wy1, wx1 = int(math.ceil(sy[-1])) + margin + 1, int(math.ceil(sx[-1])) + margin + 1
        window = np.asarray(
            source.read_region(Region(level, wy0, wx0, wy1 - wy0, wx1 - wx0)), dtype=np.float32
        )
        if sigma > 0:
            from scipy.ndimage import gaussian_filter

            window = gaussian_filter(window, sigma=(sigma, sigma, 0), mode="nearest", truncate=4.0)
        out = interpolate_axis(window, sy - wy0, axis=0)
        out = interpolate_axis(out, sx - wx0, axis=1)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)

    def _source_coords(self, a0: int, a1: int) -> np.ndarray:
        return (np.arange(a0, a1, dtype=np.float64) + 0.5) * self.scale - 0.5

    def to_source(self, values: np.ndarray, box: Box, region: Region) -> np.ndarray:
        """Resample ``values`` ``(C, *box.shape)`` on the analysis grid to ``region``'s pixels.

        Linear interpolation (class probabilities); returns ``(C, region.height,
        region.width)``. Without resampling ``box`` is the region and ``values`` is returned.
        """
        if not self.resampled:
            return values
        ay = (np.arange(region.y, region.y1) + 0.5) / self.scale - 0.5 - box.y0
        ax = (np.arange(region.x, region.x1) + 0.5) / self.scale - 0.5 - box.x0
        out = interpolate_axis(values, ay, axis=1)
        return interpolate_axis(out, ax, axis=2)

    def labels_to_analysis(
        self, labels: np.ndarray, region: Region, box: Box, *, fill: int
    ) -> np.ndarray:
        """Labels given on ``region``'s pixels, on the analysis pixels of ``box`` (nearest).

        Analysis pixels whose nearest source pixel lies outside the region get ``fill``.
        """
        labels = np.asarray(labels)
        if labels.shape != region.shape:
            raise ValueError(f"Labels of shape {labels.shape} do not match {region}.")
        iy = np.floor((np.arange(box.y0, box.y1) + 0.5) * self.scale).astype(np.int64) - region.y
        ix = np.floor((np.arange(box.x0, box.x1) + 0.5) * self.scale).astype(np.int64) - region.x
        vy, vx = (iy >= 0) & (iy < region.height), (ix >= 0) & (ix < region.width)
        out = np.full(box.shape, fill, dtype=np.int64)
        out[np.ix_(vy, vx)] = labels[np.ix_(iy[vy], ix[vx])]
        return out


def interpolate_axis(values: np.ndarray, coords: np.ndarray, *, axis: int) -> np.ndarray:
    """Linear interpolation of ``values`` along ``axis`` at fractional ``coords``.

    Coordinates are clamped to the array (edge values repeat), so the result never reads
    outside ``values``.
    """
    n = values.shape[axis]
    coords = np.clip(np.asarray(coords, dtype=np.float64), 0, n - 1)
    lo = np.floor(coords).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    w = (coords - lo).astype(np.float32)
    shape = [1] * values.ndim
    shape[axis] = -1
    w = w.reshape(shape)
    a = np.take(values, lo, axis=axis).astype(np.float32, copy=False)
    b = np.take(values, hi, axis=axis).astype(np.float32, copy=False)
    return a + (b - a) * w


def blend_window(tile: int, halo: int, blend: int) -> np.ndarray:
    """Per-pixel weights ``(tile + 2 halo,)`` of one axis of a tile's prediction.

    0 in the outer ``halo - blend`` pixels, 1 in the core away from its edges, and a
    ``sin²`` ramp across the ``2 * blend`` pixels centred on each core edge, so that the
    ramps of two neighbours sum to exactly one. The 2-D window is the outer product.

    Examples
    --------
    >>> w = blend_window(4, 2, 1)
    >>> [round(float(v), 3) for v in w]
    [0.0, 0.146, 0.854, 1.0, 1.0, 0.854, 0.146, 0.0]
    >>> float(w[1] + w[5])  # the neighbour's ramp over the same pixel
    1.0
    """
    u = np.arange(tile + 2 * halo, dtype=np.float64) + 0.5
    if blend == 0:
        return ((u > halo) & (u < halo + tile)).astype(np.float32)
    up = np.clip((u - (halo - blend)) / (2 * blend), 0.0, 1.0)
    down = np.clip((halo + tile + blend - u) / (2 * blend), 0.0, 1.0)
    return (np.sin(np.pi / 2 * np.minimum(up, down)) ** 2).astype(np.float32)


class Blender:
    """Weighted mean of overlapping per-tile arrays ``(C, outer, outer)`` over ``box``.

    Every tile of ``grid.tiles(box)`` is added once, in any order; :meth:`result` divides by
    the sum of weights, which is one wherever all neighbours were added and stays right at
    an image border where tiles beyond it were left out.
    """

    def __init__(self, grid: TileGrid, box: Box, channels: int):
        self.grid, self.box = grid, box
        w = blend_window(grid.tile, grid.halo, grid.blend)
        self._window = np.outer(w, w)
        self._sum = np.zeros((channels, *box.shape), dtype=np.float32)
        self._weight = np.zeros(box.shape, dtype=np.float32)

    def add(self, tile: Tile, values: np.ndarray) -> None:
        """Add ``values`` covering ``tile.outer``, weighted by the blend window."""
        part = self.grid.support(tile).intersect(self.box)
        if part is None:
            return
        inside, inner = part.slices_in(self.box), part.slices_in(tile.outer)
        w = self._window[inner]
        self._sum[(slice(None), *inside)] += np.asarray(values[(slice(None), *inner)], np.float32) * w
        self._weight[inside] += w

    def result(self) -> np.ndarray:
        """The blended values ``(C, *box.shape)`` float32 (call once: divides in place)."""
        if not (self._weight > 0).all():
            raise ValueError("Some pixels of the box were covered by no tile: add every tile of grid.tiles(box).")
        self._sum /= self._weight
        return self._sum


class Stitcher:
    """Assemble per-tile arrays ``(C, outer, outer)`` into one array over ``box``.

    Each tile contributes the part of its core that lies in ``box``; the halo is dropped.
    """

    def __init__(self, box: Box, channels: int, *, dtype=np.float32):
        self.box = box
        self.values = np.zeros((channels, *box.shape), dtype=dtype)
        self._filled = 0

    def add(self, tile: Tile, values: np.ndarray) -> None:
        """Paste the core of ``values`` (covering ``tile.outer``) into the result."""
        part = tile.core.intersect(self.box)
        if part is None:
            return
        self.values[(slice(None), *part.slices_in(self.box))] = values[
            (slice(None), *part.slices_in(tile.outer))
        ]
        self._filled += part.shape[0] * part.shape[1]

    @property
    def complete(self) -> bool:
        """Whether every pixel of the box has been written (tiles never overlap)."""
        return self._filled == self.box.shape[0] * self.box.shape[1]
