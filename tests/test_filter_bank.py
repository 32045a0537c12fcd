"""The torch filter bank computes scikit-image's multiscale_basic_features, channel for channel.

Tolerance: 1e-6 absolute on tiles in [0, 1], and on a real H&E tile 2e-3 of each channel's
standard deviation. scikit-image computes in float32, so its own rounding is about 6e-8 per
value (1.1e-3 of the spread of the sigma-16 Hessian eigenvalues on that tile); the torch
version measures within 3e-7 of it (see BENCHMARKS.md, "Filter bank in
torch"), far below the float16 resolution at which the head reads the features (2.4e-4 near
0.5).
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from scipy import ndimage as ndi
from skimage.feature import multiscale_basic_features

from napari_pathsegdiff.models.filter_bank import (
    filter_bank, filter_sigmas, filters_per_sigma, gaussian, hessian_eigenvalues, numpy_gradient,
    sobel_magnitude,
)

ATOL = 1e-6


def skimage_features(tiles: np.ndarray, **settings) -> np.ndarray:
    """scikit-image's features of (B, 3, H, W) tiles, moved channels first as ClassicFeatures does."""
    return np.stack([
        np.moveaxis(multiscale_basic_features(np.moveaxis(t, 0, -1), channel_axis=-1, **settings), -1, 0)
        for t in tiles
    ])


def noise_tiles(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def tissue_like_tiles(shape, seed=0) -> np.ndarray:
    """Smooth blobs of colour plus pixel noise, in [0, 1], like stained tissue at a glance."""
    rng = np.random.default_rng(seed)
    smooth = ndi.gaussian_filter(rng.random(shape), sigma=(0, 0, 4, 4))
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return np.clip(0.15 + 0.7 * smooth + 0.05 * rng.standard_normal(shape), 0, 1).astype(np.float32)


def assert_matches_skimage(tiles: np.ndarray, **settings) -> np.ndarray:
    expected = skimage_features(tiles, **settings)
    got = filter_bank(tiles, **settings)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=ATOL)
    return got


DEFAULTS = dict(sigma_min=1.0, sigma_max=16.0, num_sigma=5)


@pytest.mark.parametrize("make_tiles", [noise_tiles, tissue_like_tiles])
def test_default_bank_matches_skimage_on_odd_tiles(make_tiles):
    # 97 x 131: several Gaussian blocks with a partial last one, kernels wider than the tile.
    tiles = make_tiles((2, 3, 97, 131))
    got = assert_matches_skimage(tiles, **DEFAULTS)
    assert got.shape == (2, 60, 97, 131)


@pytest.mark.parametrize("filters", [
    dict(intensity=True, edges=False, texture=False),
    dict(intensity=False, edges=True, texture=False),
    dict(intensity=False, edges=False, texture=True),
    dict(intensity=True, edges=False, texture=True),
])
@pytest.mark.parametrize("num_sigma", [1, 2, 3, 4, 5])
def test_each_filter_and_number_of_scales_matches_skimage(filters, num_sigma):
    tiles = tissue_like_tiles((1, 3, 45, 38), seed=num_sigma)
    got = assert_matches_skimage(tiles, sigma_min=0.7, sigma_max=6.0, num_sigma=num_sigma, **filters)
    assert got.shape[1] == 3 * num_sigma * filters_per_sigma(**filters)


def test_channel_order_is_rgb_then_scale_then_filter():
    # Each RGB channel differs (flat, ramp, noise): a channel out of place would not match.
    h, w = 33, 41
    tile = np.stack([np.full((h, w), 0.3), np.add.outer(np.linspace(0, 0.5, h), np.linspace(0, 0.4, w)),
                     noise_tiles((h, w), seed=3)]).astype(np.float32)[None]
    got = assert_matches_skimage(tile, sigma_min=1, sigma_max=4, num_sigma=3)
    per_rgb = 3 * 4  # 3 scales x (intensity, edges, 2 eigenvalues)
    red, green = got[0, :per_rgb], got[0, per_rgb:2 * per_rgb]
    np.testing.assert_allclose(red[0::4], 0.3, atol=1e-6)  # intensity of a flat channel
    np.testing.assert_allclose(red[1::4], 0, atol=1e-6)  # its edges and texture vanish
    np.testing.assert_allclose(green[2:4, 5:-5, 5:-5], 0, atol=1e-6)  # a ramp has no curvature
    assert np.all(got[0, 2::4] >= got[0, 3::4])  # largest eigenvalue first


def test_border_pixels_match_skimage():
    # A steep ramp plus noise makes the border rules (replicated edges, one-sided
    # differences) visible: compare the outer rows and columns on their own.
    h, w = 70, 90
    ramp = np.add.outer(np.linspace(0, 1, h) ** 2, np.linspace(1, 0, w)) / 2
    tiles = np.clip(ramp + 0.1 * noise_tiles((1, 3, h, w), seed=7) - 0.05, 0, 1).astype(np.float32)
    expected = skimage_features(tiles, **DEFAULTS)
    got = filter_bank(tiles, **DEFAULTS)
    for border in (np.s_[..., :2, :], np.s_[..., -2:, :], np.s_[..., :, :2], np.s_[..., :, -2:]):
        np.testing.assert_allclose(got[border], expected[border], rtol=0, atol=ATOL)


