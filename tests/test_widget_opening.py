"""A click while the slide's saved session is still reopening, and the demo's screenshot, in a
real napari viewer (Xvfb) driven through the dock widget."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from test_widget import WAIT_MS, _dock, _open, _restored_session, scene  # noqa: F401 - the fixture

from napari_pathsegdiff._widgets import _demo
from napari_pathsegdiff._widgets import _controller

pytestmark = pytest.mark.gui


@pytest.fixture
def gated_open(monkeypatch):
    """Opening a session waits until the test sets the returned event (so a click lands while
    it is opening); ``fail`` makes the opening raise instead."""
    gate = threading.Event()
    gate.fail = False
    real = _controller.open_session_work

    def slow_open(*args, **kwargs):
        if not gate.wait(WAIT_MS / 1000):
            raise TimeoutError("the test never let the session open")
        if gate.fail:
            raise OSError("the session folder went away")
        return (yield from real(*args, **kwargs))

    monkeypatch.setattr(_controller, "open_session_work", slow_open)
    return gate


def test_segment_view_pressed_while_the_session_reopens_runs_once_it_is_open(
        make_napari_viewer, qtbot, scene, tmp_path, gated_open):
    _restored_session(scene, tmp_path)  # a trained session on disk: opening the slide reopens it
    viewer = make_napari_viewer()
    widget = _dock(viewer, tmp_path)
    controller = widget.controller
    _open(viewer, scene)
    qtbot.waitUntil(lambda: controller.running("open"), timeout=WAIT_MS)
    assert controller.session is None

    widget.segment_section.segment_button.click()
    assert "runs as soon as they are open" in widget.segment_section.status.text()
    assert "segment" not in controller.jobs  # queued, not started and not dropped
    with qtbot.waitSignal(controller.segmented, timeout=WAIT_MS) as blocker:
        gated_open.set()
    assert controller.session is not None and controller.session.head is not None
    result = blocker.args[0]
    window = controller.layers.window_layer.data
    assert window.shape == (result.region.height, result.region.width)
    assert (window > 0).all()  # every pixel of the view is labelled
    assert widget.segment_section.status.text().startswith("Segmented ")


def test_segment_view_pressed_while_opening_fails_says_it_did_not_run(
        make_napari_viewer, qtbot, scene, tmp_path, gated_open):
    _restored_session(scene, tmp_path)
    viewer = make_napari_viewer()
    widget = _dock(viewer, tmp_path)
    controller = widget.controller
    _open(viewer, scene)
    qtbot.waitUntil(lambda: controller.running("open"), timeout=WAIT_MS)
    widget.segment_section.segment_button.click()
    gated_open.fail = True
    with qtbot.waitSignal(controller.busy, check_params_cb=lambda name, on: name == "open" and not on,
                          timeout=WAIT_MS):
        gated_open.set()
    assert controller.session is None
    assert widget.segment_section.status.text() == (
        "Not run: the slide's annotations could not be opened (Error: OSError: the session folder went away).")
    assert widget.model_section.status.text() == "Error: OSError: the session folder went away"


def _shots(monkeypatch, viewer):
    """Replace the demo's final screenshot by a record of what the canvas shows then."""
    monkeypatch.setattr(_demo, "SETTLE_S", 0.2)
    shots = []

    def shoot(viewer_, path, *, after_s):
        assert viewer_ is viewer
        shots.append(viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int))

    monkeypatch.setattr(_demo, "_screenshot_when_settled", shoot)
    return shots


def test_the_demo_shoots_once_the_labels_are_drawn_on_a_second_run(
        make_napari_viewer, qtbot, scene, tmp_path, gated_open, monkeypatch):
    _restored_session(scene, tmp_path)  # the first run's session is on disk
    viewer = make_napari_viewer(show=True)
    widget = _dock(viewer, tmp_path)
    image = _open(viewer, scene)
    shots = _shots(monkeypatch, viewer)
    outcome = _demo.DemoOutcome()
    _demo._segment_then(viewer, widget, tmp_path / "demo.png", outcome)
    qtbot.waitUntil(lambda: widget.controller.running("open"), timeout=WAIT_MS)
    qtbot.wait(500)  # the demo's click lands while the session reopens
    assert not shots and not outcome.segmented
    gated_open.set()
    qtbot.waitUntil(lambda: len(shots) == 1, timeout=WAIT_MS)
    assert outcome.segmented and outcome.failure is None
    with_labels = shots[0]
    for layer in viewer.layers:
        layer.visible = layer is image
    without = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    coloured = np.abs(with_labels - without).max(-1) > 30
    on_slide = without.sum(-1) > 30  # the slide, not the black canvas around it
    assert coloured[on_slide].mean() > 0.5  # the labels cover the slide in the screenshot


def test_the_demo_says_why_there_is_no_segmentation(make_napari_viewer, qtbot, scene, tmp_path, gated_open,
                                                    monkeypatch, capsys):
    _restored_session(scene, tmp_path)
    viewer = make_napari_viewer(show=True)
    widget = _dock(viewer, tmp_path)
    _open(viewer, scene)
    shots = _shots(monkeypatch, viewer)
    outcome = _demo.DemoOutcome()
    _demo._segment_then(viewer, widget, tmp_path / "demo.png", outcome)
    qtbot.waitUntil(lambda: widget.controller.running("open"), timeout=WAIT_MS)
    qtbot.wait(500)
    gated_open.fail = True
    gated_open.set()
    qtbot.waitUntil(lambda: len(shots) == 1, timeout=WAIT_MS)
    assert not outcome.segmented
    assert outcome.failure == "Error: OSError: the session folder went away"
    printed = capsys.readouterr().err
    assert "demo: no segmentation to show: Error: OSError: the session folder went away" in printed


def test_the_overview_shows_what_was_just_segmented(make_napari_viewer, qtbot, scene, tmp_path):
    # a session with a head but nothing segmented: the overview is first drawn empty
    folder = _restored_session(scene, tmp_path)
    from napari_pathsegdiff.core.label_store import LabelStore
    from napari_pathsegdiff.engine.session.session_folder import LABELS

    store = LabelStore.open(folder / LABELS)
    assert not store.read(0, 0, *store.shape, which="prediction").any()
    viewer = make_napari_viewer(show=True)
    widget = _dock(viewer, tmp_path)
    image = _open(viewer, scene)
    qtbot.waitUntil(lambda: widget.controller.session is not None, timeout=WAIT_MS)
    qtbot.wait(300)  # the empty overview is drawn
    with qtbot.waitSignal(widget.controller.segmented, timeout=WAIT_MS):
        widget.segment_section.segment_button.click()
    overview = widget.controller.layers.overview
    for layer in viewer.layers:
        layer.visible = layer == image or layer == overview  # the overview alone over the slide
    qtbot.waitUntil(lambda: overview.loaded, timeout=WAIT_MS)
    qtbot.wait(300)
    shown = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    overview.visible = False
    without = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    on_slide = without.sum(-1) > 30
    assert (np.abs(shown - without).max(-1) > 30)[on_slide].mean() > 0.5
