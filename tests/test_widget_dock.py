"""The dock widget as a pathologist finds it (a real napari viewer under Xvfb, driven through the
dock widget): Cancel and a time estimate for "Segment view", the box on the region to label
next, the uncertainty layer and its legend, the view restored on reopening, "Revert to previous
head", number keys for the classes, a dock that fits a 1280-px window, class names on the
overview."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest
from test_widget import (  # noqa: F401 - scene is a fixture
    PLUGIN, WAIT_MS, _dock, _look_at, _open, _restored_session, _rgb, _same, _segment, _train,
    _weights, scene)

from napari_pathsegdiff.core.label_store import LabelStore
from napari_pathsegdiff.engine.session.session_folder import HEAD, LABELS, PREVIOUS_HEAD, VIEW
from napari_pathsegdiff.models.features import RGBFeatures

pytestmark = pytest.mark.gui


def _opened(make_napari_viewer, qtbot, scene, tmp_path, **viewer_kwargs):
    """A viewer with the dock and the scene, its trained session open."""
    folder = _restored_session(scene, tmp_path)
    viewer = make_napari_viewer(**viewer_kwargs)
    widget = _dock(viewer, tmp_path)
    layer = _open(viewer, scene)
    qtbot.waitUntil(lambda: widget.controller.session is not None, timeout=WAIT_MS)
    return viewer, widget, layer, folder


# --- 1. Cancel and a time estimate ------------------------------------------------------------------


def test_segment_view_shows_a_time_estimate_and_cancel_writes_nothing(make_napari_viewer, qtbot, scene,
                                                                      tmp_path, monkeypatch):
    from napari_pathsegdiff._widgets import _controller

    viewer, widget, layer, _ = _opened(make_napari_viewer, qtbot, scene, tmp_path)
    controller, section = widget.controller, widget.segment_section
    extract = RGBFeatures.extract

    def slow(self, tiles):  # a slow backbone: a quarter of a second per batch of tiles
        time.sleep(0.25)
        return extract(self, tiles)

    monkeypatch.setattr(RGBFeatures, "extract", slow)
    monkeypatch.setattr(_controller, "PROGRESS_NOTE_S", 0.0)  # every progress note is shown
    notes, seen = [], []
    controller.message.connect(lambda s, text: notes.append(text) if s == "segment" else None)
    controller.segmented.connect(seen.append)
    assert not section.cancel_button.isEnabled()
    _look_at(viewer, layer, 0, 0, 512, 768)
    section.segment_button.click()
    job = controller.jobs["segment"]
    assert section.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: job.produced >= 3, timeout=WAIT_MS)  # the start and two batches
    section.cancel_button.click()
    qtbot.waitUntil(lambda: not job.running, timeout=WAIT_MS)

    assert job.cancelled and job.yields_after_cancel <= 1
    assert seen == [] and not section.cancel_button.isEnabled()
    session = controller.session
    on_disk = LabelStore.open(session.folder / LABELS)
    assert not on_disk.read(0, 0, *on_disk.shape, which="prediction").any()  # nothing half-written
    assert controller.layers.window is None  # nothing shown as segmented
    assert section.status.text().startswith("Segmentation cancelled: nothing of it was written")
    estimates = [n for n in notes if re.fullmatch(r"Segmenting the view: \d+/\d+ tiles, about \d+ s left…", n)]
    assert estimates, notes
    done, total = (int(v) for v in re.search(r"(\d+)/(\d+)", estimates[0]).groups())
    assert 0 < done < total
    assert notes[0] == f"Segmenting the view: 0/{total} tiles…"  # no pace yet: no estimate
    assert not any(re.search(r"\(\d+/\d+\)", n) for n in notes)  # the count is said once

    # the tiles done before Cancel stay cached: segmenting again reads them, computes the rest
    cached = session.cache.misses
    assert cached >= 8
    result = _segment(qtbot, widget)
    assert result.cache["hits"] >= cached and result.cache["hits"] + result.cache["misses"] == total
    assert section.status.text().startswith("Segmented 384x256 px")


# --- 2. where to label next: a box ------------------------------------------------------------------


def _box_world(layer):
    [rect] = layer.data
    corners = np.array([layer.data_to_world(p) for p in rect])
    return corners.min(axis=0), corners.max(axis=0)


def test_where_to_label_next_frames_the_region_and_replaces_the_box(make_napari_viewer, qtbot, scene, tmp_path):
    from napari.layers import Shapes

    viewer, widget, layer, _ = _opened(make_napari_viewer, qtbot, scene, tmp_path)
    controller = widget.controller
    _look_at(viewer, layer, 0, 0, 512, 768)
    _segment(qtbot, widget)
    edit = controller.layers.window_layer
    with qtbot.waitSignal(controller.suggested, timeout=WAIT_MS):
        widget.segment_section.next_button.click()
        widget.segment_section.next_button.click()  # a second click while it looks is answered
        assert "Still finding where to label next" in widget.segment_section.status.text()
    [box] = [la for la in viewer.layers if isinstance(la, Shapes)]
    assert box.name == "scene where to label next" and box.shape_type == ["rectangle"]
    assert box.face_color[0][3] == 0  # no fill: the tissue shows through
    np.testing.assert_allclose(box.edge_color[0], [1.0, 212 / 255, 0.0, 1.0])
    assert box.edge_width[0] >= 1
    assert viewer.layers.selection.active == edit  # the brush still paints the edit window
    r0 = controller.last_suggestion.region.to_level(0, controller.session.slide.downsamples)
    low, high = _box_world(box)
    np.testing.assert_allclose(low, layer.data_to_world([r0.y - 0.5, r0.x - 0.5]), atol=1e-6)
    np.testing.assert_allclose(high, layer.data_to_world([r0.y1 - 0.5, r0.x1 - 0.5]), atol=1e-6)
    assert "yellow box" in widget.segment_section.status.text()

    # paint over the suggested region (the view is on it now): the next suggestion, half this
    # view, is elsewhere, and replaces the box in the same layer
    first = controller.last_suggestion.region
    w = controller.layers.window
    qtbot.waitUntil(lambda: not controller.running("suggest"), timeout=WAIT_MS)
    y, x = first.y - w.y, first.x - w.x
    edit.paint_polygon([[y, x], [y, x + first.width - 1], [y + first.height - 1, x + first.width - 1],
                        [y + first.height - 1, x]], 2)
    with qtbot.waitSignal(controller.suggested, timeout=WAIT_MS):
        widget.segment_section.next_button.click()
    second = controller.last_suggestion.region
    assert "yellow box" in widget.segment_section.status.text()
    assert second.height < first.height and not (first.y <= second.y < first.y1 and first.x <= second.x < first.x1)
    assert [la for la in viewer.layers if isinstance(la, Shapes)] == [box] and len(box.data) == 1
    r0 = second.to_level(0, controller.session.slide.downsamples)
    low, _ = _box_world(box)
    np.testing.assert_allclose(low, layer.data_to_world([r0.y - 0.5, r0.x - 0.5]), atol=1e-6)


# --- 3. uncertainty: one hue, clear where sure, with a legend -------------------------------------------


def test_uncertainty_is_one_hue_clear_where_sure_with_a_legend(make_napari_viewer, qtbot, scene, tmp_path):
    from napari_pathsegdiff._widgets._label_layers import UNCERTAINTY_CLEAR

    viewer, widget, layer, _ = _opened(make_napari_viewer, qtbot, scene, tmp_path)
    section = widget.segment_section
    _look_at(viewer, layer, 0, 0, 512, 768)
    _segment(qtbot, widget)
    unc = widget.controller.layers.uncertainty_layer
    assert not unc.visible and section.legend.isHidden()
    section.uncertainty.setChecked(True)
    assert unc.visible and not section.legend.isHidden()
    assert unc.blending == "translucent" and unc.opacity == 1.0 and tuple(unc.contrast_limits) == (0.0, 1.0)
    rgba = unc.colormap.map(np.array([0.0, UNCERTAINTY_CLEAR, 0.5, 1.0]))
    assert (rgba[:2, 3] == 0).all() and 0 < rgba[2, 3] < rgba[3, 3] <= 1  # opacity grows with it
    np.testing.assert_allclose(rgba[:, :3], np.broadcast_to(rgba[3, :3], (4, 3)))  # one hue
    # the legend is the same colormap over white: white on the left, the hue on the right
    image = section.legend.image
    assert not section.legend.bar.pixmap().isNull()
    left, right = image.pixelColor(0, 5), image.pixelColor(image.width() - 1, 5)
    assert (left.red(), left.green(), left.blue()) == (255, 255, 255)
    expected = np.round((rgba[3, :3] * rgba[3, 3] + 1 - rgba[3, 3]) * 255)
    assert (right.red(), right.green(), right.blue()) == tuple(int(v) for v in expected)
    texts = [w.text() for w in section.legend.findChildren(type(section.status)) if w is not section.legend.bar]
    assert texts == ["sure", "unsure: check"]
    section.uncertainty.setChecked(False)
    assert not unc.visible and section.legend.isHidden()


# --- 4. the view comes back ------------------------------------------------------------------------------


def test_the_view_is_kept_and_restored_when_the_session_is_reopened(make_napari_viewer, qtbot, scene, tmp_path):
    viewer, widget, layer, folder = _opened(make_napari_viewer, qtbot, scene, tmp_path)
    _look_at(viewer, layer, 100, 300, 228, 428, inside=True)
    center, zoom = tuple(viewer.scene.camera.center[-2:]), viewer.scene.camera.zoom
    qtbot.waitUntil(lambda: (folder / VIEW).is_file(), timeout=WAIT_MS)  # once the camera settles
    kept = json.loads((folder / VIEW).read_text())
    np.testing.assert_allclose(kept["center_level0_yx"], layer.world_to_data(center), atol=1e-6)
    assert kept["screen_px_per_level0_px"] == pytest.approx(zoom * layer.scale[-1])
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".view")) == []  # no leftovers
    viewer.close()

    viewer = make_napari_viewer()
    widget = _dock(viewer, tmp_path)
    layer = _open(viewer, scene)
    assert tuple(viewer.scene.camera.center[-2:]) != pytest.approx(center)  # napari shows it all
    qtbot.waitUntil(lambda: widget.controller.session is not None, timeout=WAIT_MS)
    assert tuple(viewer.scene.camera.center[-2:]) == pytest.approx(center)
    assert viewer.scene.camera.zoom == pytest.approx(zoom)


def test_a_view_file_that_is_not_one_is_ignored(tmp_path):
    from napari_pathsegdiff.engine.session.session_folder import load_view, save_view

    assert load_view(tmp_path) is None
    save_view(tmp_path, (12.5, 40.0), 0.75)
    assert load_view(tmp_path) == ((12.5, 40.0), 0.75)
    for text in ("{", '{"center_level0_yx": [1], "screen_px_per_level0_px": 1}',
                 '{"center_level0_yx": [1, 2], "screen_px_per_level0_px": -1}', "[]"):
        (tmp_path / VIEW).write_text(text)
        assert load_view(tmp_path) is None
    with pytest.raises(ValueError, match="positive zoom"):
        save_view(tmp_path, (1.0, 2.0), 0.0)


# --- 5. revert to the previous head -------------------------------------------------------------------------


def test_revert_to_previous_head_swaps_the_heads_and_says_so(make_napari_viewer, qtbot, scene, tmp_path):
    viewer, widget, layer, folder = _opened(make_napari_viewer, qtbot, scene, tmp_path)
    controller, section = widget.controller, widget.model_section
    first = _weights(folder / HEAD)
    head = controller.session.head
    assert not (folder / PREVIOUS_HEAD).exists()
    with qtbot.waitSignal(controller.busy, check_params_cb=lambda n, on: n == "head" and not on, timeout=WAIT_MS):
        section.revert_button.click()
    assert section.status.text().startswith("Error: There is no previous head to go back to")
    assert controller.session.head is head and _same(_weights(folder / HEAD), first)

    _look_at(viewer, layer, 256, 0, 512, 384)
    _segment(qtbot, widget)
    controller.layers.window_layer.paint_polygon([[10, 10], [10, 40], [20, 40], [20, 10]], 3)
    _train(qtbot, widget)
    second = _weights(folder / HEAD)
    assert not _same(second, first) and _same(_weights(folder / PREVIOUS_HEAD), first)
    window = controller.layers.window

    with qtbot.waitSignal(controller.head_changed, timeout=WAIT_MS):
        section.revert_button.click()
    assert section.status.text().startswith("Reverted to the previous head (background, stroma, nuclei-rich)")
    assert _same(dict(controller.session.head.state_dict()), first)
    assert _same(_weights(folder / HEAD), first) and _same(_weights(folder / PREVIOUS_HEAD), second)
    assert sorted(p.name for p in folder.iterdir() if "head" in p.name) == [HEAD, PREVIOUS_HEAD]
    qtbot.waitUntil(lambda: controller.layers.window is not window, timeout=WAIT_MS)  # segmented again

    with qtbot.waitSignal(controller.head_changed, timeout=WAIT_MS):
        section.revert_button.click()  # and back again
    assert _same(dict(controller.session.head.state_dict()), second)
    assert _same(_weights(folder / HEAD), second) and _same(_weights(folder / PREVIOUS_HEAD), first)


# --- 6. number keys ----------------------------------------------------------------------------------------


def _canvas():
    """The napari canvas' Qt widget (where napari reads key presses)."""
    from qtpy.QtWidgets import QApplication
    from vispy.app.backends._qt import CanvasBackendDesktop

    found = [c for w in QApplication.topLevelWidgets() for c in w.findChildren(CanvasBackendDesktop)]
    assert len(found) == 1
    return found[0]


