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
