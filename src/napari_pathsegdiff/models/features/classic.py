"""The filter bank of ilastik, QuPath and napari-apoc: :class:`ClassicFeatures`.

The features of scikit-image :func:`~skimage.feature.multiscale_basic_features` on the RGB
tile (Gaussian intensity, gradient magnitude and Hessian eigenvalues at several scales),
computed by the torch filter bank of :mod:`~napari_pathsegdiff.models.filter_bank` (about 4x
less CPU; its float16 maps equal scikit-image's or lie one float16 step apart, so the identity
of the features, and the heads trained on them, are unchanged).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..features_base import FeatureExtractor


class ClassicFeatures(FeatureExtractor):
    """Multiscale Gaussian filter bank on each RGB channel (stride 1).

    Parameters
    ----------
    sigma_min, sigma_max : float
        Smallest and largest Gaussian scale in pixels.
    num_sigma : int
        Number of scales, spaced geometrically.
    intensity, edges, texture : bool
        Which filters to compute (smoothed intensity, gradient magnitude, Hessian eigenvalues).
    tile_size : int
        Tile core side; the halo is ``4 * sigma_max``, the reach of the largest Gaussian.

    Notes
    -----
    Channels: ``3 * num_sigma * (intensity + edges + 2 * texture)`` (60 by default), all at
    the tile's resolution. The features hold at any scale, so :attr:`mpp` is ``None``.
    """

    kind = "classic"
    multiple = 1
    mpp = None

    def __init__(
        self,
        *,
        sigma_min: float = 1.0,
        sigma_max: float = 16.0,
        num_sigma: int = 5,
        intensity: bool = True,
        edges: bool = True,
        texture: bool = True,
        tile_size: int = 512,
    ):
        from ..filter_bank import check_settings

        check_settings(sigma_min, sigma_max, num_sigma, intensity, edges, texture)
        self.sigma_min, self.sigma_max, self.num_sigma = float(sigma_min), float(sigma_max), int(num_sigma)
        self.intensity, self.edges, self.texture = bool(intensity), bool(edges), bool(texture)
        self.tile_size = int(tile_size)
        self.halo = int(math.ceil(4 * self.sigma_max))

    @property
    def identity(self) -> str:
        filters = "".join(k for k, on in zip("iet", (self.intensity, self.edges, self.texture)) if on)
        return (
            f"classic:sigma={self.sigma_min:g}-{self.sigma_max:g}x{self.num_sigma}:"
            f"filters={filters}:v1"
        )

    @property
    def channels(self) -> list[int]:
        per_sigma = int(self.intensity) + int(self.edges) + 2 * int(self.texture)
        return [3 * self.num_sigma * per_sigma]

    @property
    def strides(self) -> list[int]:
        return [1]

    def extract(self, tiles: np.ndarray) -> list[np.ndarray]:
        import torch

        from ..filter_bank import filter_bank

        tiles = self.check_tiles(tiles)
        out = []
        for tile in tiles:  # one tile at a time keeps the float32 planes of a batch out of memory
            x = torch.from_numpy(tile).permute(2, 0, 1)[None].float().div_(255.0)
            feats = filter_bank(x, sigma_min=self.sigma_min, sigma_max=self.sigma_max, num_sigma=self.num_sigma,
                                intensity=self.intensity, edges=self.edges, texture=self.texture)
            out.append(feats.to(torch.float16).numpy())
        return [np.concatenate(out)]

    def config(self) -> dict[str, Any]:
        return {
            "kind": "classic",
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
            "num_sigma": self.num_sigma,
            "intensity": self.intensity,
            "edges": self.edges,
            "texture": self.texture,
            "tile_size": self.tile_size,
        }
