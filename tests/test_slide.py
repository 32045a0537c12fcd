"""Slides open lazily as dask pyramids, with their physical scale, and bad files say why."""

from __future__ import annotations

import os

import dask.array as da
import numpy as np
import pytest
import tifffile
from _synthetic_slides import TILE, tissue_like, write_pyramid

from napari_pathsegdiff._sample_data import sample_slide_path
from napari_pathsegdiff.core.region import Region
from napari_pathsegdiff.core.slide import Slide, SlideError, is_tiff_file, open_slide

MPP = 0.25
SHAPE0 = (1024, 1536)


@pytest.fixture(scope="module")
def pyramid_image() -> np.ndarray:
    return tissue_like(*SHAPE0)


@pytest.fixture(scope="module")
def pyramid_tif(tmp_path_factory, pyramid_image):
    path = tmp_path_factory.mktemp("slides") / "pyramid.tif"
    return write_pyramid(path, pyramid_image, levels=3, mpp=MPP)


@pytest.fixture
def decodes(monkeypatch):
    """Tile indices decoded by tifffile (every page), in call order."""
    calls: list[tuple[int, int]] = []
    original = tifffile.TiffPage.decode  # a cached property returning the decode function

    def counting(page):
        decode = original.__get__(page, type(page))

        def wrapper(data, index, **kwargs):
            calls.append((page.index, index))
            return decode(data, index, **kwargs)

        return wrapper

    monkeypatch.setattr(tifffile.TiffPage, "decode", property(counting))
    return calls


# --- the synthetic pyramid ----------------------------------------------------------------


def test_opening_decodes_no_tile(pyramid_tif, decodes):
    with open_slide(pyramid_tif) as slide:
        assert all(isinstance(level, da.Array) for level in slide.levels)
    assert decodes == []


def test_reading_a_region_decodes_only_the_overlapping_tiles(pyramid_tif, pyramid_image, decodes):
    tiles_across = SHAPE0[1] // TILE
    with open_slide(pyramid_tif) as slide:
        region = slide.read_region(Region(level=0, y=300, x=300, height=256, width=256))
        assert sorted(index for _, index in decodes) == [
            1 * tiles_across + 1, 1 * tiles_across + 2, 2 * tiles_across + 1, 2 * tiles_across + 2
        ]
        decodes.clear()
        aligned = slide.read_region(Region(level=0, y=512, x=768, height=256, width=256))
        assert [index for _, index in decodes] == [2 * tiles_across + 3]
    assert region.shape == (256, 256, 3) and region.dtype == np.uint8
    # JPEG is lossy: close to the pixels written, not identical
    assert np.abs(region.astype(int) - pyramid_image[300:556, 300:556]).mean() < 3
    assert np.abs(aligned.astype(int) - pyramid_image[512:768, 768:1024]).mean() < 3


def test_pyramid_levels_shapes_downsamples_and_scale(pyramid_tif):
    with open_slide(pyramid_tif) as slide:
        assert [level.shape for level in slide.levels] == [(1024, 1536, 3), (512, 768, 3), (256, 384, 3)]
        assert all(level.dtype == np.uint8 for level in slide.levels)
        assert slide.downsamples == [(1.0, 1.0), (2.0, 2.0), (4.0, 4.0)]
        assert slide.mpp == pytest.approx(MPP)
        assert slide.metadata["mpp_source"] == "TIFF resolution tags"
        assert [slide.level_mpp(i) for i in range(3)] == pytest.approx([0.25, 0.5, 1.0])
        assert slide.best_level_for_mpp(0.5) == 1
        assert slide.best_level_for_mpp(0.52) == 1
        assert slide.best_level_for_mpp(0.98) == 2  # 1.0 is within the 5 % tolerance
        assert slide.best_level_for_mpp(0.1) == 0  # finer than every level: the finest
        assert slide.best_level_for_mpp(10.0) == 2
        assert slide.objective_power is None


def test_read_region_pads_outside_the_level_with_white(pyramid_tif):
    with open_slide(pyramid_tif) as slide:
        level1 = np.asarray(slide.levels[1][:50, :70])
        out = slide.read_region(Region(level=1, y=-30, x=-20, height=80, width=90))
        assert out.shape == (80, 90, 3)
        assert (out[:30] == 255).all() and (out[:, :20] == 255).all()
        np.testing.assert_array_equal(out[30:, 20:], level1)
        corner = slide.read_region(Region(level=2, y=250, x=380, height=10, width=10))
        assert (corner[6:] == 255).all() and (corner[:, 4:] == 255).all()
        assert not (corner[:6, :4] == 255).all()
        outside = slide.read_region(Region(level=0, y=5000, x=0, height=8, width=8))
        assert (outside == 255).all()


def test_identity_is_stable_and_changes_with_the_file(tmp_path, pyramid_image):
    path = write_pyramid(tmp_path / "a.tif", pyramid_image[:256, :256], levels=1, mpp=0.5)
    with open_slide(path) as first, open_slide(path) as second:
        assert first.identity == second.identity
        assert str(path.resolve()) in first.identity
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    with open_slide(path) as touched:
        assert touched.identity != first.identity


