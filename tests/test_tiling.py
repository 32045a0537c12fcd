"""Tile grids anchored to absolute coordinates, and seamless prediction of any region."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_pathsegdiff.core.progress import drive
from napari_pathsegdiff.core.region import Region
from napari_pathsegdiff.core.slide import Slide
from napari_pathsegdiff.core.tiling import Box, Stitcher, TileGrid
from napari_pathsegdiff.engine.inference.predict import predict_region
from napari_pathsegdiff.models.features import ClassicFeatures, RGBFeatures
from napari_pathsegdiff.models.heads import new_head


def _image(h=150, w=170, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    base = np.stack([(yy * 3) % 256, (xx * 5) % 256, ((yy + xx) * 2) % 256], -1)
    return np.clip(base + rng.integers(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)


def _head(extractor, seed=0, **kw):
    """A random head whose inputs are standardised, so that its labels vary over the image."""
    torch.manual_seed(seed)
    head = new_head(extractor, [0, 3, 7], **kw).eval()
    feats = extractor.extract(_image(64, 64)[None])
    head.set_normalization([f.astype(np.float32).mean((0, 2, 3)) for f in feats],
                           [f.astype(np.float32).std((0, 2, 3)) for f in feats])
    with torch.no_grad():  # random scores of a useful spread, not the near-constant of an init
        head.classifier.weight.mul_(50.0)
        head.classifier.bias.zero_()
    return head


def test_grid_is_anchored_to_absolute_coordinates():
    grid = TileGrid(tile=64, halo=8)
    box = grid.analysis_box(Region(0, 100, 10, 50, 60))
    assert box == Box(100, 10, 150, 70)
    tiles = grid.tiles(box)
    assert [(t.row, t.col) for t in tiles] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    t = tiles[0]
    assert t.core == Box(64, 0, 128, 64) and t.outer == Box(56, -8, 136, 72)
    # the same tile whatever the region that asks for it
    assert grid.tiles(grid.analysis_box(Region(0, 70, 5, 1, 1)))[0] == t


def test_read_tile_pads_only_beyond_the_image_border():
    image = _image(40, 50)
    slide = Slide.from_array(image)
    grid = TileGrid(tile=32, halo=8)
    tile = grid.tile_at(0, 1)  # outer rows -8..40, cols 24..72
    pixels = grid.read_tile(slide, 0, tile)
    assert pixels.shape == (48, 48, 3) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels[8:48, 0:26], image[0:40, 24:50])  # halo from the image
    assert (pixels[:8] == 255).all() and (pixels[:, 26:] == 255).all()  # outside: white


def test_resampled_tile_matches_the_scale():
    # a horizontal ramp at 0.25 µm/px read at 0.5 µm/px: every analysis pixel spans 2 source pixels
    ramp = np.tile(np.arange(200, dtype=np.uint8)[None, :, None], (64, 1, 3))
    grid = TileGrid(tile=16, halo=4, scale=2.0)
    pixels = grid.read_tile(Slide.from_array(ramp), 0, grid.tile_at(1, 2))
    assert pixels.shape == (24, 24, 3)
    # analysis column X has its centre at source x = 2 X + 0.5
    cols = np.arange(28, 52)
    np.testing.assert_allclose(pixels[12, :, 0], 2 * cols + 0.5, atol=1)


def test_stitcher_and_label_resampling():
    grid = TileGrid(tile=8, halo=2)
    box = Box(3, 5, 17, 13)
    st = Stitcher(box, 1, dtype=np.int32)
    for t in grid.tiles(box):
        yy, xx = np.mgrid[t.outer.y0 : t.outer.y1, t.outer.x0 : t.outer.x1]
        st.add(t, (yy * 100 + xx)[None])
    assert st.complete
    yy, xx = np.mgrid[3:17, 5:13]
    np.testing.assert_array_equal(st.values[0], yy * 100 + xx)

    labels = np.arange(12).reshape(3, 4)
    g2 = TileGrid(tile=8, halo=0, scale=0.5)  # analysis twice as fine
    region = Region(0, 0, 0, 3, 4)
    out = g2.labels_to_analysis(labels, region, g2.analysis_box(region), fill=-1)
    np.testing.assert_array_equal(out[:6, :8], np.repeat(np.repeat(labels, 2, 0), 2, 1))


def _seam_check(extractor, head, image, small: Region, *, mpp=None):
    big = drive(predict_region(image, None, head=head, extractor=extractor, mpp=mpp,
                               return_probabilities=True), show=False)
    part = drive(predict_region(image, small, head=head, extractor=extractor, mpp=mpp,
                                return_probabilities=True), show=False)
    assert part.labels.shape == small.shape and part.labels.dtype == np.uint8
    np.testing.assert_array_equal(part.labels, big.labels[small.slices])
    np.testing.assert_allclose(
        part.probabilities.astype(np.float32), big.probabilities[(slice(None), *small.slices)].astype(np.float32),
        atol=2e-3,
    )
    assert set(np.unique(big.labels)) <= {0, 3, 7}
    assert len(np.unique(big.labels)) > 1  # a constant map would hide seams
    return big, part


def test_seamless_rgb_prediction_of_a_region_equals_the_crop_of_a_larger_one():
    ex = RGBFeatures(tile_size=32, halo=6)
    _seam_check(ex, _head(ex), _image(), Region(0, 37, 51, 60, 70))
    _seam_check(ex, _head(ex), _image(), Region(0, 0, 120, 25, 50))  # touches the image border


def test_seamless_with_resampling_to_the_head_mpp():
    ex = RGBFeatures(tile_size=32, halo=6)
    head = _head(ex, mpp=0.5)
    big, part = _seam_check(ex, head, _image(), Region(0, 41, 33, 57, 64), mpp=0.3)
    assert part.scale == pytest.approx(0.5 / 0.3)
    assert part.analysis_mpp == 0.5 and part.source_mpp == pytest.approx(0.3)
    assert big.labels.shape == (150, 170)


def test_seamless_classic_features():
    ex = ClassicFeatures(sigma_min=1, sigma_max=2, num_sigma=2, tile_size=40)
    assert ex.halo == 8 and ex.channels == [24]
    _seam_check(ex, _head(ex), _image(90, 100), Region(0, 21, 35, 40, 50))


def test_seamless_tiny_diffusion_backbone():
    from napari_pathsegdiff.models.backbone import build_random_backbone
    from napari_pathsegdiff.models.diffusion_features import DiffusionFeatures

    ex = DiffusionFeatures(build_random_backbone("tiny"), device="cpu")
    assert ex.tile_size == 64 and ex.mpp == 0.5
    head = _head(ex)
    _seam_check(ex, head, _image(100, 140), Region(0, 30, 45, 50, 70), mpp=0.5)


def test_uncertainty_from_probabilities():
    from napari_pathsegdiff.engine.inference.predict import uncertainty

    p = np.array([[[1.0, 0.5, 0.7]], [[0.0, 0.5, 0.3]]], np.float16)  # (C=2, 1, 3)
    ent = uncertainty(p)
    assert ent.shape == (1, 3) and ent.dtype == np.float32
    np.testing.assert_allclose(ent[0], [0.0, 1.0, 0.8813], atol=1e-3)
    np.testing.assert_allclose(uncertainty(p, kind="margin")[0], [0.0, 1.0, 0.6], atol=1e-3)
    with pytest.raises(ValueError, match="entropy"):
        uncertainty(p, kind="bogus")


def test_prediction_returns_probabilities_that_sum_to_one():
    ex = RGBFeatures(tile_size=32, halo=4)
    pred = drive(predict_region(_image(40, 50), None, head=_head(ex), extractor=ex,
                                return_probabilities=True), show=False)
    assert pred.probabilities.shape == (3, 40, 50) and pred.probabilities.dtype == np.float16
    np.testing.assert_allclose(pred.probabilities.astype(np.float32).sum(0), 1.0, atol=3e-3)
    np.testing.assert_array_equal(pred.labels, np.array([0, 3, 7], np.uint8)[pred.probabilities.argmax(0)])


# --- blending neighbouring tiles ------------------------------------------------------------------


def test_blend_windows_of_neighbours_sum_to_one_and_skip_the_outer_halo():
    from napari_pathsegdiff.core.tiling import blend_window

    tile, halo, blend = 16, 6, 3
    w = blend_window(tile, halo, blend)
    assert w.shape == (28,) and w.dtype == np.float32
    assert (w[: halo - blend] == 0).all() and (w[-(halo - blend):] == 0).all()  # outer halo unused
    assert (w[halo + blend : halo + tile - blend] == 1).all()
    # neighbour r+1 starts `tile` pixels later: over the shared 2 * blend pixels the weights add to 1
    shared = np.arange(halo + tile - blend, halo + tile + blend)
    np.testing.assert_allclose(w[shared] + w[shared - tile], 1.0, atol=1e-6)
    np.testing.assert_array_equal(blend_window(tile, halo, 0), np.r_[np.zeros(6), np.ones(16), np.zeros(6)])


def test_blending_grid_asks_for_the_neighbours_whose_halo_reaches_the_box():
    grid = TileGrid(tile=64, halo=8, blend=4)
    box = Box(64, 64, 128, 128)  # exactly the core of tile (1, 1)
    assert [(t.row, t.col) for t in TileGrid(tile=64, halo=8).tiles(box)] == [(1, 1)]
    assert [(t.row, t.col) for t in grid.tiles(box)] == [(r, c) for r in (0, 1, 2) for c in (0, 1, 2)]
    assert grid.support(grid.tile_at(1, 1)) == Box(60, 60, 132, 132)
    # tiles beyond the image are left out: at the border the inside tile alone decides
    extent = Box(0, 0, 128, 128)
    assert [(t.row, t.col) for t in grid.tiles(Box(0, 0, 10, 10), extent=extent)] == [(0, 0)]
    for bad in (9, 33):
        with pytest.raises(ValueError, match="Blend width must be between 0 and the halo"):
            TileGrid(tile=64, halo=8 if bad == 9 else 40, blend=bad)


def test_blender_gives_the_weighted_mean_and_exact_values_where_tiles_agree():
    from napari_pathsegdiff.core.tiling import Blender

    grid = TileGrid(tile=8, halo=3, blend=2)
    box = Box(0, 0, 24, 24)
    blender = Blender(grid, box, 2)
    for t in grid.tiles(box, extent=box):
        yy, xx = np.mgrid[t.outer.y0 : t.outer.y1, t.outer.x0 : t.outer.x1].astype(np.float32)
        blender.add(t, np.stack([yy + xx, np.full_like(yy, 5.0)]))
    out = blender.result()
    yy, xx = np.mgrid[0:24, 0:24]
    np.testing.assert_allclose(out[0], yy + xx, atol=1e-4)  # every tile says the same: unchanged
    np.testing.assert_allclose(out[1], 5.0, atol=1e-6)
    with pytest.raises(ValueError, match="covered by no tile"):
        Blender(grid, box, 1).result()


class _TileContextFeatures(RGBFeatures):
    """RGB minus the tile's mean: features that depend on the whole tile, as a backbone's do,
    so that neighbouring tiles disagree at their common edge."""

    def extract(self, tiles):
        [rgb] = super().extract(tiles)
        rgb = rgb.astype(np.float32)
        return [(rgb - rgb.mean((2, 3), keepdims=True)).astype(np.float16)]


def test_blending_changes_only_pixels_near_tile_edges():
    ex = _TileContextFeatures(tile_size=32, halo=6)
    head, image = _head(ex), _image()
    pasted = drive(predict_region(image, None, head=head, extractor=ex, blend=0, return_probabilities=True), show=False)
    blended = drive(predict_region(image, None, head=head, extractor=ex, return_probabilities=True), show=False)
    diff = np.abs(pasted.probabilities.astype(np.float32) - blended.probabilities.astype(np.float32)).max(0)
    near = np.zeros(diff.shape, bool)
    for edge in range(32, 170, 32):  # the default blend is half the halo: 3 px each side of an edge
        near[edge - 3 : edge + 3] = near[:, edge - 3 : edge + 3] = True
    assert diff[~near].max() < 2e-3 and diff[near].max() > 0.01


def test_seamless_forest_prediction_of_a_region_equals_the_crop_of_a_larger_one():
    from napari_pathsegdiff.engine.training.train_head import train_head

    ex = RGBFeatures(tile_size=32, halo=8)
    image = _image()
    mask = (image[..., 0] > 128).astype(np.uint8) + 2 * (image[..., 1] > 128)
    forest = drive(train_head([(image, mask)], extractor=ex, head_kind="forest", n_estimators=4), show=False).head
    big = drive(predict_region(image, None, head=forest, extractor=ex, return_probabilities=True), show=False)
    small = Region(0, 37, 51, 60, 70)
    part = drive(predict_region(image, small, head=forest, extractor=ex, return_probabilities=True), show=False)
    np.testing.assert_array_equal(part.labels, big.labels[small.slices])
    assert len(np.unique(big.labels)) > 1
    assert not (big.probabilities.astype(np.float32).sum(0) < 0.99).any()  # blended inside the margin


@pytest.mark.slow
def test_no_seams_on_the_sample_slide_with_the_demo_head():
    from napari_pathsegdiff._sample_data import sample_slide_path
    from napari_pathsegdiff.core.feature_cache import FeatureCache
    from napari_pathsegdiff.core.metrics import seam_ratios
    from napari_pathsegdiff.core.slide import open_slide
    from napari_pathsegdiff.engine.shipped_models import demo_head_folder
    from napari_pathsegdiff.models.heads import load_head_and_extractor

    if demo_head_folder() is None:
        pytest.skip("the demo head is not installed in this copy of the package")
    head, ex = load_head_and_extractor(demo_head_folder(), device="cpu")
    region, cache = Region(0, 256, 0, 1536, 1536), FeatureCache()
    with open_slide(sample_slide_path()) as slide:
        after = drive(predict_region(slide, region, head=head, extractor=ex, cache=cache), show=False)
        before = drive(predict_region(slide, region, head=head, extractor=ex, cache=cache, blend=0), show=False)
    assert before.cache["misses"] == 0  # the same tiles, from the cache: only the stitching differs
    seams_before = seam_ratios(before.labels, tile=ex.tile_size, origin=(256, 0))
    seams_after = seam_ratios(after.labels, tile=ex.tile_size, origin=(256, 0))
    assert seams_before["rows_ratio"] > 2 and seams_before["cols_ratio"] > 2  # the grid showed
    assert seams_after["rows_ratio"] <= 2 and seams_after["cols_ratio"] <= 2
    assert len(np.unique(after.labels)) == 3


def test_blended_prediction_of_a_region_equals_the_crop_of_a_larger_one_when_tiles_disagree():
    ex = _TileContextFeatures(tile_size=32, halo=6)
    _seam_check(ex, _head(ex), _image(), Region(0, 37, 51, 60, 70))
    _seam_check(ex, _head(ex), _image(), Region(0, 0, 120, 25, 50))  # touches the image border
    _seam_check(ex, _head(ex, mpp=0.5), _image(), Region(0, 41, 33, 57, 64), mpp=0.3)  # resampled


@pytest.mark.slow
def test_no_seams_on_a_tcga_slide_with_the_demo_head(shared_data):
    from napari_pathsegdiff.core.metrics import seam_ratios
    from napari_pathsegdiff.core.slide import open_slide
    from napari_pathsegdiff.engine.shipped_models import demo_head_folder
    from napari_pathsegdiff.models.heads import load_head_and_extractor

    if demo_head_folder() is None:
        pytest.skip("the demo head is not installed in this copy of the package")
    head, ex = load_head_and_extractor(demo_head_folder(), device="cpu")
    region = Region(0, 512, 512, 1536, 1536)  # tissue and glass of the 0.5 µm/px pyramid
    with open_slide(shared_data / "slides" / "TCGA-CR-7395-pyramid.tif") as slide:
        pred = drive(predict_region(slide, region, head=head, extractor=ex), show=False)
    seams = seam_ratios(pred.labels, tile=ex.tile_size, origin=(512, 512))
    assert seams["rows_ratio"] <= 2 and seams["cols_ratio"] <= 2
    assert len(np.unique(pred.labels)) >= 2
