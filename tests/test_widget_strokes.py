"""Every stroke counts: what the brush, fill, polygon or eraser touched in the edit window is an
edit, whatever the model predicted there (a real napari viewer under Xvfb, driven through the
dock widget and the Labels layer's public API)."""

from __future__ import annotations

import numpy as np
import pytest
from test_widget import (  # noqa: F401 - scene and scene_head are fixtures
    PLUGIN, WAIT_MS, _dock, _look_at, _open, _rgb, _segment, _train, scene, scene_head)

from napari_pathsegdiff.core.label_store import LabelStore
from napari_pathsegdiff.engine.session.label_window import PREDICTED
from napari_pathsegdiff.engine.session.session_folder import LABELS

pytestmark = pytest.mark.gui


def _segmented_with_head(viewer, qtbot, widget, scene, scene_head):
    """The scene with the trained head, nothing painted, its level-1 rows 0..255 and columns
    0..383 segmented; returns the edit layer and the store's prediction there."""
    layer = _open(viewer, scene)
    with qtbot.waitSignal(widget.controller.session_changed, timeout=WAIT_MS):
        widget.segment_section.segment_button.click()  # opens the session (no head yet)
    with qtbot.waitSignal(widget.controller.head_changed, timeout=WAIT_MS):
        widget.controller.open_head(scene_head)
    _look_at(viewer, layer, 0, 0, 512, 768)
    result = _segment(qtbot, widget)
    session = widget.controller.session
    assert (result.region.y, result.region.x, result.region.height, result.region.width) == (0, 0, 256, 384)
    assert session.painted_counts() == {}
    prediction = session.store.read(0, 0, 256, 384, which="prediction")
    return widget.controller.layers.window_layer, prediction


def _box(y, x, h, w):
    return [[y, x], [y, x + w], [y + h, x + w], [y + h, x]]


def test_strokes_of_the_predicted_class_are_edits_and_train(make_napari_viewer, qtbot, scene, scene_head,
                                                            tmp_path):
    viewer = make_napari_viewer()
    widget = _dock(viewer, tmp_path, extractor=_rgb())
    edit, prediction = _segmented_with_head(viewer, qtbot, widget, scene, scene_head)
    session = widget.controller.session
    # glass, stroma and nuclei-rich tissue are predicted as such where the strokes go
    assert (prediction[10:20, 10:60] == 1).all() and (prediction[100:140, 40:140] == 2).all()
    assert (prediction[100:140, 240:340] == 3).all()
    shown = np.asarray(edit.data)
    assert shown.dtype == np.uint16 and (shown[10:20, 10:60] == PREDICTED + 1).all()
    names = dict(zip(edit.features["index"], edit.features["class"]))  # the status bar's names
    assert [names[k] for k in (1, PREDICTED + 1, PREDICTED + 3)] == [
        "background", "background (predicted)", "nuclei-rich (predicted)"]

    edit.paint_polygon(_box(10, 10, 8, 50), 1)  # polygon of the predicted class
    edit.brush_size = 9
    edit.paint((120, 90), 2)  # a brush dab of the predicted class
    edit.paint_polygon(_box(110, 250, 20, 80), 3)
    painted = np.asarray(edit.data)
    strokes = (painted > 0) & (painted < PREDICTED)  # shown as painted now
    assert strokes.sum() > 0 and (painted[strokes] == prediction[strokes]).all()
    edits = LabelStore.open(session.folder / LABELS).read(0, 0, 256, 384, which="edits")  # on disk at once
    np.testing.assert_array_equal(edits, np.where(strokes, painted, 0))
    counts = {k: int((edits == k).sum()) for k in (1, 2, 3)}
    assert counts[2] == 69  # the 9-px brush is a disc of 69 pixels
    assert session.painted_counts() == counts
    assert widget.train_section.status.text() == f"Painted pixels saved ({counts[3]} painted, 0 erased)."

    # single pixels set through the layer's data_setitem (napari's index-tuple history atoms)
    assert (prediction[200:202, 50] == 2).all()
    edit.data_setitem((np.array([200, 201]), np.array([50, 50])), 2)
    qtbot.wait(0)
    counts[2] += 2
    assert session.painted_counts() == counts
    assert session.store.read(200, 50, 2, 1, which="edits").ravel().tolist() == [2, 2]

    outcome = _train(qtbot, widget)
    assert outcome is not None and outcome.painted == counts
    assert "on %d painted px" % sum(counts.values()) in widget.train_section.status.text()


