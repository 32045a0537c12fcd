"""The napari plugin in a real viewer: reader, sample data, dock widget, writers, preferences."""

from __future__ import annotations

import importlib
import json
from importlib.resources import files

import numpy as np
import pytest
from _synthetic_slides import tissue_like, write_pyramid

from napari_pathsegdiff._reader import SLIDE_SUFFIXES, get_reader, read_slide
from napari_pathsegdiff._sample_data import sample_slide_path
from napari_pathsegdiff.core.ome_writer import (
    read_labels_ome_tiff,
    read_labels_ome_zarr,
    write_labels_ome_tiff,
)
from napari_pathsegdiff.core.slide import SlideError

PLUGIN = "napari-pathsegdiff"


@pytest.fixture(scope="module")
def pyramid_tif(tmp_path_factory):
    path = tmp_path_factory.mktemp("plugin") / "pyramid.tif"
    return write_pyramid(path, tissue_like(1024, 1536), levels=3, mpp=0.25)


@pytest.fixture(scope="module")
def no_mpp_tif(tmp_path_factory):
    path = tmp_path_factory.mktemp("plugin") / "no-mpp.tif"
    return write_pyramid(path, tissue_like(512, 512), levels=2, mpp=None)


def test_tests_never_touch_the_users_napari_settings():
    from napari.settings import get_settings

    assert get_settings().config_path is None


# --- manifest -----------------------------------------------------------------------------


def _manifest():
    from npe2 import PluginManifest

    return PluginManifest.from_file(str(files("napari_pathsegdiff") / "napari.yaml"))


def test_every_python_name_in_the_manifest_imports():
    manifest = _manifest()
    assert manifest.name == PLUGIN
    for command in manifest.contributions.commands:
        module, _, attribute = command.python_name.partition(":")
        assert callable(getattr(importlib.import_module(module), attribute)), command.python_name


def test_reader_suffixes_cover_the_manifest_patterns():
    patterns = [p for r in _manifest().contributions.readers for p in r.filename_patterns]
    assert {"." + p.rsplit(".", 1)[1] for p in patterns} == set(SLIDE_SUFFIXES)


# --- reader without a viewer --------------------------------------------------------------


def test_reader_claims_slides(pyramid_tif):
    assert get_reader(str(pyramid_tif)) is read_slide
    assert get_reader(str(sample_slide_path())) is read_slide


def test_reader_returns_none_for_files_that_are_not_its_own(tmp_path, pyramid_tif):
    png = tmp_path / "picture.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    renamed = tmp_path / "picture.svs"
    renamed.write_bytes(png.read_bytes())
    empty = tmp_path / "empty.svs"
    empty.write_bytes(b"")
    import tifffile

    fluo = tmp_path / "fluo.tif"
    tifffile.imwrite(fluo, np.zeros((32, 32), np.uint16))
    mask = tmp_path / "mask.ome.tif"
    write_labels_ome_tiff(mask, np.zeros((32, 32), np.uint8), mpp=0.5)
    for path in (png, renamed, empty, fluo, mask, tmp_path, tmp_path / "missing.svs"):
        assert get_reader(str(path)) is None, path
    assert get_reader(pyramid_tif) is None  # not a str
    assert get_reader([str(pyramid_tif), str(pyramid_tif)]) is None  # stacks are not slides


