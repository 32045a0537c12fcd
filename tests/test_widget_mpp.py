"""The slide's µm/px typed in the Model section for a slide whose file records none: kept in the
session, used to segment at the head's scale, carried by exports (real napari viewer, Xvfb)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from _annotation_scene import write_scene
from _synthetic_slides import write_pyramid
from test_widget import WAIT_MS, _dock, _export, _open, _rgb, _segment, scene_head  # noqa: F401 - fixture

from napari_pathsegdiff.core.label_store import LabelStore
from napari_pathsegdiff.engine.session.session_folder import LABELS

pytestmark = pytest.mark.gui


@pytest.fixture
def scene_without_mpp(tmp_path):
    """The annotation scene (0.25 µm/px at level 0) written without any µm/px in the file."""
    scene = write_scene(tmp_path / "with-mpp" / "scene.tif")
    path = tmp_path / "slides" / "scene.tif"
    path.parent.mkdir()
    return write_pyramid(path, tifffile.imread(scene), levels=2, mpp=None, compression="zlib")


def _set_mpp(qtbot, widget, text):
    section = widget.model_section
    section.mpp_edit.setText(text)
    with qtbot.waitSignal(widget.controller.message, timeout=WAIT_MS,
                          check_params_cb=lambda s, t: s == "model" and ("µm/px" in t or "Error" in t)):
        section.mpp_button.click()
    return section.status.text()


def test_the_slide_mpp_typed_in_the_widget_is_kept_and_used(make_napari_viewer, qtbot, scene_without_mpp,
                                                            scene_head, tmp_path):
    viewer = make_napari_viewer()
    widget = _dock(viewer, tmp_path, extractor=_rgb())
    _open(viewer, scene_without_mpp)
    assert widget.info()["µm/px"] == "unknown (scale in pixels)"
    section = widget.model_section
    assert section.mpp_edit.isEnabled() and section.mpp_edit.text() == ""

    assert _set_mpp(qtbot, widget, "a quarter").startswith("Error: 'a quarter' is not a number")
    assert widget.controller.session is None
    assert _set_mpp(qtbot, widget, "-1") == (
        "Error: The µm/px must be a positive number of µm per pixel, got -1.0.")
    session = widget.controller.session  # the session was opened to keep it
    assert session is not None and session.slide.mpp is None and session.level == 0
    text = _set_mpp(qtbot, widget, "0,25")  # a decimal comma is read too
    assert text.startswith("Slide µm/px set to 0.25 and kept in its session folder")
    assert session.slide.mpp == 0.25 and session.mpp_given
    assert section.mpp_edit.text() == "0.25" and section.mpp_edit.isEnabled()
    folder = session.folder
    assert LabelStore.open(folder / LABELS).given_slide_mpp == 0.25

    # the head works at 0.5 µm/px: the level-0 store is segmented at the head's scale
    with qtbot.waitSignal(widget.controller.head_changed, timeout=WAIT_MS):
        widget.controller.open_head(scene_head)
    result = _segment(qtbot, widget)
    assert not any("unknown" in note for note in result.notes)
    # exports carry the scale (the store is level 0: 0.25 µm/px)
    from napari_pathsegdiff.core.ome_writer import read_labels_ome_tiff

    labels, mpp = read_labels_ome_tiff(_export(qtbot, widget, tmp_path / "out.ome.tif"))
    assert mpp == pytest.approx(0.25) and labels.shape == (512, 768)
    assert set(np.unique(labels[result.region.slices])) <= {1, 2, 3}
    viewer.close()

    # reopening the slide finds the µm/px again
    viewer = make_napari_viewer()
    widget = _dock(viewer, tmp_path)
    _open(viewer, scene_without_mpp)
    qtbot.waitUntil(lambda: widget.controller.session is not None, timeout=WAIT_MS)
    session = widget.controller.session
    assert session.folder == folder and session.slide.mpp == 0.25 and session.mpp_given
    assert widget.model_section.mpp_edit.text() == "0.25"


def test_a_slide_that_records_its_mpp_keeps_it(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    widget = _dock(viewer, tmp_path, extractor=_rgb())
    _open(viewer, write_scene(tmp_path / "slides" / "scene.tif"))
    assert _set_mpp(qtbot, widget, "0.3") == "Error: The slide file records its µm/px (0.25): that one is used."
    session = widget.controller.session
    assert session.slide.mpp == 0.25 and not session.mpp_given
    assert widget.model_section.mpp_edit.text() == "0.25"
    assert not widget.model_section.mpp_edit.isEnabled()
