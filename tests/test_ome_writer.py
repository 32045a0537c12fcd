"""Label masks round-trip through OME-TIFF and OME-Zarr with identical pixels and µm/px."""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pytest
import tifffile

from napari_pathsegdiff.core.ome_writer import (
    label_pyramid,
    read_labels_ome_tiff,
    read_labels_ome_zarr,
    write_labels_ome_tiff,
    write_labels_ome_zarr,
)


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    rng = np.random.default_rng(3)
    mask = np.zeros((700, 1100), np.uint8)
    for value in range(1, 6):
        y, x = rng.integers(0, 600), rng.integers(0, 1000)
        mask[y : y + 150, x : x + 200] = value
    return mask


def test_ome_tiff_round_trip(tmp_path, labels):
    path = write_labels_ome_tiff(tmp_path / "mask.ome.tif", labels, mpp=0.499, name="tumour map")
    back, mpp = read_labels_ome_tiff(path)
    np.testing.assert_array_equal(back, labels)
    assert back.dtype == np.uint8
    assert mpp == pytest.approx(0.499)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome and tif.is_bigtiff
        page = tif.pages.first
        assert page.is_tiled and page.tile == (256, 256)
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert page.get_resolution() == pytest.approx((1e4 / 0.499, 1e4 / 0.499))
        assert [level.shape for level in tif.series[0].levels] == [(700, 1100), (350, 550), (175, 275), (88, 138)]
        assert 'Name="tumour map"' in tif.ome_metadata
    np.testing.assert_array_equal(read_labels_ome_tiff(path, level=2)[0], labels[::4, ::4])


def test_ome_tiff_from_dask_without_mpp_and_wider_dtypes(tmp_path, labels):
    big = da.from_array(labels.astype(np.int64) * 1000, chunks=(300, 400))
    path = write_labels_ome_tiff(tmp_path / "m.ome.tif", big)
    back, mpp = read_labels_ome_tiff(path)
    assert back.dtype == np.uint16  # the smallest unsigned type that holds 5000
    np.testing.assert_array_equal(back, labels.astype(np.int64) * 1000)
    assert mpp is None


def test_ome_zarr_round_trip_with_classes(tmp_path, labels):
    path = write_labels_ome_zarr(
        tmp_path / "mask.ome.zarr",
        labels,
        mpp=0.5,
        class_names={1: "tumour", 2: "stroma"},
        class_colors={1: "#ff0000", 2: (0.0, 0.5, 1.0)},
    )
    back, mpp = read_labels_ome_zarr(path)
    np.testing.assert_array_equal(back.compute(), labels)
    assert mpp == 0.5
    attrs = json.loads((path / ".zattrs").read_text())
    multiscale = attrs["multiscales"][0]
    assert multiscale["version"] == "0.4"
    assert [a["unit"] for a in multiscale["axes"]] == ["micrometer", "micrometer"]
    assert [d["coordinateTransformations"][0]["scale"] for d in multiscale["datasets"]] == [
        [0.5, 0.5], [1.0, 1.0], [2.0, 2.0], [4.0, 4.0]
    ]
    assert attrs["image-label"]["colors"] == [
        {"label-value": 1, "rgba": [255, 0, 0, 255]},
        {"label-value": 2, "rgba": [0, 128, 255, 255]},
    ]
    assert attrs["image-label"]["properties"] == [
        {"label-value": 1, "class": "tumour"},
        {"label-value": 2, "class": "stroma"},
    ]
    assert json.loads((path / "0" / ".zarray").read_text())["zarr_format"] == 2
    np.testing.assert_array_equal(read_labels_ome_zarr(path, level=1)[0].compute(), labels[::2, ::2])


def test_ome_zarr_replaces_a_zarr_but_not_another_folder(tmp_path, labels):
    path = tmp_path / "m.ome.zarr"
    write_labels_ome_zarr(path, labels, mpp=0.5)
    write_labels_ome_zarr(path, labels[:100, :100])  # a zarr: replaced
    back, mpp = read_labels_ome_zarr(path)
    assert back.shape == (100, 100) and mpp is None
    other = tmp_path / "photos"
    other.mkdir()
    (other / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(ValueError, match="photos exists and is not a zarr folder"):
        write_labels_ome_zarr(other, labels)
    assert (other / "holiday.jpg").exists()


def test_pyramid_is_nearest_neighbour():
    labels = np.arange(600 * 520, dtype=np.uint32).reshape(600, 520)
    levels = label_pyramid(labels)
    assert [lv.shape for lv in levels] == [(600, 520), (300, 260), (150, 130)]
    np.testing.assert_array_equal(levels[2].compute(), labels[::4, ::4])


@pytest.mark.parametrize(
    "labels, mpp, match",
    [
        (np.zeros((4, 4, 3), np.uint8), None, r"2D \(height, width\).*got shape \(4, 4, 3\)"),
        (np.full((4, 4), -1, np.int32), None, r"0..4294967295; found -1..-1"),
        (np.zeros((4, 4), np.float32), None, "must be integers; got dtype float32"),
        (np.zeros((4, 4), np.uint8), -0.5, "mpp must be a positive number"),
    ],
)
def test_bad_labels_are_refused(tmp_path, labels, mpp, match):
    with pytest.raises(ValueError, match=match):
        write_labels_ome_tiff(tmp_path / "x.ome.tif", labels, mpp=mpp)
