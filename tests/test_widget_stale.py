"""After a new head, regions segmented before are segmented again in the background, through the
real dock widget (Xvfb): after training, and on reopening a slide whose head changed."""

from __future__ import annotations

import numpy as np
import pytest
from _annotation_scene import CLASSES, paint_strokes, write_scene

from napari_pathsegdiff.core.progress import drive
from napari_pathsegdiff.core.region import Region
from napari_pathsegdiff.core.slide import open_slide
from napari_pathsegdiff.engine.inference.predict import predict_region
from napari_pathsegdiff.engine.session.annotation import AnnotationSession
from napari_pathsegdiff.models.features import RGBFeatures

pytestmark = pytest.mark.gui

PLUGIN = "napari-pathsegdiff"
WAIT_MS = 120_000
A = Region(1, 0, 0, 100, 150)  # level 1 (the analysis level): glass and stroma, top left


def _rgb():
    return RGBFeatures(tile_size=64, halo=4)


@pytest.fixture
def scene(tmp_path):
    return write_scene(tmp_path / "slides" / "scene.tif")


def _session_with_a_segmented(scene, *, retrain: bool):
    """A session beside ``scene`` whose head segmented A (then, with ``retrain``, a new head)."""
    with open_slide(scene) as slide:
        session = AnnotationSession.open(slide, extractor=_rgb(), classes=CLASSES)
        paint_strokes(session.store)
        drive(session.train_on_edits(steps=40), show=False)
        drive(session.segment(A), show=False)
        first = session.head_identity
        if retrain:
            session.store.write_edits(60, 20, np.full((4, 30), 3, np.uint8))
            drive(session.train_on_edits(steps=40, seed=1), show=False)
        session.close()
        return first


def _dock(viewer, tmp_path):
    from napari_pathsegdiff._widgets import SegmentationWidget

    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "PathSegDiff")
    assert isinstance(widget, SegmentationWidget)
    widget.controller.store_root = tmp_path / "user-cache"
    return widget


def _look_at(viewer, layer, y0, x0, y1, x1):
    a, b = layer.data_to_world([y0, x0]), layer.data_to_world([y1, x1])
    viewer.scene.camera.center = ((a[0] + b[0]) / 2, (a[1] + b[1]) / 2)
    h, w = viewer.canvas.size
    viewer.scene.camera.zoom = max(h / (b[0] - a[0]), w / (b[1] - a[1]))


def _refreshes(controller):
    counts = []
    controller.refreshed.connect(counts.append)
    return counts


def _assert_a_holds_the_current_head(session, overview):
    store = session.store
    assert store.prediction_heads().keys() == {session.head_identity}
    direct = drive(predict_region(session.slide, A, head=session.head, extractor=session.extractor), show=False)
    expected = session._head_to_store(session.head)[direct.labels]
    np.testing.assert_array_equal(store.read(A.y, A.x, A.height, A.width, which="prediction"), expected)
    edits = store.read(A.y, A.x, A.height, A.width, which="edits")
    shown = np.asarray(overview.data[0])[A.slices]
    np.testing.assert_array_equal(shown, np.where(edits > 0, edits, expected))  # what the overview shows


