"""Baseline feature extractors and the factory that builds any extractor from its config.

- :class:`ClassicFeatures`: the filter bank of ilastik, QuPath and napari-apoc, through
  scikit-image :func:`~skimage.feature.multiscale_basic_features` on the RGB tile (Gaussian
  intensity, gradient magnitude and Hessian eigenvalues at several scales).
- :class:`RGBFeatures`: the raw pixels scaled to [0, 1].
- ``diffusion``: :class:`~napari_pathsegdiff.models.diffusion_features.DiffusionFeatures`,
  imported only when asked for.

All three go through the same engine, tiles, head and labels, so every comparison is one
command line option (``--features diffusion|classic|rgb``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .features_base import FeatureExtractor

KINDS = ("diffusion", "classic", "rgb")
#: Joins the kinds of fused features on the command line: ``diffusion+classic``.
FUSE = "+"


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
        if not 0 < sigma_min <= sigma_max:
            raise ValueError(f"Need 0 < sigma_min <= sigma_max, got {sigma_min} and {sigma_max}.")
        if num_sigma < 1:
            raise ValueError(f"num_sigma must be at least 1, got {num_sigma}.")
        if not (intensity or edges or texture):
            raise ValueError("Classic features need at least one of intensity, edges, texture.")
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
        from skimage.feature import multiscale_basic_features

        tiles = self.check_tiles(tiles)
        b, h, w, _ = tiles.shape
        out = np.empty((b, self.channels[0], h, w), dtype=np.float16)
        for i, tile in enumerate(tiles):
            feats = multiscale_basic_features(
                tile.astype(np.float32) / 255.0,
                intensity=self.intensity,
                edges=self.edges,
                texture=self.texture,
                sigma_min=self.sigma_min,
                sigma_max=self.sigma_max,
                num_sigma=self.num_sigma,
                channel_axis=-1,
            )
            out[i] = np.moveaxis(feats, -1, 0)
        return [out]

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


def build_extractor(config: dict[str, Any], *, device: str = "cpu") -> FeatureExtractor:
    """The extractor described by ``config`` (the output of :meth:`FeatureExtractor.config`).

    Parameters
    ----------
    config : dict
        ``{"kind": "diffusion" | "classic" | "rgb", ...settings}``, or
        ``{"kind": "fused", "parts": [config, ...]}``.
    device : str
        Torch device of diffusion features (``"cpu"``, ``"cuda"``, ``"auto"``); the filter
        bank and RGB features run on the CPU.
    """
    if not isinstance(config, dict) or "kind" not in config:
        raise ValueError(f"A feature config must be a dict with a 'kind', got {config!r}.")
    options = {k: v for k, v in config.items() if k != "kind"}
    kind = config["kind"]
    if kind == "diffusion":
        from . import diffusion_features

        return diffusion_features.from_config(dict(config), device=device)
    if kind == "fused":
        from .fused_features import FusedFeatures

        parts = config.get("parts")
        if not isinstance(parts, list):
            raise ValueError(f"A fused feature config needs a list of 'parts', got {parts!r}.")
        return FusedFeatures([build_extractor(p, device=device) for p in parts])
    cls = {"classic": ClassicFeatures, "rgb": RGBFeatures}.get(kind)
    if cls is None:
        raise ValueError(f"Unknown feature kind {kind!r}: use one of {', '.join(KINDS)}.")
    try:
        return cls(**options)
    except TypeError as exc:
        raise ValueError(f"Bad settings for {kind} features {options}: {exc}") from exc


def feature_kind(config: dict[str, Any] | None) -> str:
    """The command-line name of a feature config: ``"classic"``, ``"diffusion+classic"``, ...

    Examples
    --------
    >>> feature_kind({"kind": "fused", "parts": [{"kind": "diffusion"}, {"kind": "rgb"}]})
    'diffusion+rgb'
    """
    config = config or {}
    if config.get("kind") == "fused":
        return FUSE.join(str(p.get("kind")) for p in config.get("parts", []))
    return str(config.get("kind"))


def with_backbone(config: dict[str, Any], backbone: str) -> dict[str, Any]:
    """``config`` with its diffusion backbone (of a fused part too) replaced by ``backbone``.

    Raises
    ------
    ValueError
        When the config has no diffusion features, naming the features it has.

    Examples
    --------
    >>> with_backbone({"kind": "fused", "parts": [{"kind": "diffusion", "backbone": "default"},
    ...                {"kind": "rgb"}]}, "my-bb")["parts"][0]["backbone"]
    'my-bb'
    """
    if config.get("kind") == "diffusion":
        return {**config, "backbone": str(backbone)}
    if config.get("kind") == "fused" and any(p.get("kind") == "diffusion" for p in config.get("parts", [])):
        parts = [with_backbone(p, backbone) if p.get("kind") == "diffusion" else p for p in config["parts"]]
        return {**config, "parts": parts}
    raise ValueError(f"A backbone applies to diffusion features, not to {feature_kind(config)} features.")


def parse_feature_kind(text: str) -> str:
    """Check a ``--features`` value: one kind, or distinct kinds joined with ``+``.

    Examples
    --------
    >>> parse_feature_kind("diffusion+classic")
    'diffusion+classic'
    """
    names = [k.strip() for k in str(text).split(FUSE)]
    if not names or len(set(names)) != len(names) or any(n not in KINDS for n in names):
        raise ValueError(f"Unknown features {text!r}: use one of {', '.join(KINDS)}, or distinct ones "
                         "joined with '+' (e.g. diffusion+classic).")
    return FUSE.join(names)


def make_extractor(
    kind: str, *, backbone: str = "default", device: str = "cpu", **options
) -> FeatureExtractor:
    """An extractor by kind, for the command line (``backbone`` matters only for diffusion).

    ``kind`` may join several kinds with ``+`` (``"diffusion+classic"``): their maps are fused
    (:class:`~napari_pathsegdiff.models.fused_features.FusedFeatures`); ``options`` then go to
    the diffusion part.

    Examples
    --------
    >>> make_extractor("rgb").identity
    'rgb:v1'
    >>> make_extractor("rgb+classic").channels
    [3, 60]
    """
    if FUSE in kind:
        from .fused_features import FusedFeatures

        names = parse_feature_kind(kind).split(FUSE)
        parts = [make_extractor(n, backbone=backbone, device=device, **(options if n == "diffusion" else {}))
                 for n in names]
        return FusedFeatures(parts)
    if kind == "diffusion":
        return build_extractor({"kind": "diffusion", "backbone": backbone, **options}, device=device)
    return build_extractor({"kind": kind, **options}, device=device)
