"""Reading images and masks: RGB only, alpha dropped, masks paired by name, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_pathsegdiff.core.images import (
    ImageError,
    check_same_shape,
    file_stem,
    list_images,
    pair_images_and_masks,
    read_mask,
    read_rgb,
    write_labels,
)


def _rgb(h=6, w=8):
    return np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3)


def test_rgb_png_jpeg_and_tiff_read_as_uint8_rgb(tmp_path):
    image = _rgb()
    Image.fromarray(image).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "b.tif", image, photometric="rgb")
    tifffile.imwrite(tmp_path / "c.tiff", np.moveaxis(image, -1, 0), photometric="rgb", planarconfig="separate")
    Image.fromarray(image).save(tmp_path / "d.jpg", quality=100)
    for name in ("a.png", "b.tif", "c.tiff"):
        np.testing.assert_array_equal(read_rgb(tmp_path / name), image)
    jpeg = read_rgb(tmp_path / "d.jpg")
    assert jpeg.shape == (6, 8, 3) and jpeg.dtype == np.uint8


def test_rgba_alpha_is_dropped(tmp_path):
    rgba = np.dstack([_rgb(), np.full((6, 8), 7, np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "a.png"), _rgb())


def test_grayscale_and_16_bit_images_are_refused_naming_the_file(tmp_path):
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "gray.png")
    with pytest.raises(ImageError, match=r"gray\.png is a grayscale image .*need RGB"):
        read_rgb(tmp_path / "gray.png")
    tifffile.imwrite(tmp_path / "rgb16.tif", np.zeros((5, 5, 3), np.uint16), photometric="rgb")
    with pytest.raises(ImageError, match=r"rgb16\.tif has uint16 pixels: only 8-bit RGB"):
        read_rgb(tmp_path / "rgb16.tif")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ImageError, match=r"Cannot read .*broken\.png"):
        read_rgb(tmp_path / "broken.png")
    with pytest.raises(FileNotFoundError, match=r"missing\.png does not exist"):
        read_rgb(tmp_path / "missing.png")


def test_whole_slide_sized_tiff_is_refused_with_a_hint(tmp_path):
    tifffile.imwrite(tmp_path / "big.tif", np.zeros((40, 50, 3), np.uint8), photometric="rgb")
    with pytest.raises(ImageError, match=r"big\.tif is 40x50 pixels, too large .*--region"):
        read_rgb(tmp_path / "big.tif", max_pixels=1000)


def test_masks_single_channel_palette_and_grey_rgb(tmp_path):
    ids = np.array([[0, 1, 2], [4, 5, 1]], np.uint8)
    Image.fromarray(ids).save(tmp_path / "l.png")
    pal = Image.fromarray(ids, mode="P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9, 1, 2, 3] + [0] * 750)
    pal.save(tmp_path / "p.png")
    Image.fromarray(np.dstack([ids] * 3)).save(tmp_path / "g.png")
    tifffile.imwrite(tmp_path / "t.tif", ids.astype(np.uint16))
    for name in ("l.png", "p.png", "g.png", "t.tif"):
        m = read_mask(tmp_path / name)
        assert m.dtype == np.uint8
        np.testing.assert_array_equal(m, ids)
    colour = np.dstack([ids, ids * 2, ids])
    Image.fromarray(colour).save(tmp_path / "c.png")
    with pytest.raises(ImageError, match=r"Mask .*c\.png is a colour image"):
        read_mask(tmp_path / "c.png")
    tifffile.imwrite(tmp_path / "big.tif", np.array([[0, 300]], np.uint16))
    with pytest.raises(ImageError, match=r"big\.tif holds values 0..300: class ids must be 0..255"):
        read_mask(tmp_path / "big.tif")


def test_images_pair_with_same_named_masks(tmp_path):
    (tmp_path / "im").mkdir()
    (tmp_path / "ma").mkdir()
    Image.fromarray(_rgb()).save(tmp_path / "im" / "a.png")
    tifffile.imwrite(tmp_path / "im" / "b.ome.tif", _rgb(), photometric="rgb")
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(tmp_path / "ma" / "a.tif")
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(tmp_path / "ma" / "b.png")
    (tmp_path / "im" / "notes.txt").write_text("ignored")
    pairs = pair_images_and_masks(tmp_path / "im", tmp_path / "ma")
    assert [(i.name, m.name) for i, m in pairs] == [("a.png", "a.tif"), ("b.ome.tif", "b.png")]
    assert file_stem("x.ome.tiff") == "x" and file_stem("y.JPG") == "y"

    Image.fromarray(_rgb()).save(tmp_path / "im" / "c.png")
    with pytest.raises(ImageError, match=r"No mask in .*ma for image\(s\) c\.png"):
        pair_images_and_masks(tmp_path / "im", tmp_path / "ma")
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(tmp_path / "ma" / "c.png")
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(tmp_path / "ma" / "c.tif")
    with pytest.raises(ImageError, match=r"Several masks match image .*c\.png"):
        pair_images_and_masks(tmp_path / "im", tmp_path / "ma")


def test_empty_or_missing_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images")
    with pytest.raises(ImageError, match=r"No image files \(PNG, JPEG, TIFF\) in .*empty"):
        list_images(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"image folder .*nope does not exist"):
        list_images(tmp_path / "nope")


def test_shape_mismatch_names_both_files():
    with pytest.raises(ImageError, match=r"Image img/a\.png is 6x8 .* mask masks/a\.png is 6x7"):
        check_same_shape(_rgb(), np.zeros((6, 7)), "img/a.png", "masks/a.png")


def test_write_labels_round_trip(tmp_path):
    labels = np.array([[0, 1], [4, 5]], np.uint8)
    for name in ("x.png", "y.tif"):
        write_labels(tmp_path / name, labels)
        np.testing.assert_array_equal(read_mask(tmp_path / name), labels)
    with pytest.raises(ValueError, match="uint8"):
        write_labels(tmp_path / "z.png", labels.astype(np.int32))
