"""Shared steps of prediction and training: sources, the tile grid, and tile features via the cache.

The analysis scale itself is planned in :mod:`~napari_pathsegdiff.core.scale_plan`.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from ...core.feature_cache import FeatureCache, feature_key
from ...core.region import Region
from ...core.slide import Slide
from ...core.tiling import Box, Tile, TileGrid

#: Share of the halo over which predictions of neighbouring tiles are blended (the outer
#: rest, whose features see the tile's border, is dropped). On the bundled sample with the
#: demo head, half the halo brings label changes on the tile grid to the rate elsewhere
#: (BENCHMARKS.md, "Seamless tiles").
BLEND_SHARE = 0.5


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


def prediction_grid(extractor, scale: float, *, blend: int | None = None) -> TileGrid:
    """The grid that predictions use: :func:`make_grid` with neighbouring tiles blended.

    ``blend`` overrides the width (pixels of the halo each side; 0 pastes cores side by side);
    the default is :data:`BLEND_SHARE` of the halo.
    """
    grid = make_grid(extractor, scale)
    if blend is None:
        blend = min(int(grid.halo * BLEND_SHARE), grid.tile // 2)
    return TileGrid(tile=grid.tile, halo=grid.halo, scale=grid.scale, blend=int(blend))


def prediction_tiles(grid: TileGrid, slide: Slide, region: Region) -> tuple[Box, list[Tile]]:
    """The analysis box of ``region`` and every tile whose prediction reaches it.

    Tiles beyond the level's border are left out, so the set depends only on the slide and
    each pixel's position: a region's prediction is the crop of any larger one.
    """
    box = grid.analysis_box(region)
    extent = grid.analysis_box(whole_level(slide, region.level))
    return box, grid.tiles(box, extent=extent)


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
