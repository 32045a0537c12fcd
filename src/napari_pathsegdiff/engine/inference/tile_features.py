"""Shared steps of prediction and training: sources, the tile grid, and tile features via the cache.

The analysis scale itself is planned in :mod:`~napari_pathsegdiff.core.scale_plan`.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from ...core.feature_cache import FeatureCache, feature_key
from ...core.region import Region
from ...core.slide import Slide
from ...core.tiling import Tile, TileGrid

def as_slide(source, *, mpp: float | None = None) -> Slide:
    """A :class:`Slide` for ``source`` (a slide, or an RGB/RGBA array wrapped as one)."""
    if isinstance(source, Slide):
        return source
    return Slide.from_array(source, mpp=mpp)


def whole_level(slide: Slide, level: int = 0) -> Region:
    """The region covering all of ``level``."""
    h, w = slide.levels[level].shape[:2]
    return Region(level, 0, 0, int(h), int(w))


def make_grid(extractor, scale: float) -> TileGrid:
    """The extractor's tile grid at ``scale``; checks that tiles fit its size multiple."""
    grid = TileGrid(tile=int(extractor.tile_size), halo=int(extractor.halo), scale=scale)
    if grid.outer_size % extractor.multiple:
        raise ValueError(
            f"{extractor.kind} features need tiles whose side is a multiple of "
            f"{extractor.multiple}; tile {grid.tile} with halo {grid.halo} gives {grid.outer_size}."
        )
    return grid


def iter_tile_features(
    slide: Slide,
    level: int,
    grid: TileGrid,
    tiles: list[Tile],
    extractor,
    *,
    cache: FeatureCache | None = None,
    batch_size: int = 4,
) -> Iterator[list[tuple[Tile, list[np.ndarray]]]]:
    """Features of ``tiles`` in batches: ``[(tile, [map (C_i, h_i, w_i) float16, ...]), ...]``.

    Cached tiles are taken from ``cache``; the others are read, extracted in one batch and
    stored. The extractor runs only on tiles missing from the cache.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    identity = extractor.identity
    for start in range(0, len(tiles), batch_size):
        batch = tiles[start : start + batch_size]
        keys = [
            feature_key(source=slide.identity, level=level, scale=grid.scale, tile_size=grid.tile,
                        halo=grid.halo, row=t.row, col=t.col, extractor=identity)
            for t in batch
        ]
        feats: list[list[np.ndarray] | None] = [cache.get(k) if cache is not None else None for k in keys]
        missing = [i for i, f in enumerate(feats) if f is None]
        if missing:
            pixels = np.stack([grid.read_tile(slide, level, batch[i]) for i in missing])
            maps = extractor.extract(pixels)
            for j, i in enumerate(missing):
                value = [np.ascontiguousarray(m[j]) for m in maps]
                if cache is not None:
                    cache.put(keys[i], value)
                feats[i] = value
        yield list(zip(batch, feats))