def test_close_releases_the_file_handle(pyramid_tif):
    psutil = pytest.importorskip("psutil")

    def open_here():
        return [f.path for f in psutil.Process().open_files() if f.path == str(pyramid_tif)]

    slide = open_slide(pyramid_tif)
    assert open_here()
    slide.close()
    slide.close()  # closing twice is harmless
    assert not open_here()


# --- metadata -----------------------------------------------------------------------------


def test_ome_physical_size_with_units(tmp_path):
    path = tmp_path / "ome.ome.tif"
    image = tissue_like(300, 400)
    metadata = {"axes": "YXS", "PhysicalSizeX": 250.0, "PhysicalSizeXUnit": "nm",
                "PhysicalSizeY": 250.0, "PhysicalSizeYUnit": "nm"}
    tifffile.imwrite(path, image, tile=(TILE, TILE), photometric="rgb", metadata=metadata)
    with open_slide(path) as slide:
        assert slide.mpp == pytest.approx(0.25)
        assert slide.metadata["mpp_source"] == "OME PhysicalSizeX/Y"
        assert slide.metadata["vendor"] == "ome"
        np.testing.assert_array_equal(np.asarray(slide.levels[0]), image)


@pytest.mark.parametrize(
    "resolution, unit, note",
    [((72, 72), "INCH", "not a microscope's"), ((1, 1), "NONE", "without a unit")],
)
def test_meaningless_resolution_tags_leave_mpp_unknown(tmp_path, resolution, unit, note):
    path = tmp_path / "editor.tif"
    tifffile.imwrite(path, tissue_like(64, 64), photometric="rgb", resolution=resolution, resolutionunit=unit)
    with open_slide(path) as slide:
        assert slide.mpp is None
        assert slide.metadata["mpp_source"] is None
        assert any(note in n for n in slide.metadata["notes"])
        assert slide.level_mpp(0) is None
        with pytest.raises(SlideError, match="µm/px of this slide is unknown"):
            slide.best_level_for_mpp(0.5)


def test_grayscale_8bit_opens_as_grey_rgb_with_a_note(tmp_path):
    path = tmp_path / "grey.tif"
    grey = np.arange(100 * 120, dtype=np.uint32).reshape(100, 120).astype(np.uint8)
    tifffile.imwrite(path, grey)
    with open_slide(path) as slide:
        rgb = np.asarray(slide.levels[0])
        assert rgb.shape == (100, 120, 3)
        np.testing.assert_array_equal(rgb, np.stack([grey] * 3, axis=-1))
        assert slide.metadata["grayscale"] is True


def test_rgba_drops_alpha(tmp_path):
    path = tmp_path / "rgba.tif"
    rgba = np.dstack([tissue_like(40, 50), np.full((40, 50), 7, np.uint8)])
    tifffile.imwrite(path, rgba, photometric="rgb", extrasamples=["unassalpha"])
    with open_slide(path) as slide:
        np.testing.assert_array_equal(np.asarray(slide.levels[0]), rgba[..., :3])
        assert slide.metadata["alpha_dropped"] is True


def test_large_single_level_image_gets_lazy_computed_levels(tmp_path, decodes):
    path = tmp_path / "flat.tif"
    image = tissue_like(5000, 600)
    tifffile.imwrite(path, image, tile=(TILE, TILE), photometric="rgb")
    with open_slide(path) as slide:
        assert decodes == []
        assert [level.shape for level in slide.levels] == [(5000, 600, 3), (2500, 300, 3), (1250, 150, 3)]
        assert slide.metadata["computed_levels"] == 2
        assert slide.downsamples[1] == (2.0, 2.0) and slide.downsamples[2] == (4.0, 4.0)
        corner = np.asarray(slide.levels[1][:10, :10])
        expected = image[:20, :20].astype(float).reshape(10, 2, 10, 2, 3).mean(axis=(1, 3))
        np.testing.assert_array_equal(corner, np.round(expected).astype(np.uint8))
        # that corner of level 1 decoded only the tiles of the first level-0 chunk
        # (1024 x 600 px: 4 rows of 3 tiles), never the whole level
        assert slide.levels[0].chunksize[:2] == (1024, 600)
        assert {index for _, index in decodes} == set(range(12))


# --- in-memory slides ---------------------------------------------------------------------


def test_from_array_rgb_and_rgba():
    rgb = tissue_like(70, 90)
    slide = Slide.from_array(rgb, mpp=0.5)
    assert len(slide.levels) == 1 and slide.downsamples == [(1.0, 1.0)]
    assert slide.mpp == 0.5 and slide.path is None
    assert slide.identity.startswith("array:")
    assert slide.identity == Slide.from_array(rgb.copy()).identity
    assert slide.identity != Slide.from_array(rgb[::-1]).identity
    np.testing.assert_array_equal(slide.read_region(Region(0, 10, 20, 30, 40)), rgb[10:40, 20:60])
    rgba = np.dstack([rgb, np.zeros((70, 90), np.uint8)])
    np.testing.assert_array_equal(np.asarray(Slide.from_array(rgba).levels[0]), rgb)
    assert Slide.from_array(rgb, identity="mine").identity == "mine"


