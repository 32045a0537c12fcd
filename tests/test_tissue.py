"""Tissue masks and tissue tile positions (core.tissue)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_pathsegdiff.core.tissue import tissue_fraction, tissue_mask, tissue_tile_positions


def _blob_image() -> np.ndarray:
    """White background with an H&E-coloured disk of radius 40 around (60, 80)."""
    rng = np.random.default_rng(0)
    img = np.full((128, 160, 3), 242, np.uint8)
    img += rng.integers(0, 8, img.shape, dtype=np.uint8)  # glass is not perfectly flat
    yy, xx = np.mgrid[:128, :160]
    disk = (yy - 60) ** 2 + (xx - 80) ** 2 < 40**2
    stain = np.array([170, 80, 150]) + rng.integers(-25, 25, (int(disk.sum()), 3))
    img[disk] = np.clip(stain, 0, 255)
    return img, disk


def test_mask_covers_blob_and_not_background():
    img, disk = _blob_image()
    mask = tissue_mask(img)
    assert mask.shape == (128, 160) and mask.dtype == bool
    assert mask[disk].mean() > 0.98
    assert mask[~disk].mean() < 0.02
    assert tissue_fraction(mask) == pytest.approx(disk.mean(), abs=0.01)


def test_all_white_image_has_no_tissue():
    assert not tissue_mask(np.full((50, 60, 3), 250, np.uint8)).any()


def test_grey_dark_border_is_not_tissue():
    img = np.full((64, 64, 3), 245, np.uint8)
    img[:, :10] = 40  # a black, unsaturated scanner border
    assert not tissue_mask(img)[:, :10].any()


def test_float_images_accepted_and_bad_shape_refused():
    img, disk = _blob_image()
    assert np.array_equal(tissue_mask(img / 255.0), tissue_mask(img))
    with pytest.raises(ValueError, match=r"shape \(height, width, 3\)"):
        tissue_mask(np.zeros((10, 10)))


def test_fraction_of_a_box():
    mask = np.zeros((10, 10), bool)
    mask[:5] = True
    assert tissue_fraction(mask, box=(0, 0, 5, 10)) == 1.0
    assert tissue_fraction(mask, box=(0, 0, 10, 10)) == 0.5
    assert tissue_fraction(mask, box=(20, 20, 5, 5)) == 0.0


def test_tile_positions_at_full_resolution():
    mask = np.zeros((8, 8), bool)
    mask[:4, :4] = True  # mask at 1/16 of a 128x128 image: tissue in its top-left 64x64
    pos = tissue_tile_positions(mask, tile=32, scale=16, min_fraction=0.5)
    assert pos.dtype == np.int64
    assert pos.tolist() == [[0, 0], [0, 32], [32, 0], [32, 32]]
    overlapping = tissue_tile_positions(mask, tile=32, scale=16, stride=16, min_fraction=0.5)
    assert [48, 48] not in overlapping.tolist() and [48, 32] in overlapping.tolist()
    assert tissue_tile_positions(mask, tile=256, scale=16).shape == (0, 2)
    with pytest.raises(ValueError, match="must be positive"):
        tissue_tile_positions(mask, tile=0)


def test_real_slide_thumbnail_fraction(shared_data):
    tifffile = pytest.importorskip("tifffile")
    thumb = tifffile.imread(shared_data / "slides" / "CMU-1-Small-Region.svs", series=1)
    mask = tissue_mask(thumb)
    # the CMU region is a strip of skin across a white background: about a third is tissue
    assert 0.2 < tissue_fraction(mask) < 0.6
    # the corners of this region are glass
    assert not mask[:20, :20].any()
