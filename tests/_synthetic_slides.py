"""Small synthetic slides written with tifffile, for the slide, reader and plugin tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

TILE = 256


def tissue_like(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth pink-purple RGB pattern (JPEG keeps it close to the original)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, 3)
    r = 200 + 40 * np.sin(xx / 97 + phase[0])
    g = 120 + 60 * np.sin(yy / 83 + phase[1])
    b = 180 + 50 * np.sin((xx + yy) / 131 + phase[2])
    return np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)


def write_pyramid(
    path: Path,
    image: np.ndarray,
    *,
    levels: int,
    mpp: float | None,
    compression: str = "jpeg",
) -> Path:
    """A pyramidal tiled TIFF: level 0 plus ``levels - 1`` halvings in SubIFDs, 256-px tiles,
    µm/px in the resolution tags (pixels per centimetre)."""
    pyramid = [image]
    for _ in range(levels - 1):
        pyramid.append(pyramid[-1][::2, ::2])
    with tifffile.TiffWriter(path, bigtiff=False) as tif:
        for index, level in enumerate(pyramid):
            resolution = {}
            if mpp is not None:
                per_cm = 1e4 / (mpp * 2**index)
                resolution = dict(resolution=(per_cm, per_cm), resolutionunit="CENTIMETER")
            extra = dict(subifds=levels - 1) if index == 0 else dict(subfiletype=1)
            tif.write(
                level,
                tile=(TILE, TILE),
                compression=compression,
                photometric="rgb",
                **resolution,
                **extra,
            )
    return path