def test_number_keys_pick_the_class_on_the_edit_window(make_napari_viewer, qtbot, scene, tmp_path):
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    viewer, widget, layer, _ = _opened(make_napari_viewer, qtbot, scene, tmp_path)
    _look_at(viewer, layer, 0, 0, 512, 768)
    _segment(qtbot, widget)
    edit = widget.controller.layers.window_layer
    assert viewer.layers.selection.active == edit
    edit.mode = "paint"
    canvas, table = _canvas(), widget.classes_section.table
    for key, class_id, row in ((Qt.Key_3, 3, 2), (Qt.Key_1, 1, 0), (Qt.Key_2, 2, 1)):
        QTest.keyClick(canvas, key)
        assert edit.selected_label == class_id
        assert [i.row() for i in table.selectedItems()] == [row] * 3
        assert edit.mode == "paint"  # not napari's tool keys on this layer
    assert widget.classes_section.status.text() == "Painting with stroma (key 2)."
    QTest.keyClick(canvas, Qt.Key_9)
    assert edit.selected_label == 2
    assert widget.classes_section.status.text().startswith("No class 9: the table has 3.")
    QTest.keyClick(canvas, Qt.Key_F)  # napari's letter keys for the tools still work
    assert edit.mode == "fill"
    # a class added later gets its key at once
    assert widget.classes_section.add_class("mucin")
    QTest.keyClick(canvas, Qt.Key_4)
    assert edit.selected_label == 4


