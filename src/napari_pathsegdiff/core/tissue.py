"""Where the tissue is: a low-resolution tissue mask of an H&E image and tile positions on it.

Background in brightfield slides is bright and unsaturated (glass) or, in scanned tiles,
white; stained tissue absorbs light. The mask thresholds the optical density (OD) of the
image with Otsu's method, keeps pixels that also have some colour, and cleans the result with
morphology. It is meant for images of a few million pixels at most: compute it on a
low-resolution pyramid level or a downscaled copy, then scale the positions up.
"""

from __future__ import annotations

import numpy as np
from skimage import color, filters, morphology

__all__ = ["tissue_mask", "tissue_fraction", "tissue_tile_positions"]


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] not in (3, 4):
        raise ValueError(f"Expected an RGB image of shape (height, width, 3); got shape {rgb.shape}.")
    rgb = rgb[..., :3]
    if rgb.dtype != np.uint8:
        if np.issubdtype(rgb.dtype, np.floating) and rgb.size and rgb.max() <= 1.0:
            rgb = rgb * 255.0
        rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    return rgb


def tissue_mask(
    rgb: np.ndarray,
    *,
    min_od: float = 0.1,
    min_saturation: float = 0.05,
    min_object_fraction: float = 0.001,
    closing_radius: int = 2,
) -> np.ndarray:
    """Boolean mask of stained tissue in an RGB image.

    Parameters
    ----------
    rgb : ndarray, shape (H, W, 3)
        uint8 image (floats in [0, 1] are accepted), usually a low-resolution level.
    min_od : float
        Lowest optical density (mean over channels) that can be tissue, whatever Otsu says;
        keeps an all-background image from being split in two.
    min_saturation : float
        Lowest HSV saturation of tissue; grey glass, pen-free dust and black borders fail it.
    min_object_fraction : float
        Objects and holes smaller than this fraction of the image are removed / filled.
    closing_radius : int
        Radius of the disk used to close small gaps (0 disables).

    Returns
    -------
    ndarray of bool, shape (H, W)

    Examples
    --------
    >>> img = np.full((64, 64, 3), 245, np.uint8)
    >>> img[16:48, 16:48] = (180, 80, 160)
    >>> m = tissue_mask(img)
    >>> bool(m[32, 32]), bool(m[2, 2])
    (True, False)
    """
    rgb = _check_rgb(rgb)
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        return np.zeros(rgb.shape[:2], bool)
    od = -np.log((rgb.astype(np.float32) + 1.0) / 256.0).mean(axis=-1)
    threshold = min_od
    if np.ptp(od) > 1e-6:
        threshold = max(min_od, float(filters.threshold_otsu(od)))
    # Otsu on an image that is mostly tissue can set the threshold inside the tissue: cap it
    # at a density every stained pixel reaches.
    threshold = min(threshold, 0.35)
    sat = color.rgb2hsv(rgb)[..., 1]
    mask = (od > threshold) & (sat > min_saturation)
    if closing_radius > 0:
        mask = morphology.closing(mask, morphology.disk(closing_radius)).astype(bool)
    min_size = max(1, int(min_object_fraction * mask.size))
    mask = morphology.remove_small_objects(mask, max_size=min_size)
    mask = morphology.remove_small_holes(mask, max_size=min_size)
    return mask


def tissue_fraction(mask: np.ndarray, *, box: tuple[int, int, int, int] | None = None) -> float:
    """Fraction of tissue pixels in ``mask``, or in ``box = (y, x, height, width)`` of it."""
    mask = np.asarray(mask, bool)
    if box is not None:
        y, x, h, w = box
        mask = mask[max(y, 0) : y + h, max(x, 0) : x + w]
    return float(mask.mean()) if mask.size else 0.0


def tissue_tile_positions(
    mask: np.ndarray,
    *,
    tile: int,
    scale: float = 1.0,
    stride: int | None = None,
    min_fraction: float = 0.5,
    image_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Top-left (y, x) corners of tiles that hold enough tissue.

    Parameters
    ----------
    mask : ndarray of bool, shape (h, w)
        Tissue mask at low resolution.
    tile : int
        Tile side in pixels of the full-resolution image.
    scale : float
        Full-resolution pixels per mask pixel (e.g. 32 for a mask made at 1/32 size).
    stride : int, optional
        Step between tiles in full-resolution pixels (default ``tile``: no overlap).
    min_fraction : float
        Lowest tissue fraction of a tile (measured on the mask) to keep it.
    image_shape : (int, int), optional
        Full-resolution (height, width); default ``mask.shape * scale``. Tiles never cross it.

    Returns
    -------
    ndarray of int64, shape (n, 2)
        Corners in full-resolution pixels, in (y, x) order, row by row.
    """
    if tile <= 0 or scale <= 0:
        raise ValueError(f"tile ({tile}) and scale ({scale}) must be positive.")
    stride = int(stride or tile)
    if stride <= 0:
        raise ValueError(f"stride must be positive, got {stride}.")
    mask = np.asarray(mask, bool)
    if image_shape is None:
        image_shape = (int(round(mask.shape[0] * scale)), int(round(mask.shape[1] * scale)))
    height, width = image_shape
    out = []
    integral = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    for y in range(0, height - tile + 1, stride):
        y0 = int(np.floor(y / scale))
        y1 = max(y0 + 1, min(mask.shape[0], int(np.ceil((y + tile) / scale))))
        for x in range(0, width - tile + 1, stride):
            x0 = int(np.floor(x / scale))
            x1 = max(x0 + 1, min(mask.shape[1], int(np.ceil((x + tile) / scale))))
            total = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
            area = (y1 - y0) * (x1 - x0)
            if area > 0 and total / area >= min_fraction:
                out.append((y, x))
    return np.asarray(out, dtype=np.int64).reshape(-1, 2)
