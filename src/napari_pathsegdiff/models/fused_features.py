"""Several feature extractors read on the same tile: their maps side by side.

PathSegDiff's decoder features describe tissue context; the filter bank and the pixels
describe edges and colour at full resolution. Fusing them lets one head use both. Each part
keeps its own maps, so the head standardises and reduces every map by itself (see
:mod:`~napari_pathsegdiff.models.heads`): wide diffusion maps do not drown narrow ones.

All parts see the same tile at the same scale: the fused extractor works at the µm/px of
the first part that has one (the diffusion backbone's), with the largest halo and tile size
of the parts and the least common multiple of their ``multiple``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .features_base import FeatureExtractor


class FusedFeatures(FeatureExtractor):
    """The maps of several extractors, in order, for the same tiles.

    Parameters
    ----------
    parts : sequence of FeatureExtractor
        Two or more extractors; none may itself be fused.

    Examples
    --------
    >>> from napari_pathsegdiff.models.features import ClassicFeatures, RGBFeatures
    >>> f = FusedFeatures([RGBFeatures(), ClassicFeatures(num_sigma=2)])
    >>> f.channels, f.strides, f.identity
    ([3, 24], [1, 1], 'fused(rgb:v1+classic:sigma=1-16x2:filters=iet:v1)')
    """

    kind = "fused"

    def __init__(self, parts: Sequence[FeatureExtractor]):
        parts = list(parts)
        if len(parts) < 2:
            raise ValueError(f"Fused features need at least two extractors, got {len(parts)}.")
        for p in parts:
            if not isinstance(p, FeatureExtractor):
                raise TypeError(f"Not a feature extractor: {p!r}.")
            if isinstance(p, FusedFeatures):
                raise ValueError("Fused features cannot contain fused features: list the parts instead.")
        mpps = [p.mpp for p in parts if p.mpp is not None]
        if len({round(m, 6) for m in mpps}) > 1:
            raise ValueError(f"Fused parts expect different µm/px {mpps}: use parts at one scale.")
        self.parts = parts
        self.mpp = mpps[0] if mpps else None
        self.tile_size = max(p.tile_size for p in parts)
        self.halo = max(p.halo for p in parts)
        self.multiple = math.lcm(*(int(p.multiple) for p in parts))

    @property
    def identity(self) -> str:
        return "fused(" + "+".join(p.identity for p in self.parts) + ")"

    @property
    def channels(self) -> list[int]:
        return [c for p in self.parts for c in p.channels]

    @property
    def strides(self) -> list[int]:
        return [s for p in self.parts for s in p.strides]

    def extract(self, tiles: np.ndarray) -> list[np.ndarray]:
        tiles = self.check_tiles(tiles)
        return [m for p in self.parts for m in p.extract(tiles)]

    def config(self) -> dict[str, Any]:
        return {"kind": "fused", "parts": [p.config() for p in self.parts]}
