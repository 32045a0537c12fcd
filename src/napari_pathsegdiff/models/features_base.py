"""The interface every feature extractor implements (diffusion, classic filter bank, RGB).

A feature extractor turns a batch of RGB tiles into a list of feature maps, possibly at
several resolutions (``strides``). The head upsamples and fuses them. Extractors are
interchangeable: the engine, the cache and the head only see this interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np


class FeatureExtractor(ABC):
    """Base class of feature extractors.

    Subclasses set the attributes below in ``__init__`` and implement :meth:`extract`.

    Attributes
    ----------
    kind : str
        ``"diffusion"``, ``"classic"`` or ``"rgb"``.
    tile_size : int
        Preferred tile side in pixels (the engine tiles regions into squares of this size).
    halo : int
        Context in pixels added on every side of a tile and cropped after prediction.
    multiple : int
        Tile sides (with halo) must be a multiple of this.
    mpp : float or None
        Microns per pixel the extractor expects its input at; ``None`` for any scale.
    """

    kind: str = ""
    tile_size: int = 256
    halo: int = 32
    multiple: int = 1
    mpp: float | None = None

    @property
    @abstractmethod
    def identity(self) -> str:
        """A stable string naming the extractor and every setting that changes its output.

        Used in feature-cache keys and recorded in a head, which refuses other extractors.
        """

    @property
    @abstractmethod
    def channels(self) -> list[int]:
        """Number of channels of each feature map returned by :meth:`extract`."""

    @property
    @abstractmethod
    def strides(self) -> list[int]:
        """Downsampling factor of each feature map relative to the input tile."""

    @abstractmethod
    def extract(self, tiles: np.ndarray) -> list[np.ndarray]:
        """Feature maps of a batch of tiles.

        Parameters
        ----------
        tiles : ndarray of uint8, shape (B, H, W, 3)
            RGB tiles; ``H`` and ``W`` are multiples of :attr:`multiple`.

        Returns
        -------
        list of ndarray of float16
            One array per map, shape ``(B, channels[i], H // strides[i], W // strides[i])``.
        """

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-serialisable settings from which :func:`build_extractor` rebuilds this extractor."""

    def check_tiles(self, tiles: np.ndarray) -> np.ndarray:
        """Validate a batch of tiles and return it as a C-contiguous uint8 array."""
        tiles = np.asarray(tiles)
        if tiles.ndim != 4 or tiles.shape[-1] != 3:
            raise ValueError(f"Expected RGB tiles of shape (B, H, W, 3), got {tiles.shape}.")
        if tiles.dtype != np.uint8:
            raise ValueError(f"Expected uint8 tiles, got {tiles.dtype}.")
        h, w = tiles.shape[1:3]
        if h % self.multiple or w % self.multiple:
            raise ValueError(
                f"{self.kind} features need tile sides that are multiples of {self.multiple}, "
                f"got {h}x{w}."
            )
        return np.ascontiguousarray(tiles)