def test_fill_eraser_undo_and_redo_over_predictions(make_napari_viewer, qtbot, scene, scene_head, tmp_path):
    viewer = make_napari_viewer()
    widget = _dock(viewer, tmp_path, extractor=_rgb())
    edit, prediction = _segmented_with_head(viewer, qtbot, widget, scene, scene_head)
    session = widget.controller.session

    # fill on a predicted glass pixel with its own class: the connected predicted glass is painted
    edit.fill((5, 5), 1)
    glass = np.zeros(prediction.shape, bool)
    from skimage.segmentation import flood

    glass = flood(np.asarray(prediction) == 1, (5, 5)) & (prediction == 1)
    assert session.painted_counts() == {1: int(glass.sum())}
    assert (session.store.read(0, 0, 256, 384, which="edits")[glass] == 1).all()

    # the eraser gives pixels back to the model: no edit, the prediction shows again
    edit.paint_polygon(_box(20, 20, 10, 10), 0)
    erased = np.zeros(prediction.shape, bool)
    erased[20:31, 20:31] = True
    erased &= np.asarray(edit.data) != 1
    assert erased.sum() >= 100
    assert (session.store.read(0, 0, 256, 384, which="edits")[erased] == 0).all()
    assert (np.asarray(edit.data)[erased] == PREDICTED + 1).all()
    after_erase = session.painted_counts()
    assert after_erase == {1: int(glass.sum()) - int(erased.sum())}

    edit.undo()  # the eraser stroke
    assert session.painted_counts() == {1: int(glass.sum())}
    edit.undo()  # the fill
    assert session.painted_counts() == {}
    assert (np.asarray(edit.data)[glass] == PREDICTED + 1).all()
    edit.redo()
    assert session.painted_counts() == {1: int(glass.sum())}

    # a value that is no class id is refused and undone on screen
    before = np.asarray(edit.data).copy()
    edit.paint_polygon(_box(150, 150, 5, 5), 600)
    assert widget.train_section.status.text().startswith("Not recorded: 600 is not a class id")
    np.testing.assert_array_equal(np.asarray(edit.data), before)
    assert session.painted_counts() == {1: int(glass.sum())}

    # saving the edit window writes class ids, not the shown values
    from napari_pathsegdiff.core.ome_writer import read_labels_ome_tiff

    [path] = edit.save(str(tmp_path / "window.ome.tif"), plugin=PLUGIN)
    labels, _ = read_labels_ome_tiff(path)
    np.testing.assert_array_equal(labels, session.store.read(0, 0, 256, 384))


def _drag(viewer, layer, points):
    """Press, move through and release the left mouse button on the canvas over ``points``
    (data coordinates of ``layer``), as a person's brush stroke."""
    from qtpy.QtCore import QEvent, QPointF, Qt
    from qtpy.QtGui import QMouseEvent
    from qtpy.QtWidgets import QApplication

    canvas = viewer.window._qt_viewer.canvas
    view = canvas.view
    transform = view.transform * view.scene.transform
    native = canvas.native

    def send(kind, point, buttons):
        wy, wx = layer.data_to_world(point)[-2:]
        px, py = transform.map([wx, wy])[:2]
        pos = QPointF(float(px), float(py))
        event = QMouseEvent(kind, pos, native.mapToGlobal(pos), Qt.MouseButton.LeftButton,
                            buttons, Qt.KeyboardModifier.NoModifier)
        QApplication.sendEvent(native, event)
        QApplication.processEvents()

    held = Qt.MouseButton.LeftButton
    send(QEvent.Type.MouseButtonPress, points[0], held)
    for point in points[1:]:
        send(QEvent.Type.MouseMove, point, held)
    send(QEvent.Type.MouseButtonRelease, points[-1], Qt.MouseButton.NoButton)


def test_a_mouse_brush_stroke_of_the_predicted_class_is_an_edit(make_napari_viewer, qtbot, scene, scene_head,
                                                                 tmp_path):
    viewer = make_napari_viewer(show=True)
    widget = _dock(viewer, tmp_path, extractor=_rgb())
    edit, prediction = _segmented_with_head(viewer, qtbot, widget, scene, scene_head)
    session = widget.controller.session
    _look_at(viewer, viewer.layers["scene"], 160, 80, 320, 400)  # stroma, close up
    assert (prediction[80:160, 40:180] == 2).all()
    edit.mode = "paint"
    edit.brush_size = 5
    edit.selected_label = 2  # the class the model predicts there
    _drag(viewer, edit, [(120, 60 + 5 * i) for i in range(21)])
    qtbot.wait(50)
    counts = session.painted_counts()
    assert set(counts) == {2} and counts[2] >= 5 * 100  # a 5-px brush along 100 px
    edits = session.store.read(0, 0, 256, 384, which="edits")
    rows, cols = np.nonzero(edits)
    assert rows.min() >= 117 and rows.max() <= 123 and cols.min() >= 57 and cols.max() <= 163
    assert (np.asarray(edit.data)[edits > 0] == 2).all()

    edit.mode = "erase"  # the eraser over half of the stroke gives it back to the model
    _drag(viewer, edit, [(120, 110 + 5 * i) for i in range(12)])
    qtbot.wait(50)
    left = session.store.read(0, 0, 256, 384, which="edits")
    assert 0 < (left > 0).sum() < counts[2] and not left[:, 115:].any()
    assert (np.asarray(edit.data)[115:126, 115:160] == PREDICTED + 2).all()