def test_real_hne_tile_matches_skimage():
    from napari_pathsegdiff._sample_data import sample_slide_path

    with tifffile.TiffFile(sample_slide_path()) as tif:
        rgb = tif.pages[0].asarray()[1000:1160, 1200:1400]
    tiles = np.moveaxis(rgb.astype(np.float32) / 255, -1, 0)[None]
    got = assert_matches_skimage(tiles, **DEFAULTS)
    # Relative to each channel's spread, down to the tiny sigma-16 Hessian eigenvalues: within
    # 2e-3, as scikit-image's own float32 rounding already reaches 1.1e-3 of it on this tile.
    expected = skimage_features(tiles, **DEFAULTS)
    spread = expected.std(axis=(0, 2, 3))
    worst = (np.abs(got - expected).max(axis=(0, 2, 3)) / spread).max()
    skimage_own = (np.abs(filter_bank(tiles.astype(np.float64), **DEFAULTS) - expected).max(axis=(0, 2, 3))
                   / spread).max()
    assert skimage_own > 5e-4 and worst < 2e-3


def test_tiles_thinner_than_the_kernel_and_tiny_tiles_match_skimage():
    assert_matches_skimage(noise_tiles((1, 3, 5, 150), seed=1), **DEFAULTS)
    assert_matches_skimage(noise_tiles((1, 3, 2, 2), seed=2), **DEFAULTS)
    assert_matches_skimage(noise_tiles((1, 3, 1, 1), seed=3), sigma_min=1, sigma_max=2, num_sigma=2,
                           texture=False)


def test_tensor_in_tensor_out_and_batch_independent():
    tiles = tissue_like_tiles((3, 3, 40, 40), seed=5)
    batch = filter_bank(torch.from_numpy(tiles), sigma_min=1, sigma_max=4, num_sigma=3)
    assert isinstance(batch, torch.Tensor) and batch.dtype == torch.float32
    one = filter_bank(torch.from_numpy(tiles[1:2]), sigma_min=1, sigma_max=4, num_sigma=3)
    torch.testing.assert_close(batch[1:2], one, rtol=0, atol=0)


def test_float64_input_is_computed_in_float64():
    tiles = tissue_like_tiles((1, 3, 30, 30), seed=6).astype(np.float64)
    got = filter_bank(tiles, sigma_min=1, sigma_max=2, num_sigma=2)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, skimage_features(tiles, sigma_min=1, sigma_max=2, num_sigma=2), atol=ATOL)


def test_building_blocks_follow_scipy_and_numpy():
    rng = np.random.default_rng(8)
    plane = rng.random((1, 29, 140))
    tensor = torch.from_numpy(plane)
    for sigma in (0.5, 3.0, 16.0):
        expected = ndi.gaussian_filter(plane[0], sigma, mode="nearest", truncate=4.0)
        np.testing.assert_allclose(gaussian(tensor, sigma)[0].numpy(), expected, rtol=0, atol=1e-12)
    sobel = ndi.sobel(plane[0], axis=0, mode="reflect") ** 2 + ndi.sobel(plane[0], axis=1, mode="reflect") ** 2
    np.testing.assert_allclose(sobel_magnitude(tensor)[0].numpy(), np.sqrt(sobel / 2) / 4, atol=1e-12)
    for dim in (-2, -1):
        np.testing.assert_allclose(numpy_gradient(tensor, dim)[0].numpy(), np.gradient(plane[0], axis=dim))
    big, small = hessian_eigenvalues(tensor)
    assert torch.all(big >= small)
    assert filter_sigmas(1, 16, 5).tolist() == [1, 2, 4, 8, 16]


@pytest.mark.parametrize("image, settings, message", [
    (np.zeros((3, 8, 8), np.float32), {}, r"\(B, C, H, W\), got \(3, 8, 8\)"),
    (np.zeros((1, 3, 8, 8), np.uint8), {}, "divide uint8 tiles by 255"),
    (np.zeros((1, 3, 1, 8), np.float32), {}, "at least 2 x 2 pixels"),
    (np.zeros((1, 3, 8, 8), np.float32), dict(sigma_min=0), "0 < sigma_min <= sigma_max"),
    (np.zeros((1, 3, 8, 8), np.float32), dict(sigma_min=4, sigma_max=2), "got 4 and 2"),
    (np.zeros((1, 3, 8, 8), np.float32), dict(num_sigma=0), "num_sigma must be"),
    (np.zeros((1, 3, 8, 8), np.float32), dict(intensity=False, edges=False, texture=False), "at least one of"),
    ([[[[0.5]]]], {}, "tensor or an ndarray, got list"),
])
def test_bad_input_is_refused_with_a_clear_message(image, settings, message):
    with pytest.raises(ValueError, match=message):
        filter_bank(image, **settings)