# --- 7. the dock fits a 1280-px window -------------------------------------------------------------------


def test_the_dock_fits_a_1280_px_window_with_folding_sections(make_napari_viewer, qtbot, scene, tmp_path):
    from qtpy.QtWidgets import QAbstractButton

    viewer, widget, layer, folder = _opened(make_napari_viewer, qtbot, scene, tmp_path, show=True)
    assert widget.minimumSizeHint().width() <= 420  # 1280 - 420 leaves napari's layer list and canvas 860 px
    assert widget.sizeHint().width() <= 420  # and it opens that narrow
    assert list(widget.sections) == ["Model", "Project", "Classes", "Segment", "Train", "Synthesize", "Export"]
    viewer.window.resize(1280, 800)
    qtbot.wait(200)
    buttons = [b for b in widget.findChildren(QAbstractButton) if b.isVisible()]
    assert len(buttons) > 15
    clipped = [b.text() for b in buttons if b.width() < b.minimumSizeHint().width()]
    assert clipped == []
    # long texts are one elided line, the whole text in the tooltip
    model = widget.model_section
    assert model.folder_label.text().endswith("scene.tif.pathsegdiff")
    assert model.folder_label.toolTip() == str(folder)
    model.folder_label.setText("/a/very/long/folder/" * 20 + "scene.tif.pathsegdiff")
    shown = model.folder_label.shown_text()
    assert "…" in shown and shown.endswith("pathsegdiff") and len(shown) < 200
    assert model.folder_label.height() < 2 * model.folder_label.fontMetrics().height()
    # folding a section hides its body, unfolding shows it again
    box = widget.sections["Synthesize"]
    box.header.click()
    assert not box.expanded() and widget.synthesize_section.isHidden()
    box.header.click()
    assert box.expanded() and not widget.synthesize_section.isHidden()


# --- 8. class names on the overview -------------------------------------------------------------------------


def test_the_overview_names_the_class_under_the_cursor(make_napari_viewer, qtbot, scene, tmp_path):
    viewer, widget, layer, _ = _opened(make_napari_viewer, qtbot, scene, tmp_path)
    _look_at(viewer, layer, 0, 0, 512, 768)
    _segment(qtbot, widget)
    overview = widget.controller.layers.overview
    for (y, x), name in (((20, 100), "background"), ((150, 60), "stroma"), ((150, 300), "nuclei-rich")):
        world = layer.data_to_world([2 * y, 2 * x])  # level-1 pixel -> level 0 -> world
        status = overview.get_status(world, world=True)
        assert status["value"].endswith(f"class: {name}"), status
