"""The Project section through the real dock widget: open a folder of slides as a project,
import QuPath annotations, switch slides, and *Train on my edits* learning from every slide."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _annotation_scene import CLASSES, truth_level1, write_scene
from test_widget import WAIT_MS, _dock, _open, _rgb, _train

from napari_pathsegdiff.core.geojson import labels_to_geojson, write_geojson
from napari_pathsegdiff.engine.session.project import PROJECT_FILE, read_project
from napari_pathsegdiff.models.features import ClassicFeatures

pytestmark = pytest.mark.gui


def _wait_idle(qtbot, widget, name):
    qtbot.waitUntil(lambda: not widget.controller.running(name), timeout=WAIT_MS)


def test_a_project_trains_on_every_slide_and_imports_annotations(make_napari_viewer, qtbot, tmp_path):
    folder = tmp_path / "slides"
    slides = [write_scene(folder / f"slide-{i}.tif", seed=i) for i in range(2)]
    truth = truth_level1()
    geojson = write_geojson(tmp_path / "truth.geojson",
                            labels_to_geojson(truth, {c.id: (c.name, c.color) for c in CLASSES}, downsample=(2.0, 2.0)))
    viewer = make_napari_viewer()
    widget = _dock(viewer, tmp_path, extractor=_rgb())
    widget.controller.train_steps = 40
    section = widget.project_section
    section.auto = False
    _open(viewer, slides[0])
    assert section.open_project(folder)
    assert (folder / PROJECT_FILE).is_file()
    assert section.slides.count() == 2 and "slide-1.tif" in section.slides.item(1).text()

    # QuPath annotations into the slide shown: its session is made, the classes join the table
    with qtbot.waitSignal(widget.controller.classes_changed, timeout=WAIT_MS):
        section.import_annotations(geojson)
    _wait_idle(qtbot, widget, "import")
    assert section.status.text().startswith("Imported 3 areas of truth.geojson (98304 px painted)")
    names = [c.name for c in widget.controller.session.classes]  # the tissue preset, and one new class
    assert names == ["background", "tumour", "stroma", "inflammation", "necrosis", "nuclei-rich"]
    assert [c.name for c in read_project(folder).classes] == names  # the project's table follows
    assert "slide-0.tif: 98304 px labelled" in section.slides.item(0).text()

    # switch to the second slide and paint two classes there
    with qtbot.waitSignal(widget.controller.session_changed, timeout=WAIT_MS):
        section.show_slide(1)
    qtbot.waitUntil(lambda: widget.controller.image_layer is not None
                    and "slide-1" in widget.controller.image_layer.name, timeout=WAIT_MS)
    with qtbot.waitSignal(widget.controller.session_changed, timeout=WAIT_MS):
        widget.segment_section.segment_button.click()  # opens (makes) the second slide's session
    qtbot.waitUntil(lambda: widget.controller.session is not None, timeout=WAIT_MS)
    session = widget.controller.session
    ids = {c.name: c.id for c in session.classes}
    session.store.write_edits(10, 10, np.full((20, 100), ids["background"], np.uint8))
    session.store.write_edits(150, 250, np.full((20, 100), ids["nuclei-rich"], np.uint8))

    result = _train(qtbot, widget)
    assert result is not None
    counts = {c.name: sum(c.painted.values()) for c in result.counts}
    assert counts == {"slide-0.tif": 98304, "slide-1.tif": 4000}
    text = widget.train_section.status.text()
    assert "on 2 slides of the project" in text and "slide-1.tif 4000/4000 px" in text
    project = read_project(folder)
    assert (project.head / "config.json").is_file()
    assert json.loads((project.head / "training.json").read_text())["slides"][1]["painted"]
    assert widget.controller.session.head is not None
    assert "slide-1.tif: 4000 px labelled" in section.slides.item(1).text()

    # a slide outside the project is trained on alone, with the project still open
    other = write_scene(tmp_path / "other" / "outside.tif", seed=3)
    _open(viewer, other)
    qtbot.waitUntil(lambda: widget.controller.image_layer is not None
                    and "outside" in widget.controller.image_layer.name, timeout=WAIT_MS)
    with qtbot.waitSignal(widget.controller.session_changed, timeout=WAIT_MS):
        widget.segment_section.segment_button.click()
    qtbot.waitUntil(lambda: widget.controller.session is not None, timeout=WAIT_MS)
    widget.controller.session.store.write_edits(10, 10, np.full((10, 50), 1, np.uint8))
    widget.controller.session.store.write_edits(150, 250, np.full((10, 50), 2, np.uint8))
    outcome = _train(qtbot, widget)
    assert outcome.painted == {1: 500, 2: 500}  # one slide's TrainOutcome
    assert "on 1000 painted px" in widget.train_section.status.text()

    section.close_project()
    assert widget.controller.project_trainer is None and section.slides.count() == 0


def test_auto_choosing_other_features_switches_the_session_to_them(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    """auto may choose features other than the session's: the slide shown, the controller and the
    Model section then use the chosen ones, and the view is segmented with the new head."""
    from napari_pathsegdiff.engine.session import annotation
    from napari_pathsegdiff.engine.training.auto_select import Candidate

    chosen = ClassicFeatures(num_sigma=1, sigma_max=1, tile_size=64)  # other features than the dock's
    monkeypatch.setattr(annotation, "auto_candidates",
                        lambda extractor: ([Candidate("classic", "forest")], lambda name: chosen))
    folder = tmp_path / "slides"
    slides = [write_scene(folder / f"slide-{i}.tif", seed=i) for i in range(2)]
    viewer = make_napari_viewer()
    widget = _dock(viewer, tmp_path, extractor=_rgb())
    section = widget.project_section
    assert section.auto
    _open(viewer, slides[0])
    assert section.open_project(folder)
    with qtbot.waitSignal(widget.controller.session_changed, timeout=WAIT_MS):
        widget.segment_section.segment_button.click()
    qtbot.waitUntil(lambda: widget.controller.session is not None, timeout=WAIT_MS)
    session = widget.controller.session
    assert session.extractor.identity != chosen.identity
    for cid, y in ((1, 10), (2, 150)):
        session.store.write_edits(y, 10, np.full((20, 200), cid, np.uint8))

    with qtbot.waitSignal(widget.controller.head_changed, timeout=WAIT_MS):
        result = _train(qtbot, widget)
    assert result is not None and result.result.head.head_kind == "forest"
    assert session.extractor is chosen and widget.controller.extractor is chosen
    assert session.head is result.result.head
    assert chosen.identity in widget.model_section.features_label.text()
    _wait_idle(qtbot, widget, "segment")
    assert "Error" not in widget.segment_section.status.text()


def test_auto_choosing_other_features_on_one_slide_updates_the_controller(make_napari_viewer, qtbot, tmp_path,
                                                                           monkeypatch):
    """Without a project too: the next slide opened uses the features auto chose."""
    from napari_pathsegdiff.engine.session import annotation
    from napari_pathsegdiff.engine.training.auto_select import Candidate

    chosen = ClassicFeatures(num_sigma=1, sigma_max=1, tile_size=64)
    monkeypatch.setattr(annotation, "auto_candidates",
                        lambda extractor: ([Candidate("classic", "forest")], lambda name: chosen))
    slides = [write_scene(tmp_path / "slides" / f"slide-{i}.tif", seed=i) for i in range(2)]
    viewer = make_napari_viewer()
    widget = _dock(viewer, tmp_path, extractor=_rgb())
    _open(viewer, slides[0])
    with qtbot.waitSignal(widget.controller.session_changed, timeout=WAIT_MS):
        widget.segment_section.segment_button.click()
    qtbot.waitUntil(lambda: widget.controller.session is not None, timeout=WAIT_MS)
    for cid, y in ((1, 10), (2, 150)):
        widget.controller.session.store.write_edits(y, 10, np.full((20, 200), cid, np.uint8))
    outcome = _train(qtbot, widget)
    assert outcome is not None and outcome.new_head
    assert widget.controller.extractor is chosen and widget.controller.session.extractor is chosen

    _open(viewer, slides[1])
    qtbot.waitUntil(lambda: "slide-1" in widget.controller.image_layer.name, timeout=WAIT_MS)
    with qtbot.waitSignal(widget.controller.session_changed, timeout=WAIT_MS):
        widget.segment_section.segment_button.click()
    qtbot.waitUntil(lambda: widget.controller.session is not None
                    and "slide-1" in str(widget.controller.session.slide.path), timeout=WAIT_MS)
    assert widget.controller.session.extractor is chosen
