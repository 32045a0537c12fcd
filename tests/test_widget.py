"""The annotate-and-retrain loop in a real napari viewer (Xvfb), driven through the widget and the
layers' public API: segment the view, paint, train, cancel, reopen, screenshot, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _annotation_scene import CLASSES, paint_strokes, truth_level1, write_scene
from safetensors.torch import load_file

from napari_pathsegdiff.core.label_store import LabelStore
from napari_pathsegdiff.core.progress import drive
from napari_pathsegdiff.core.slide import open_slide
from napari_pathsegdiff.engine.session.annotation import AnnotationSession
from napari_pathsegdiff.engine.session.session_folder import HEAD, LABELS
from napari_pathsegdiff.models.features import ClassicFeatures, RGBFeatures
from napari_pathsegdiff.models.heads import WEIGHTS_FILE, save_head

pytestmark = pytest.mark.gui

PLUGIN = "napari-pathsegdiff"
WAIT_MS = 120_000  # jobs are seconds long; the limit only guards against a hang


def _rgb():
    return RGBFeatures(tile_size=64, halo=4)


@pytest.fixture
def scene(tmp_path):
    return write_scene(tmp_path / "slides" / "scene.tif")


@pytest.fixture(scope="module")
def scene_head(tmp_path_factory):
    """A head (rgb features) trained on strokes of the scene, saved as a folder."""
    tmp = tmp_path_factory.mktemp("head")
    with open_slide(write_scene(tmp / "scene.tif")) as slide:
        session = AnnotationSession.open(slide, extractor=_rgb(), classes=CLASSES, folder=tmp / "s")
        paint_strokes(session.store)
        drive(session.train_on_edits(steps=40), show=False)
        return save_head(session.head, tmp / "head")


def _dock(viewer, tmp_path, *, extractor=None):
    from napari_pathsegdiff._widgets import SegmentationWidget

    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "PathSegDiff")
    assert isinstance(widget, SegmentationWidget)
    widget.controller.store_root = tmp_path / "user-cache"
    if extractor is not None:
        widget.controller.use_extractor(extractor)
    return widget


def _open(viewer, path):
    [layer] = viewer.open(str(path), plugin=PLUGIN)
    return layer


def _look_at(viewer, layer, y0, x0, y1, x1, *, inside=False):
    """Centre the camera on level-0 pixels [y0, y1) x [x0, x1) and zoom so that all of them
    show (or, with ``inside``, so that the canvas shows only them)."""
    a, b = layer.data_to_world([y0, x0]), layer.data_to_world([y1, x1])
    viewer.scene.camera.center = ((a[0] + b[0]) / 2, (a[1] + b[1]) / 2)
    h, w = viewer.canvas.size
    fit = max if inside else min
    viewer.scene.camera.zoom = fit(h / (b[0] - a[0]), w / (b[1] - a[1]))


def _expected_visible(viewer, layer):
    """Level-0 box the canvas shows, from the camera (independent of the widget's code)."""
    h, w = viewer.canvas.size
    cy, cx = viewer.scene.camera.center[-2:]
    half_h, half_w = h / viewer.scene.camera.zoom / 2, w / viewer.scene.camera.zoom / 2
    (y0, x0), (y1, x1) = layer.world_to_data([cy - half_h, cx - half_w]), layer.world_to_data([cy + half_h, cx + half_w])
    H, W = layer.data[0].shape[:2]
    return max(0, int(np.floor(y0))), max(0, int(np.floor(x0))), min(H, int(np.ceil(y1))), min(W, int(np.ceil(x1)))


def _segment(qtbot, widget):
    with qtbot.waitSignal(widget.controller.segmented, timeout=WAIT_MS) as blocker:
        widget.segment_section.segment_button.click()
    return blocker.args[0]


def _train(qtbot, widget):
    with qtbot.waitSignal(widget.controller.train_finished, timeout=WAIT_MS) as blocker:
        widget.train_section.train_button.click()
    return blocker.args[0]


def _export(qtbot, widget, path):
    with qtbot.waitSignal(widget.controller.exported, timeout=WAIT_MS) as blocker:
        widget.export_section.export_to(path)
    return blocker.args[0]


def _weights(folder):
    return {k: v.clone() for k, v in load_file(folder / WEIGHTS_FILE).items()}


def _same(a, b):
    return a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def _restored_session(scene, tmp_path, *, edits=True):
    """A trained session beside ``scene`` (as the widget would have left it)."""
    with open_slide(scene) as slide:
        session = AnnotationSession.open(slide, extractor=_rgb(), classes=CLASSES)
        if edits:
            paint_strokes(session.store)
            drive(session.train_on_edits(steps=40), show=False)
        return session.folder


# --- opening --------------------------------------------------------------------------------------


def test_the_sample_slide_opens_with_the_widget_and_nothing_is_written(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    widget = _dock(viewer, tmp_path)
    viewer.open_sample(PLUGIN, "cmu1_small_region")
    assert widget.info()["Slide"] == "CMU-1-Small-Region"
    assert widget.info()["File"] == "CMU-1-Small-Region.svs"  # the full path is the tooltip
    assert widget._fields["File"].toolTip().endswith("sample_data/CMU-1-Small-Region.svs")
    assert widget.controller.image_layer == viewer.layers["CMU-1-Small-Region"]
    assert widget.controller.session is None  # nothing is created before the user segments
    assert "Segment view" in widget.segment_section.status.text()
    assert not (tmp_path / "user-cache").exists()
    assert [box.title() for box in widget.sections.values()] == ["Model", "Project", "Classes", "Segment", "Train",
                                                                 "Synthesize", "Export"]


# --- the loop: segment the view, paint, train, segment again ----------------------------------


def test_paint_strokes_then_train_predicts_the_painted_classes(make_napari_viewer, qtbot, scene, tmp_path):
    viewer = make_napari_viewer()
    widget = _dock(viewer, tmp_path, extractor=_rgb())
    layer = _open(viewer, scene)
    _look_at(viewer, layer, 64, 96, 448, 672)  # glass at the top, both tissue halves below

    # no head yet: "Segment view" opens an empty editable window over the view
    with qtbot.waitSignal(widget.controller.session_changed, timeout=WAIT_MS):
        widget.segment_section.segment_button.click()
    controller = widget.controller
    session = controller.session
    assert session.folder == scene.resolve().with_name("scene.tif.pathsegdiff")
    window = controller.layers.window
    edit_layer = controller.layers.window_layer
    assert edit_layer.editable and not controller.layers.overview.editable
    assert edit_layer.data.shape == window.shape and not edit_layer.data.any()
    assert "No trained head yet" in widget.segment_section.status.text()
    widget.classes_section.apply_preset("stroma / nuclei-rich")

    # strokes through the Labels layer's public paint API, in window pixels (level 1)
    wy, wx = window.y, window.x
    strokes = {1: (40 - wy, 120 - wx), 2: (150 - wy, 120 - wx), 3: (150 - wy, 260 - wx)}
    for k, (y, x) in strokes.items():
        edit_layer.paint_polygon([[y, x], [y, x + 60], [y + 6, x + 60], [y + 6, x]], k)
    on_disk = LabelStore.open(session.folder / LABELS)  # written at once, before any training
    for k, (y, x) in strokes.items():
        assert (on_disk.read(wy + y + 1, wx + x + 1, 4, 58, which="edits") == k).all()

    outcome = _train(qtbot, widget)
    assert outcome is not None and outcome.new_head and set(outcome.painted) == {1, 2, 3}
    status = widget.train_section.status.text()
    assert "New head trained" in status
    # auto chose the features and the head by cross-validation over the painted tiles, in one line
    assert ("auto chose" in status or "auto fell back" in status) and outcome.note in status
    assert outcome.result.head.head_kind in ("fcn", "forest")
    weights = WEIGHTS_FILE if outcome.result.head.head_kind == "fcn" else "forest.safetensors"
    assert (session.folder / HEAD / weights).is_file()
    assert LabelStore.open(session.folder / LABELS).painted_pixel_count() == on_disk.painted_pixel_count()
    # the view is segmented again after training: the painted classes are predicted there
    qtbot.waitUntil(lambda: controller.layers.window is not window, timeout=WAIT_MS)
    prediction = session.store.read(0, 0, *session.store.shape, which="prediction")
    for k, (y, x) in strokes.items():
        assert (prediction[wy + y + 1 : wy + y + 5, wx + x + 1 : wx + x + 59] == k).all()

    # paint a wrong class over stroma: a new prediction keeps the painted pixels
    edit_layer = controller.layers.window_layer
    edit_layer.paint_polygon([[200 - wy, 100 - wx], [200 - wy, 130 - wx], [210 - wy, 130 - wx], [210 - wy, 100 - wx]], 3)
    _segment(qtbot, widget)
    assert (session.store.read(201, 101, 8, 28) == 3).all()
    assert (session.store.read(201, 101, 8, 28, which="prediction") == 2).all()
    assert (controller.layers.window_layer.data[201 - wy : 209 - wy, 101 - wx : 129 - wx] == 3).all()


def test_segment_view_fills_only_the_visible_region(make_napari_viewer, qtbot, scene, scene_head, tmp_path):
    viewer = make_napari_viewer()
    widget = _dock(viewer, tmp_path, extractor=_rgb())
    layer = _open(viewer, scene)
    with qtbot.waitSignal(widget.controller.session_changed, timeout=WAIT_MS):
        widget.segment_section.segment_button.click()  # opens the session (no head yet)
    with qtbot.waitSignal(widget.controller.head_changed, timeout=WAIT_MS):
        widget.controller.open_head(scene_head)  # Model > Head > Open…
    assert "Opened the head" in widget.model_section.status.text()

    _look_at(viewer, layer, 200, 300, 400, 600, inside=True)
    cy, cx = viewer.scene.camera.center[-2:]
    viewer.scene.camera.center = (cy + 10, cx - 20)  # pan a little (µm)
    y0, x0, y1, x1 = _expected_visible(viewer, layer)
    assert 0 < y0 < y1 < 512 and 0 < x0 < x1 < 768
    result = _segment(qtbot, widget)
    session = widget.controller.session
    # level 0 -> the analysis level 1 (2x): floor the start, ceil the end
    assert (result.region.y, result.region.x) == (y0 // 2, x0 // 2)
    assert (result.region.y1, result.region.x1) == (-(-y1 // 2), -(-x1 // 2))
    overview = np.asarray(widget.controller.layers.overview.data[0])
    inside = np.zeros(overview.shape, bool)
    inside[result.region.y : result.region.y1, result.region.x : result.region.x1] = True
    assert (overview[inside] > 0).all() and (overview[~inside] == 0).all()
    assert (session.store.read(0, 0, *session.store.shape, which="prediction")[~inside] == 0).all()
    # the edit window lies exactly over the slide: its pixel (0, 0) is level-0 pixel (2y + 0.5, 2x + 0.5)
    edit = widget.controller.layers.window_layer
    np.testing.assert_allclose(edit.data_to_world([0, 0]), layer.data_to_world([2 * result.region.y + 0.5,
                                                                                 2 * result.region.x + 0.5]))


def test_segment_view_with_the_shipped_head_on_the_sample_slide(make_napari_viewer, qtbot, tmp_path):
    from napari_pathsegdiff.engine.shipped_models import demo_head_folder
    from napari_pathsegdiff.models.heads import load_head

    viewer = make_napari_viewer()
    widget = _dock(viewer, tmp_path)
    viewer.open_sample(PLUGIN, "cmu1_small_region")
    layer = viewer.layers["CMU-1-Small-Region"]
    _look_at(viewer, layer, 1400, 600, 1656, 1112, inside=True)  # glass, then tissue from x = 768
    y0, x0, y1, x1 = _expected_visible(viewer, layer)
    result = _segment(qtbot, widget)
    session = widget.controller.session
    shipped = load_head(demo_head_folder())
    assert session.head.class_names == shipped.class_names == ["background", "stroma", "nuclei-rich tissue"]
    assert session.head.config.feature_identity == shipped.config.feature_identity
    assert session.extractor.identity == shipped.config.feature_identity  # the default backbone's features
    # the sample is analysed at level 0 (0.499 µm/px for the head's 0.5): the region is the view
    assert (result.region.y, result.region.x, result.region.y1, result.region.x1) == (y0, x0, y1, x1)
    overview = np.asarray(widget.controller.layers.overview.data[0])
    inside = np.zeros(overview.shape, bool)
    inside[y0:y1, x0:x1] = True
    assert (overview[~inside] == 0).all()
    assert set(np.unique(overview[inside])) == {1, 2, 3}
    # exactly what the engine predicts for that region with the shipped head and default features
    from napari_pathsegdiff.engine.inference.predict import predict_region

    direct = drive(predict_region(session.slide, result.region, head=shipped, extractor=session.extractor), show=False)
    np.testing.assert_array_equal(overview[y0:y1, x0:x1], np.asarray(direct.labels))
    assert not (tmp_path / "user-cache").exists() or session.folder.is_relative_to(tmp_path / "user-cache")


def test_live_mode_segments_once_after_the_camera_settles(make_napari_viewer, qtbot, scene, tmp_path):
    _restored_session(scene, tmp_path)
    viewer = make_napari_viewer()
    widget = _dock(viewer, tmp_path)
    layer = _open(viewer, scene)
    qtbot.waitUntil(lambda: widget.controller.session is not None, timeout=WAIT_MS)
    seen = []
    widget.controller.segmented.connect(seen.append)
    widget.segment_section.live.setChecked(True)
    qtbot.waitUntil(lambda: len(seen) == 1, timeout=WAIT_MS)  # the view when Live was switched on
    _look_at(viewer, layer, 0, 0, 256, 384)
    _look_at(viewer, layer, 256, 384, 512, 768)  # a second move within the debounce delay
    qtbot.waitUntil(lambda: len(seen) == 2, timeout=WAIT_MS)
    qtbot.wait(2 * 400 + 500)
    assert len(seen) == 2  # one segmentation for both moves
    y0, x0, y1, x1 = _expected_visible(viewer, layer)
    assert (seen[-1].region.y, seen[-1].region.x) == (y0 // 2, x0 // 2)
    widget.segment_section.live.setChecked(False)
    _look_at(viewer, layer, 0, 0, 128, 128)
    qtbot.wait(2 * 400)
    assert len(seen) == 2


def test_a_superseded_segmentation_is_cancelled_not_queued(make_napari_viewer, qtbot, scene, tmp_path):
    _restored_session(scene, tmp_path)
    viewer = make_napari_viewer()
    widget = _dock(viewer, tmp_path)
    layer = _open(viewer, scene)
    qtbot.waitUntil(lambda: widget.controller.session is not None, timeout=WAIT_MS)
    seen = []
    widget.controller.segmented.connect(seen.append)
    _look_at(viewer, layer, 0, 0, 512, 768)
    widget.segment_section.segment_button.click()
    first = widget.controller.jobs["segment"]
    _look_at(viewer, layer, 256, 384, 512, 768, inside=True)
    widget.segment_section.segment_button.click()
    second = widget.controller.jobs["segment"]
    assert first is not second and first.cancelled
    qtbot.waitUntil(lambda: not first.running and not second.running, timeout=WAIT_MS)
    y0, x0, _, _ = _expected_visible(viewer, layer)
    assert y0 >= 256 and x0 >= 384
    assert len(seen) == 1 and (seen[0].region.y, seen[0].region.x) == (y0 // 2, x0 // 2)  # the last view only


def test_the_user_can_keep_the_annotations_in_a_folder_they_pick(make_napari_viewer, qtbot, scene, tmp_path):
    viewer = make_napari_viewer()
    widget = _dock(viewer, tmp_path, extractor=_rgb())
    _open(viewer, scene)
    widget.controller.reopen_in_folder(tmp_path / "my-annotations")  # Model > Session folder…
    qtbot.waitUntil(lambda: widget.controller.session is not None, timeout=WAIT_MS)
    session = widget.controller.session
    assert session.folder == tmp_path / "my-annotations" and (session.folder / LABELS).is_dir()
    assert widget.model_section.folder_label.toolTip() == str(tmp_path / "my-annotations")
    assert widget.model_section.folder_label.text().endswith("my-annotations")
    assert not scene.resolve().with_name("scene.tif.pathsegdiff").exists()
    # another slide takes over; coming back finds the picked folder again
    viewer.open(str(write_scene(tmp_path / "other" / "other.tif")), plugin=PLUGIN)
    qtbot.waitUntil(lambda: widget.controller.session is None, timeout=WAIT_MS)
    assert widget.controller.image_layer == viewer.layers["other"]
    viewer.layers.selection.active = viewer.layers["scene"]
    qtbot.waitUntil(lambda: widget.controller.session is not None, timeout=WAIT_MS)
    assert widget.controller.session.folder == tmp_path / "my-annotations"
    # selecting the labels layer to paint keeps the session of its slide
    viewer.layers.selection.active = widget.controller.layers.overview
    assert widget.controller.image_layer == viewer.layers["scene"]
    assert widget.controller.session.folder == tmp_path / "my-annotations"


# --- cancel, persistence --------------------------------------------------------------------------


def test_cancel_stops_the_training_within_one_step_and_keeps_the_head(make_napari_viewer, qtbot, scene, tmp_path):
    folder = _restored_session(scene, tmp_path)
    before = _weights(folder / HEAD)
    viewer = make_napari_viewer()
    widget = _dock(viewer, tmp_path)
    _open(viewer, scene)
    qtbot.waitUntil(lambda: widget.controller.session is not None, timeout=WAIT_MS)
    head = widget.controller.session.head
    assert head is not None
    widget.controller.session.store.write_edits(230, 370, np.full((20, 10), 2, np.uint8))
    widget.controller.train_steps = 5000
    with qtbot.waitSignal(widget.controller.train_finished, timeout=WAIT_MS) as blocker:
        widget.train_section.train_button.click()
        assert widget.train_section.cancel_button.isEnabled()
        qtbot.waitUntil(lambda: widget.train_section.last_step >= 2, timeout=WAIT_MS)
        widget.train_section.cancel_button.click()
    assert blocker.args == [None]
    job = widget.controller.last_train_job
    qtbot.waitUntil(lambda: not job.running, timeout=WAIT_MS)
    assert job.cancelled and job.yields_after_cancel <= 1
    assert widget.train_section.last_step < 5000
    assert "cancelled" in widget.train_section.status.text()
    assert widget.controller.session.head is head
    assert _same(_weights(folder / HEAD), before)
    assert not (folder / "head-previous").exists()


def test_edits_and_head_come_back_after_closing_and_reopening(make_napari_viewer, qtbot, scene, tmp_path):
    folder = _restored_session(scene, tmp_path)
    viewer = make_napari_viewer()
    widget = _dock(viewer, tmp_path)
    layer = _open(viewer, scene)
    qtbot.waitUntil(lambda: widget.controller.session is not None, timeout=WAIT_MS)
    _look_at(viewer, layer, 256, 0, 512, 384)
    _segment(qtbot, widget)
    edit = widget.controller.layers.window_layer
    edit.paint_polygon([[10, 10], [10, 40], [20, 40], [20, 10]], 3)
    _train(qtbot, widget)
    weights = _weights(folder / HEAD)
    painted = widget.controller.session.painted_counts()
    assert painted[3] > 0
    viewer.close()

    viewer = make_napari_viewer()
    widget = _dock(viewer, tmp_path)
    _open(viewer, scene)
    qtbot.waitUntil(lambda: widget.controller.session is not None, timeout=WAIT_MS)  # found by itself
    session = widget.controller.session
    assert session.folder == folder and session.painted_counts() == painted
    assert _same({k: v for k, v in session.head.state_dict().items()}, weights)
    assert session.classes == CLASSES
    assert [c.name for c in widget.classes_section.classes()] == ["background", "stroma", "nuclei-rich"]
    overview = np.asarray(widget.controller.layers.overview.data[0])
    edits = session.store.read(0, 0, *session.store.shape, which="edits")
    np.testing.assert_array_equal(overview[edits > 0], edits[edits > 0])
    assert "3 classes" in widget.model_section.head_label.text()


# --- screenshot -----------------------------------------------------------------------------------


def test_screenshot_shows_label_colours_over_tissue(make_napari_viewer, qtbot, tmp_path):
    from napari_pathsegdiff._sample_data import sample_slide_path
    from napari_pathsegdiff.core.tissue import tissue_mask

    # a head for the sample slide: background vs tissue strokes from its tissue mask
    root = tmp_path / "user-cache"
    with open_slide(sample_slide_path()) as slide:
        session = AnnotationSession.open(slide, extractor=_rgb(), root=root,
                                         classes=CLASSES[:2])
        tissue = tissue_mask(np.asarray(slide.levels[0][::8, ::8]))
        ys, xs = np.nonzero(tissue)
        bys, bxs = np.nonzero(~tissue)
        for k, (py, px) in ((2, (ys, xs)), (1, (bys, bxs))):
            for i in np.linspace(0, len(py) - 1, 6).astype(int):
                y, x = min(int(py[i]) * 8, 2967 - 6), min(int(px[i]) * 8, 2220 - 6)
                session.store.write_edits(y, x, np.full((6, 6), k, np.uint8))
        drive(session.train_on_edits(steps=40), show=False)

    viewer = make_napari_viewer(show=True)
    widget = _dock(viewer, tmp_path)
    viewer.open_sample(PLUGIN, "cmu1_small_region")
    qtbot.waitUntil(lambda: widget.controller.session is not None, timeout=WAIT_MS)
    image = viewer.layers["CMU-1-Small-Region"]
    _look_at(viewer, image, 1000, 500, 1600, 1300)
    _segment(qtbot, widget)
    qtbot.wait(300)
    labels = [la for la in viewer.layers if la is not image]
    with_labels = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    for la in labels:
        la.visible = False
    without = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    tissue_px = (without.mean(-1) < 200).sum()
    coloured = np.abs(with_labels - without).max(-1) > 30
    assert tissue_px > 0.2 * coloured.size  # the view is mostly tissue
    assert coloured.sum() > 0.5 * tissue_px
    # the tissue class is green (#3cb44b): on tissue its overlay raises green over red and blue
    on_tissue = coloured & (without.mean(-1) < 200)
    shift = (with_labels - without)[on_tissue].mean(0)
    assert shift[1] > shift[0] and shift[1] > shift[2]


# --- bad input --------------------------------------------------------------------------------------


def test_training_without_two_painted_classes_says_so_and_changes_nothing(make_napari_viewer, qtbot, scene, tmp_path):
    viewer = make_napari_viewer()
    widget = _dock(viewer, tmp_path, extractor=_rgb())
    _open(viewer, scene)
    widget.train_section.train_button.click()
    assert "Press \"Segment view\"" in widget.train_section.status.text() or \
        "Nothing annotated" in widget.train_section.status.text()
    with qtbot.waitSignal(widget.controller.session_changed, timeout=WAIT_MS):
        widget.segment_section.segment_button.click()
    folder = widget.controller.session.folder

    assert _train(qtbot, widget) is None
    assert "No pixel is painted yet" in widget.train_section.status.text()
    widget.controller.layers.window_layer.paint_polygon([[5, 5], [5, 30], [10, 30], [10, 5]], 2)
    assert _train(qtbot, widget) is None
    assert "Only class 'tumour' is painted" in widget.train_section.status.text()
    assert widget.controller.session.head is None and not (folder / HEAD).exists()
    assert widget.train_section.train_button.isEnabled()


def test_a_head_for_another_backbone_is_refused_with_the_reason(make_napari_viewer, qtbot, scene, tmp_path):
    # a head trained on other features (the classic filter bank)
    with open_slide(write_scene(tmp_path / "other" / "scene.tif")) as slide:
        other = AnnotationSession.open(slide, extractor=ClassicFeatures(num_sigma=1, sigma_max=1, tile_size=64),
                                       classes=CLASSES, folder=tmp_path / "other" / "s")
        paint_strokes(other.store)
        drive(other.train_on_edits(steps=5), show=False)
        foreign = save_head(other.head, tmp_path / "foreign-head")

    folder = _restored_session(scene, tmp_path)
    before = _weights(folder / HEAD)
    viewer = make_napari_viewer()
    widget = _dock(viewer, tmp_path)
    _open(viewer, scene)
    qtbot.waitUntil(lambda: widget.controller.session is not None, timeout=WAIT_MS)
    head = widget.controller.session.head
    with qtbot.waitSignal(widget.controller.busy, check_params_cb=lambda n, on: n == "head" and not on,
                          timeout=WAIT_MS):
        widget.controller.open_head(foreign)
    text = widget.model_section.status.text()
    assert text.startswith("Error: This head was trained on features 'classic:") and "'rgb:v1'" in text
    assert widget.controller.session.head is head and _same(_weights(folder / HEAD), before)


def test_choosing_other_features_puts_the_head_aside(make_napari_viewer, qtbot, scene, tmp_path):
    folder = _restored_session(scene, tmp_path)
    viewer = make_napari_viewer()
    widget = _dock(viewer, tmp_path)
    _open(viewer, scene)
    qtbot.waitUntil(lambda: widget.controller.session is not None, timeout=WAIT_MS)
    section = widget.model_section
    assert section.features_label.text() == "rgb:v1"
    from napari_pathsegdiff.engine.shipped_models import default_backbone_installed

    default = section.features.model().item(0)
    installed = default_backbone_installed()
    assert default.isEnabled() == installed
    assert default.text() == ("default backbone" if installed else "default backbone (not installed)")
    from napari_pathsegdiff.models.features import registered_kinds

    listed = [section.features.itemData(i) for i in range(section.features.count())]
    assert listed == ["default backbone", "backbone folder", *[k for k in registered_kinds() if k != "diffusion"]]
    section.features.setCurrentIndex(section.features.findData("classic"))
    assert section.features.currentData() == "classic"
    with qtbot.waitSignal(widget.controller.head_changed, timeout=WAIT_MS):
        section.load_features.click()
    assert section.features_label.text().startswith("classic:")
    assert widget.controller.session.head is None
    assert "The current head was put aside" in section.status.text()
    assert (folder / HEAD / WEIGHTS_FILE).is_file()  # still on disk


# --- classes and export -----------------------------------------------------------------------------


def test_class_table_edits_recolour_the_layers(make_napari_viewer, qtbot, scene, tmp_path):
    viewer = make_napari_viewer()
    widget = _dock(viewer, tmp_path, extractor=_rgb())
    _open(viewer, scene)
    with qtbot.waitSignal(widget.controller.session_changed, timeout=WAIT_MS):
        widget.segment_section.segment_button.click()
    section = widget.classes_section
    assert [c.name for c in section.classes()] == ["background", "tumour", "stroma", "inflammation", "necrosis"]
    assert section.apply_preset("glands")
    assert section.add_class("mucin")
    assert section.rename(3, "mucin pool") and section.recolour(2, "#00ff00")
    assert [(c.id, c.name, c.color) for c in section.classes()] == [
        (1, "background", "#a0a0a0"), (2, "gland", "#00ff00"), (3, "mucin pool", "#f032e6")]
    assert section.table.rowCount() == 3 and section.table.item(2, 1).text() == "mucin pool"
    layer = widget.controller.layers.window_layer
    np.testing.assert_allclose(layer.colormap.color_dict[2], [0, 1, 0, 1])
    assert list(layer.features["class"]) == ["not labelled", "background", "gland", "mucin pool",
                                             "background (predicted)", "gland (predicted)",
                                             "mucin pool (predicted)"]
    # a painted class cannot be removed
    layer.paint_polygon([[2, 2], [2, 9], [9, 9], [9, 2]], 3)
    assert not section.remove(3)
    assert "'mucin pool'" in section.status.text() and "has painted pixels" in section.status.text()
    assert [c.id for c in section.classes()] == [1, 2, 3]
    assert section.remove(2) and [c.id for c in section.classes()] == [1, 3]
    # the table is the store's: it is on disk
    stored = json.loads((widget.controller.session.folder / LABELS / "zarr.json").read_text())
    assert [c["name"] for c in stored["attributes"]["classes"]] == ["background", "mucin pool"]


def test_export_writes_the_labels(make_napari_viewer, qtbot, scene, tmp_path):
    from napari_pathsegdiff.core.ome_writer import read_labels_ome_tiff

    _restored_session(scene, tmp_path)
    viewer = make_napari_viewer()
    widget = _dock(viewer, tmp_path)
    _open(viewer, scene)
    qtbot.waitUntil(lambda: widget.controller.session is not None, timeout=WAIT_MS)
    path = _export(qtbot, widget, tmp_path / "out.ome.tif")
    labels, mpp = read_labels_ome_tiff(path)
    assert mpp == pytest.approx(0.5) and labels.shape == (256, 384)
    assert widget.export_section.status.text() == f"Wrote {path}."
    geo = json.loads(_export(qtbot, widget, tmp_path / "out.geojson").read_text())
    assert {f["properties"]["classification"]["name"] for f in geo["features"]} == {
        "background", "stroma", "nuclei-rich"}
    assert _export(qtbot, widget, tmp_path / "out.png") is None
    assert "name the file" in widget.export_section.status.text()


def test_where_to_label_next_moves_the_view_to_unpainted_uncertain_tissue(make_napari_viewer, qtbot, scene, tmp_path):
    _restored_session(scene, tmp_path)
    viewer = make_napari_viewer()
    widget = _dock(viewer, tmp_path)
    layer = _open(viewer, scene)
    qtbot.waitUntil(lambda: widget.controller.session is not None, timeout=WAIT_MS)
    _look_at(viewer, layer, 0, 0, 512, 768)
    _segment(qtbot, widget)
    with qtbot.waitSignal(widget.controller.suggested, timeout=WAIT_MS):
        widget.segment_section.next_button.click()
    assert "most uncertain unpainted tissue" in widget.segment_section.status.text()
    session = widget.controller.session
    r = widget.controller.last_suggestion.region
    assert r.height == r.width == 128  # half the view (256 x 384 at the analysis level)
    assert not session.store.read(r.y, r.x, r.height, r.width, which="edits").any()
    assert (truth_level1()[r.slices] >= 2).mean() >= 0.5  # mostly tissue
    r0 = r.to_level(0, session.slide.downsamples)
    y0, x0, y1, x1 = _expected_visible(viewer, layer)
    assert y0 <= r0.y and r0.y1 <= y1 and x0 <= r0.x and r0.x1 <= x1  # all of it in view
    assert (y1 - y0) < 2 * r0.height or (x1 - x0) < 2 * r0.width  # and zoomed to it


def test_jobs_show_progress_in_the_section_not_in_napari_s_progress_bar(make_napari_viewer, qtbot, monkeypatch,
                                                                       tmp_path):
    # napari's progress bar keeps the window repainting while it is shown, which took two
    # thirds of the CPU from a segmentation on a machine without a GPU (scripts/bench_gui.py)
    from napari_pathsegdiff._widgets import _controller
    from napari_pathsegdiff.core.progress import Progress

    viewer = make_napari_viewer()
    widget = _dock(viewer, tmp_path)
    controller = widget.controller
    messages = []
    controller.message.connect(lambda section, text: messages.append((section, text)))

    def work():
        yield Progress("features", 1, 4, "")
        yield Progress("features", 2, 4, "")  # within the throttle interval: not shown
        return 7

    from napari.utils import progress

    results, bars = [], []
    monkeypatch.setattr(_controller, "PROGRESS_NOTE_S", 60.0)
    with qtbot.waitSignal(controller.busy, timeout=WAIT_MS, check_params_cb=lambda name, on: not on):
        controller.start_job("demo", work, description="Segmenting the view", section="segment",
                          on_done=results.append)
        bars.append(len(progress._all_instances))  # napari's bars open while the job runs
    assert bars == [0]
    assert results == [7]
    assert messages == [("segment", "Segmenting the view: features (1/4)…")]