def test_reader_claims_a_truncated_slide_and_says_what_is_wrong(tmp_path):
    data = sample_slide_path().read_bytes()
    path = tmp_path / "truncated.svs"
    path.write_bytes(data[: len(data) // 2])
    reader = get_reader(str(path))
    assert reader is read_slide
    with pytest.raises(SlideError, match="truncated.svs: .*truncated or damaged"):
        reader(str(path))


def test_reader_layer_data(pyramid_tif, no_mpp_tif):
    [(levels, meta, kind)] = read_slide(str(pyramid_tif))
    assert kind == "image"
    assert [lv.shape for lv in levels] == [(1024, 1536, 3), (512, 768, 3), (256, 384, 3)]
    assert meta["multiscale"] and meta["rgb"] and meta["contrast_limits"] == [0, 255]
    assert meta["scale"] == pytest.approx((0.25, 0.25))
    assert meta["units"] == ("micrometer", "micrometer")
    assert meta["name"] == "pyramid"
    assert meta["metadata"]["mpp"] == pytest.approx(0.25) and meta["metadata"]["mpp_known"]
    assert meta["metadata"]["slide_path"] == str(pyramid_tif)
    assert meta["metadata"]["downsamples"] == [(1.0, 1.0), (2.0, 2.0), (4.0, 4.0)]

    [(_, meta, _)] = read_slide(str(no_mpp_tif))
    assert meta["scale"] == (1.0, 1.0) and "units" not in meta
    assert meta["metadata"]["mpp"] is None and meta["metadata"]["mpp_known"] is False
    assert "scale is in pixels" in meta["metadata"]["note"]


# --- in a real viewer ---------------------------------------------------------------------


@pytest.mark.gui
def test_open_with_the_plugin_gives_one_multiscale_layer_in_micrometres(make_napari_viewer, pyramid_tif):
    viewer = make_napari_viewer()
    layers = viewer.open(str(pyramid_tif), plugin=PLUGIN)
    assert len(layers) == 1 and len(viewer.layers) == 1
    layer = viewer.layers[0]
    assert layer._type_string == "image"
    assert layer.multiscale and layer.rgb
    assert len(layer.data) == 3 and layer.data[0].shape == (1024, 1536, 3)
    assert tuple(layer.scale) == pytest.approx((0.25, 0.25))
    assert [str(u) for u in layer.units] == ["micrometer", "micrometer"]
    assert layer.metadata["slide_path"] == str(pyramid_tif)


@pytest.mark.gui
def test_real_slide_without_mpp_opens_in_pixels(make_napari_viewer, shared_data):
    viewer = make_napari_viewer()
    path = shared_data / "slides" / "TCGA-CR-7395-01A-01-TS1.svs"
    [layer] = viewer.open(str(path), plugin=PLUGIN)
    assert layer.multiscale and len(layer.data) == 2
    assert tuple(layer.scale) == (1.0, 1.0)
    assert layer.metadata["mpp_known"] is False


@pytest.mark.gui
def test_sample_data_loads_the_cmu_slide(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "cmu1_small_region")
    [layer] = viewer.layers
    assert layer.name == "CMU-1-Small-Region"
    assert layer.multiscale and layer.data[0].shape == (2967, 2220, 3)
    assert tuple(layer.scale) == pytest.approx((0.499, 0.499))
    assert layer.metadata["objective_power"] == 20.0


@pytest.mark.gui
def test_dock_widget_opens_and_follows_the_slides(make_napari_viewer, pyramid_tif, no_mpp_tif):
    from napari_pathsegdiff._widgets import SegmentationWidget

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "PathSegDiff")
    assert isinstance(widget, SegmentationWidget)
    assert widget.info()["Slide"].startswith("no slide open")

    viewer.open_sample(PLUGIN, "cmu1_small_region")
    info = widget.info()
    assert info["Slide"] == "CMU-1-Small-Region"
    assert info["File"].endswith("CMU-1-Small-Region.svs")
    assert info["Levels"] == "1: 2220×2967"
    assert info["µm/px"] == "0.499"
    assert info["Objective"] == "20x"

    viewer.open(str(no_mpp_tif), plugin=PLUGIN)
    assert widget.info()["Slide"] == "no-mpp"
    assert widget.info()["µm/px"] == "unknown (scale in pixels)"
    viewer.layers.selection.active = viewer.layers["CMU-1-Small-Region"]
    assert widget.info()["Slide"] == "CMU-1-Small-Region"

    viewer.layers.clear()
    assert widget.info()["Slide"].startswith("no slide open")


@pytest.mark.gui
def test_labels_written_as_ome_tiff_read_back_identical_with_mpp(make_napari_viewer, tmp_path):
    import napari

    viewer = make_napari_viewer()
    mask = np.zeros((300, 400), np.uint8)
    mask[50:120, 60:300] = 2
    mask[200:, :100] = 1
    layer = viewer.add_labels(mask, scale=(0.499, 0.499), metadata={"mpp": 0.499}, name="mask")
    [written] = napari.save_layers(str(tmp_path / "mask.ome.tif"), [layer], plugin=PLUGIN)
    back, mpp = read_labels_ome_tiff(written)
    np.testing.assert_array_equal(back, mask)
    assert mpp == pytest.approx(0.499)

    # no mpp in the metadata: the scale counts when its units are lengths
    classes = [{"id": 1, "name": "stroma", "color": "#00ff00"}, {"id": 2, "name": "tumour", "color": "#ff0000"}]
    in_nm = viewer.add_labels(
        mask, scale=(250, 250), units=("nm", "nm"), name="nm", metadata={"classes": classes}
    )
    [written] = napari.save_layers(str(tmp_path / "nm.ome.zarr"), [in_nm], plugin=PLUGIN)
    back, mpp = read_labels_ome_zarr(written)
    np.testing.assert_array_equal(back.compute(), mask)
    assert mpp == pytest.approx(0.25)
    image_label = json.loads((tmp_path / "nm.ome.zarr" / ".zattrs").read_text())["image-label"]
    assert image_label["properties"] == [
        {"label-value": 1, "class": "stroma"}, {"label-value": 2, "class": "tumour"}
    ]
    assert image_label["colors"][1] == {"label-value": 2, "rgba": [255, 0, 0, 255]}

    in_pixels = viewer.add_labels(mask, name="px")
    [written] = napari.save_layers(str(tmp_path / "px.ome.tif"), [in_pixels], plugin=PLUGIN)
    assert read_labels_ome_tiff(written)[1] is None


# --- the reader preference ----------------------------------------------------------------


def test_setup_reader_adds_preferences_without_clobbering_the_users(tmp_path):
    from napari.settings import NapariSettings

    from napari_pathsegdiff._setup_reader import manifest_reader_patterns, prefer_plugin_reader

    settings = NapariSettings(config_path=tmp_path / "settings.yaml")
    settings.plugins.extension2reader = {"*.tif": "someone-else", "*.czi": "bioio"}
    result = prefer_plugin_reader(settings)
    _, lower = manifest_reader_patterns()
    assert "*.svs" in lower and "*.tif" in lower
    patterns = lower + [p.upper() for p in lower]
    assert result.kept_other == {"*.tif": "someone-else"}
    assert sorted(result.added) == sorted(p for p in patterns if p != "*.tif")
    expected = {p: PLUGIN for p in patterns} | {"*.tif": "someone-else", "*.czi": "bioio"}
    assert settings.plugins.extension2reader == expected
    # saved to the settings file, and a second run changes nothing
    assert NapariSettings(config_path=tmp_path / "settings.yaml").plugins.extension2reader == expected
    again = prefer_plugin_reader(settings)
    assert again.added == [] and sorted(again.already) == sorted(result.added)
    assert settings.plugins.extension2reader == expected


@pytest.mark.gui
def test_with_the_preference_napari_opens_slides_without_asking(make_napari_viewer, pyramid_tif):
    from napari.errors import MultipleReaderError
    from napari.settings import get_settings

    from napari_pathsegdiff._setup_reader import prefer_plugin_reader

    # plugin=None is what `napari slide.tif`, File > Open and drag-and-drop do: napari picks
    # the reader from the preferences, or asks when several readers claim the file
    viewer = make_napari_viewer()
    with pytest.raises(MultipleReaderError):  # napari's own reader also claims *.tif
        viewer.open(str(pyramid_tif), plugin=None)
    prefer_plugin_reader(get_settings())
    [layer] = viewer.open(str(pyramid_tif), plugin=None)
    assert layer.multiscale and layer.source.reader_plugin == PLUGIN