def test_after_training_the_regions_segmented_before_carry_the_new_head_s_labels(
        make_napari_viewer, qtbot, scene, tmp_path):
    first = _session_with_a_segmented(scene, retrain=False)
    viewer = make_napari_viewer()
    widget = _dock(viewer, tmp_path)
    controller = widget.controller
    refreshed = _refreshes(controller)
    [layer] = viewer.open(str(scene), plugin=PLUGIN)
    qtbot.waitUntil(lambda: controller.session is not None, timeout=WAIT_MS)
    session = controller.session
    assert session.head_identity == first and session.stale_regions() == []

    _look_at(viewer, layer, 300, 400, 500, 760)  # B: below and right of A
    with qtbot.waitSignal(controller.segmented, timeout=WAIT_MS) as blocker:
        widget.segment_section.segment_button.click()
    window = blocker.args[0].region
    assert window.y >= A.y1 or window.x >= A.x1  # B does not touch A
    before = session.store.read(A.y, A.x, A.height, A.width, which="prediction").copy()

    edit = controller.layers.window_layer  # a correction in B, then a new head
    edit.paint_polygon([[10, 10], [10, 60], [16, 60], [16, 10]], 3)
    with qtbot.waitSignal(controller.train_finished, timeout=WAIT_MS) as trained:
        widget.train_section.train_button.click()
    assert trained.args[0] is not None and session.head_identity != first
    # the view is segmented again first, then A in the background
    qtbot.waitUntil(lambda: any(refreshed), timeout=WAIT_MS)
    assert refreshed[-1] == 1
    assert "Segmented again with the current head: 1 region" in widget.segment_section.status.text()
    assert not widget.segment_section.stop_refresh_button.isVisible()
    assert session.stale_regions() == []
    _assert_a_holds_the_current_head(session, controller.layers.overview)
    after = session.store.read(A.y, A.x, A.height, A.width, which="prediction")
    np.testing.assert_array_equal(after > 0, before > 0)  # the same pixels, segmented again


def test_a_reopened_slide_whose_head_changed_is_brought_up_to_date(make_napari_viewer, qtbot, scene, tmp_path):
    first = _session_with_a_segmented(scene, retrain=True)
    viewer = make_napari_viewer()
    widget = _dock(viewer, tmp_path)
    controller = widget.controller
    refreshed = _refreshes(controller)
    viewer.open(str(scene), plugin=PLUGIN)
    qtbot.waitUntil(lambda: bool(refreshed), timeout=WAIT_MS)
    session = controller.session
    assert refreshed == [1] and session.head_identity != first
    _assert_a_holds_the_current_head(session, controller.layers.overview)


def test_stop_keeps_the_older_regions_and_says_so(make_napari_viewer, qtbot, scene, tmp_path, monkeypatch):
    _session_with_a_segmented(scene, retrain=True)
    from napari_pathsegdiff.engine.session.annotation import AnnotationSession as Session

    real = Session.refresh_stale

    def slow(self, **kwargs):  # a refresh that waits between its steps, so Stop lands inside it
        import time

        for record in real(self, **kwargs):
            time.sleep(1.0)
            yield record

    monkeypatch.setattr(Session, "refresh_stale", slow)
    viewer = make_napari_viewer(show=True)
    widget = _dock(viewer, tmp_path)
    controller = widget.controller
    refreshed = _refreshes(controller)
    viewer.open(str(scene), plugin=PLUGIN)
    button = widget.segment_section.stop_refresh_button
    qtbot.waitUntil(button.isVisible, timeout=WAIT_MS)
    button.click()
    qtbot.waitUntil(lambda: bool(refreshed), timeout=WAIT_MS)
    assert refreshed == [None] and not button.isVisible()
    session = controller.session
    assert len(session.stale_regions()) == 1
    assert "Stopped: 1 chunk(s) still show an earlier head's labels" in widget.segment_section.status.text()


def test_the_widget_s_export_never_mixes_heads(make_napari_viewer, qtbot, scene, tmp_path):
    from napari_pathsegdiff.core.ome_writer import read_labels_ome_tiff

    _session_with_a_segmented(scene, retrain=True)  # A by the first head, a second head current
    viewer = make_napari_viewer()
    widget = _dock(viewer, tmp_path)
    controller = widget.controller
    viewer.open(str(scene), plugin=PLUGIN)
    qtbot.waitUntil(lambda: controller.session is not None, timeout=WAIT_MS)
    with qtbot.waitSignal(controller.exported, timeout=WAIT_MS) as blocker:
        widget.export_section.export_to(tmp_path / "out.ome.tif")  # at once, refresh under way or not
    labels, _ = read_labels_ome_tiff(blocker.args[0])
    session = controller.session
    assert session.stale_regions() == []
    direct = drive(predict_region(session.slide, A, head=session.head, extractor=session.extractor), show=False)
    edits = session.store.read(A.y, A.x, A.height, A.width, which="edits")
    expected = np.where(edits > 0, edits, session._head_to_store(session.head)[direct.labels])
    np.testing.assert_array_equal(labels[A.slices], expected)