@pytest.mark.parametrize(
    "array, match",
    [
        (np.zeros((10, 10), np.uint8), r"shape \(10, 10\).*Convert grayscale"),
        (np.zeros((10, 10, 2), np.uint8), r"shape \(10, 10, 2\)"),
        (np.zeros((10, 10, 3), np.float32), "dtype uint8.*got float32"),
    ],
)
def test_from_array_refuses_what_is_not_rgb_uint8(array, match):
    with pytest.raises(SlideError, match=match):
        Slide.from_array(array)


# --- bad input ----------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="Slide file not found: .*nothere.svs"):
        open_slide(tmp_path / "nothere.svs")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.svs"
    path.write_bytes(b"")
    with pytest.raises(SlideError, match=r"empty.svs is empty \(0 bytes\)"):
        open_slide(path)


def test_png_renamed_svs(tmp_path):
    path = tmp_path / "picture.svs"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    assert not is_tiff_file(path)
    with pytest.raises(SlideError, match="picture.svs is not a TIFF-based slide .it is a PNG image"):
        open_slide(path)


def test_folder(tmp_path):
    with pytest.raises(SlideError, match="is a folder, not a slide file"):
        open_slide(tmp_path)


def test_truncated_svs(tmp_path):
    data = sample_slide_path().read_bytes()
    path = tmp_path / "truncated.svs"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideError, match="truncated.svs: no image directory can be read.*truncated or damaged"):
        open_slide(path)


def test_truncated_tile_data(tmp_path, pyramid_image):
    full = write_pyramid(tmp_path / "full.tif", pyramid_image, levels=2, mpp=MPP, compression="zlib")
    data = full.read_bytes()
    path = tmp_path / "cut.tif"
    path.write_bytes(data[: int(len(data) * 0.8)])
    with pytest.raises(SlideError, match=r"cut.tif is truncated: the image data of level \d ends at byte"):
        open_slide(path)


def test_16bit_single_channel_is_refused_with_the_reason(tmp_path):
    path = tmp_path / "fluo.tif"
    tifffile.imwrite(path, np.zeros((64, 64), np.uint16))
    with pytest.raises(SlideError, match=r"fluo.tif is a 16-bit single-channel image \(uint16\).*built-in reader"):
        open_slide(path)


def test_multichannel_stack_is_refused(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.zeros((5, 32, 32), np.uint8))
    with pytest.raises(SlideError, match=r"stack.tif holds an image with axes 'QYX', shape \(5, 32, 32\)"):
        open_slide(path)


# --- the real slides ----------------------------------------------------------------------

REAL = {
    "CMU-1-Small-Region.svs": ([(2967, 2220, 3)], 0.499, 20.0),
    "TCGA-CR-7395-01A-01-TS1.svs": ([(3567, 4443, 3), (1783, 2221, 3)], None, None),
    "TCGA-CR-7395-pyramid.tif": (
        [(3567, 4443, 3), (1783, 2221, 3), (891, 1110, 3), (445, 555, 3), (222, 277, 3)],
        0.5,
        None,
    ),
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_slides(shared_data, name, decodes):
    shapes, mpp, objective = REAL[name]
    with open_slide(shared_data / "slides" / name) as slide:
        assert decodes == []
        assert [level.shape for level in slide.levels] == shapes
        assert slide.mpp == (pytest.approx(mpp) if mpp else None)
        assert slide.objective_power == objective
        assert "computed_levels" not in slide.metadata
        h, w = shapes[-1][:2]
        centre = slide.read_region(Region(len(shapes) - 1, h // 2 - 64, w // 2 - 64, 128, 128))
        assert centre.shape == (128, 128, 3)
        assert centre.std() > 5  # tissue, not blank background
        assert decodes  # the pixels came from decoded tiles


def test_real_svs_associated_images_are_not_the_slide(shared_data):
    with open_slide(shared_data / "slides" / "CMU-1-Small-Region.svs") as slide:
        assert slide.metadata["series"] == "Baseline"
        assert slide.metadata["vendor"] == "aperio"
        assert slide.metadata["mpp_source"] == "aperio MPP"


def test_a_damaged_file_gives_one_message_and_no_tifffile_log(tmp_path, caplog):
    data = sample_slide_path().read_bytes()
    path = tmp_path / "cut.svs"
    path.write_bytes(data[: len(data) // 2])
    with caplog.at_level("DEBUG"):
        with pytest.raises(SlideError, match=r"cut\.svs: no image directory can be read"):
            open_slide(path)
    assert [r for r in caplog.records if r.name.startswith("tifffile")] == []
    with caplog.at_level("DEBUG"), tifffile.TiffFile(path) as tif:  # what the silence hides
        assert not tif.series
    assert any("invalid offset" in r.getMessage() for r in caplog.records if r.name == "tifffile")
