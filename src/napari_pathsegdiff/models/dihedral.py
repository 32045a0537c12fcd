"""Dihedral test-time augmentation: the 8 flips and 90° rotations of a square tile.

:class:`DihedralView` is an extractor that reads the features of a transformed tile (maps in
the transformed orientation); the engine predicts on them and brings the probabilities back
with :func:`untransform`. Averaging over transforms is what peers call TTA.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .features_base import FeatureExtractor

#: (quarter turns, mirrored) of each transform; the first ``n`` form a group for n = 1, 2, 4, 8
#: (identity; + horizontal flip; + rotation by 180° and vertical flip; + the quarter turns).
TRANSFORMS = ((0, False), (0, True), (2, False), (2, True), (1, False), (1, True), (3, False), (3, True))
TTA_CHOICES = (1, 2, 4, 8)


def transforms(n: int) -> tuple[tuple[int, bool], ...]:
    """The first ``n`` transforms; ``n`` must be 1, 2, 4 or 8."""
    if n not in TTA_CHOICES:
        raise ValueError(f"Test-time augmentation takes 1, 2, 4 or 8 transforms, got {n}.")
    return TRANSFORMS[:n]


def transform(a, turns: int, mirrored: bool):
    """Apply a transform to the last two axes of a numpy array or torch tensor (mirror, then turn)."""
    if isinstance(a, np.ndarray):
        if mirrored:
            a = a[..., ::-1]
        return np.ascontiguousarray(np.rot90(a, turns, axes=(-2, -1)))
    if mirrored:
        a = a.flip(-1)
    return a.rot90(turns, dims=(-2, -1))


def untransform(a, turns: int, mirrored: bool):
    """The inverse of :func:`transform` (turn back, then mirror)."""
    if isinstance(a, np.ndarray):
        a = np.rot90(a, -turns, axes=(-2, -1))
        return np.ascontiguousarray(a[..., ::-1] if mirrored else a)
    a = a.rot90(-turns, dims=(-2, -1))
    return a.flip(-1) if mirrored else a


class DihedralView(FeatureExtractor):
    """The features of ``base`` on transformed tiles (square tiles only).

    Its identity names the transform, so cached features of different views never mix.
    """

    def __init__(self, base: FeatureExtractor, turns: int, mirrored: bool):
        self.base, self.turns, self.mirrored = base, int(turns) % 4, bool(mirrored)
        self.kind, self.tile_size, self.halo = base.kind, base.tile_size, base.halo
        self.multiple, self.mpp = base.multiple, base.mpp

    @property
    def identity(self) -> str:
        if (self.turns, self.mirrored) == (0, False):
            return self.base.identity
        return f"{self.base.identity}|dihedral={self.turns}{'m' if self.mirrored else ''}"

    @property
    def channels(self) -> list[int]:
        return self.base.channels

    @property
    def strides(self) -> list[int]:
        return self.base.strides

    def extract(self, tiles: np.ndarray) -> list[np.ndarray]:
        tiles = np.asarray(tiles)
        if tiles.shape[1] != tiles.shape[2]:
            raise ValueError(f"Test-time augmentation needs square tiles, got {tiles.shape[1]}x{tiles.shape[2]}.")
        moved = np.moveaxis(tiles, -1, 1)  # (B, 3, H, W)
        return self.base.extract(np.ascontiguousarray(np.moveaxis(transform(moved, self.turns, self.mirrored), 1, -1)))

    def config(self) -> dict[str, Any]:
        return self.base.config()
