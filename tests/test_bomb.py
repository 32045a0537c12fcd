"""Decompression bombs: a small TIFF whose header claims 10⁶ x 10⁶ RGB pixels is refused at
once, with a message naming the file, by every read path (slides, the napari reader, images
read by the command line), and a genuine large file opens when the limit is raised."""

from __future__ import annotations

import math
import struct
import time
import zlib

import numpy as np
import pytest
import tifffile
import zarr

from napari_pathsegdiff.core.images import ImageError, read_mask, read_rgb
from napari_pathsegdiff.core.slide import SlideError, open_slide

SIDE = 10**6
TILE = 1024


def write_bomb(path, side: int = SIDE, tile: int = TILE):
    """A classic TIFF of ``side`` x ``side`` RGB pixels in ``tile``-px zlib tiles, all of whose
    tile offsets point at one compressed tile of zeros: about 7.6 MB for 10⁶ px a side."""
    n = math.ceil(side / tile) ** 2
    data = zlib.compress(bytes(tile * tile * 3))
    entries = [  # (tag, type, count, value): SHORT = 3, LONG = 4
        (256, 4, 1, side), (257, 4, 1, side), (258, 3, 3, None), (259, 3, 1, 8),
        (262, 3, 1, 2), (277, 3, 1, 3), (284, 3, 1, 1), (322, 4, 1, tile), (323, 4, 1, tile),
        (324, 4, n, None), (325, 4, n, None),
    ]
    ifd_at = 8
    extra_at = ifd_at + 2 + 12 * len(entries) + 4
    bits_at, data_at = extra_at, extra_at + 6
    offsets_at = data_at + len(data)
    counts_at = offsets_at + 4 * n
    out = [struct.pack("<2sHI", b"II", 42, ifd_at), struct.pack("<H", len(entries))]
    pointers = {258: bits_at, 324: offsets_at, 325: counts_at}
    for tag, kind, count, value in entries:
        if value is None:
            out.append(struct.pack("<HHII", tag, kind, count, pointers[tag]))
        elif kind == 3:
            out.append(struct.pack("<HHIHH", tag, kind, count, value, 0))
        else:
            out.append(struct.pack("<HHII", tag, kind, count, value))
    out += [struct.pack("<I", 0), struct.pack("<3H", 8, 8, 8), data,
            np.full(n, data_at, "<u4").tobytes(), np.full(n, len(data), "<u4").tobytes()]
    path.write_bytes(b"".join(out))
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    return write_bomb(tmp_path_factory.mktemp("bomb") / "bomb.tif")


def test_the_bomb_is_what_it_claims(bomb):
    assert 7_000_000 < bomb.stat().st_size < 8_000_000
    with tifffile.TiffFile(bomb) as tif:
        page = tif.pages.first
        assert page.shape == (SIDE, SIDE, 3) and page.dtype == np.uint8
        assert len(page.dataoffsets) == math.ceil(SIDE / TILE) ** 2 == 954_529
        assert len(set(page.dataoffsets)) == 1  # every tile is the same few bytes
        first_tile = zarr.open_array(tif.series[0].aszarr(), mode="r", zarr_format=2)[:TILE, :TILE]
    assert first_tile.shape == (TILE, TILE, 3) and not first_tile.any()


def test_open_slide_refuses_it_at_once_naming_the_file(bomb):
    t0 = time.perf_counter()
    with pytest.raises(SlideError) as caught:
        open_slide(bomb)
    print(f"refused in {time.perf_counter() - t0:.3f} s")
    message = str(caught.value)
    assert message.startswith(f"{bomb} claims 1,000,000 x 1,000,000 pixels (1,000.0 gigapixels)")
    assert "decompression bomb" in message and "max_pixels=N" in message and "--max-pixels N" in message


def test_the_limits_can_be_raised_for_a_genuine_file(tmp_path):
    path = tmp_path / "small.tif"
    tifffile.imwrite(path, np.zeros((600, 700, 3), np.uint8), tile=(256, 256), photometric="rgb")
    with pytest.raises(SlideError, match="claims 600 x 700 pixels"):
        open_slide(path, max_pixels=600 * 700 - 1)
    with pytest.raises(SlideError, match=r"one tile or strip .* decodes to 196,608 bytes"):
        open_slide(path, max_tile_bytes=100_000)
    with open_slide(path, max_pixels=600 * 700) as slide:
        assert slide.shape == (600, 700)


def test_a_single_strip_giant_is_refused_by_its_decoded_bytes(tmp_path):
    path = tmp_path / "strip.tif"
    tifffile.imwrite(path, np.zeros((64, 64, 3), np.uint8), photometric="rgb", rowsperstrip=64)
    with pytest.raises(SlideError, match="12,288 bytes"):
        open_slide(path, max_tile_bytes=12_287)


def test_images_read_by_the_command_line_refuse_it(bomb, tmp_path):
    with pytest.raises(ImageError, match=r"bomb\.tif is 1000000x1000000 pixels, too large"):
        read_rgb(bomb)
    with pytest.raises(ImageError, match=r"bomb\.tif is 1000000x1000000 pixels, too large"):
        read_mask(bomb)
    stack = tmp_path / "stack.tif"  # few pixels a page, many pages: bounded by decoded bytes
    tifffile.imwrite(stack, np.zeros((50, 40, 40), np.uint8))
    with pytest.raises(ImageError, match=r"stack\.tif decodes to 80,000 bytes"):
        read_mask(stack, max_pixels=10_000)


def test_the_napari_reader_claims_it_and_raises_the_reason(bomb):
    from napari_pathsegdiff._reader import get_reader

    t0 = time.perf_counter()
    reader = get_reader(str(bomb))
    assert reader is not None  # an 8-bit RGB TIFF: this plugin's own, so the reason is its to give
    with pytest.raises(SlideError, match="claims 1,000,000 x 1,000,000 pixels"):
        reader(str(bomb))
    print(f"reader refused in {time.perf_counter() - t0:.3f} s")
