"""The raw pixels as features: :class:`RGBFeatures` (the weakest baseline)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..features_base import FeatureExtractor


class RGBFeatures(FeatureExtractor):
    """The RGB pixels scaled to [0, 1]: 3 channels at stride 1.

    Parameters
    ----------
    tile_size : int
        Tile core side.
    halo : int
        Context around a tile; the head's 3x3 convolutions need a few pixels.
    """

    kind = "rgb"
    multiple = 1
    mpp = None

    def __init__(self, *, tile_size: int = 512, halo: int = 8):
        self.tile_size, self.halo = int(tile_size), int(halo)

    @property
    def identity(self) -> str:
        return "rgb:v1"

    @property
    def channels(self) -> list[int]:
        return [3]

    @property
    def strides(self) -> list[int]:
        return [1]

    def extract(self, tiles: np.ndarray) -> list[np.ndarray]:
        tiles = self.check_tiles(tiles)
        return [(np.moveaxis(tiles, -1, 1).astype(np.float32) / 255.0).astype(np.float16)]

    def config(self) -> dict[str, Any]:
        return {"kind": "rgb", "tile_size": self.tile_size, "halo": self.halo}
