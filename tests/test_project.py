"""Projects of several slides: the project file, training on every slide's labels, the command
line (train --slides --annotations, segment-slide on a project) and the GeoJSON round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _annotation_scene import CLASSES, truth_level1, write_scene

from napari_pathsegdiff.cli import main
from napari_pathsegdiff.core.geojson import labels_to_geojson, write_geojson
from napari_pathsegdiff.core.label_store import ClassInfo
from napari_pathsegdiff.core.ome_writer import read_labels_ome_zarr
from napari_pathsegdiff.core.progress import drive
from napari_pathsegdiff.core.slide import open_slide
from napari_pathsegdiff.engine.session.annotation import AnnotationSession
from napari_pathsegdiff.engine.session.project import (
    PROJECT_FILE,
    ProjectError,
    new_project,
    read_project,
    train_project,
)
from napari_pathsegdiff.engine.training.slide_labels import PaintedSlide, _fair_shares, sample_painted
from napari_pathsegdiff.core.label_canvas import LabelCanvas
from napari_pathsegdiff.models.features import RGBFeatures

TRUTH_CLASSES = {c.id: (c.name, c.color) for c in CLASSES}


def _dice(truth, labels) -> float:
    return float(np.mean([2 * ((truth == c) & (labels == c)).sum() / ((truth == c).sum() + (labels == c).sum())
                          for c in TRUTH_CLASSES]))


@pytest.fixture(scope="module")
def slides_and_geojson(tmp_path_factory):
    """Two scenes (different noise) and the QuPath GeoJSON of their truth."""
    root = tmp_path_factory.mktemp("project")
    slides = [write_scene(root / f"slide-{i}.tif", seed=i) for i in range(2)]
    geojson = write_geojson(root / "truth.geojson", labels_to_geojson(truth_level1(), TRUTH_CLASSES,
                                                                       downsample=(2.0, 2.0)))
    return root, slides, geojson


# --- the project file ----------------------------------------------------------------------
def test_a_project_lists_the_slides_of_its_folder_and_reads_back(tmp_path):
    for name in ("b.svs", "a.tif", "notes.txt", ".hidden.tif"):
        (tmp_path / name).write_bytes(b"x")
    project = new_project(tmp_path, classes=CLASSES[:2])
    assert [p.name for p in project.slides] == ["a.tif", "b.svs"]
    data = json.loads((tmp_path / PROJECT_FILE).read_text())
    assert data == {"format": 1, "slides": ["a.tif", "b.svs"], "head": "head",
                    "classes": [c.__dict__ for c in CLASSES[:2]]}
    assert read_project(tmp_path) == project
    with pytest.raises(ProjectError, match="already exists"):
        new_project(tmp_path)


@pytest.mark.parametrize("change, words", [
    ({"extra": 1}, r"unknown keys \['extra'\]"),
    ({"slides": ["a.tif", "gone.svs"]}, "gone.svs does not exist"),
    ({"slides": []}, "at least one slide"),
    ({"classes": [{"id": 1, "name": "a", "color": "red"}]}, "must be '#rrggbb'"),
    ({"classes": [{"id": 1, "name": "a", "color": "#ff0000"}, {"id": 1, "name": "b", "color": "#00ff00"}]},
     "unique"),
    ({"format": 2}, "format 2"),
])
def test_a_bad_project_file_is_refused_naming_it(tmp_path, change, words):
    (tmp_path / "a.tif").write_bytes(b"x")
    data = {"format": 1, "slides": ["a.tif"], "classes": [], "head": "head", **change}
    (tmp_path / PROJECT_FILE).write_text(json.dumps(data))
    with pytest.raises(ProjectError, match=words) as info:
        read_project(tmp_path / PROJECT_FILE)
    assert PROJECT_FILE in str(info.value)


def test_a_project_file_that_is_not_json_is_refused(tmp_path):
    (tmp_path / PROJECT_FILE).write_text("{")
    with pytest.raises(ProjectError, match="not readable as JSON"):
        read_project(tmp_path)


# --- sampling ------------------------------------------------------------------------------
def test_fair_shares_give_small_slides_all_they_have():
    assert _fair_shares([10, 100, 1000], 300) == [10, 100, 190]
    assert _fair_shares([5, 5], 100) == [5, 5]
    assert sum(_fair_shares([50, 50, 50], 100)) == 100


def test_sampling_keeps_every_painted_class_of_every_slide():
    classes = [ClassInfo(1, "a", "#ff0000"), ClassInfo(2, "b", "#00ff00")]
    slides = []
    for k in range(2):
        canvas = LabelCanvas((2048, 2048))
        for i in range(4):  # class a in four chunks, class b in one
            canvas.paint(i * 512, 0, np.full((512, 512), 1, np.uint8))
        canvas.paint(0, 1024, np.full((100, 100), 2, np.uint8))
        slides.append(PaintedSlide(None, canvas, 0, classes, f"s{k}"))
    luts = [np.arange(256, dtype=np.uint8)] * 2
    picked, counts = sample_painted(slides, luts, max_pixels=20_000, max_windows=4, seed=0)
    assert [c.windows_used for c in counts] == [2, 2] and [c.windows for c in counts] == [5, 5]
    for c in counts:
        assert c.painted == {1: 4 * 512 * 512, 2: 10_000}
        assert 9_000 <= c.used <= 14_000
    for k in range(2):
        masks = [m for s, _, m in picked if s is slides[k]]
        rare = int((np.concatenate([m.ravel() for m in masks]) == 2).sum())
        assert 1_800 <= rare <= 2_200  # the rare class keeps MIN_CLASS_PIXELS, not 4 % of its pixels


# --- training on every slide ----------------------------------------------------------------
def test_train_project_learns_from_every_slide_and_saves_in_the_project(slides_and_geojson, tmp_path):
    root, slides, geojson = slides_and_geojson
    folder = tmp_path / "p"
    folder.mkdir()
    for s in slides:
        (folder / s.name).write_bytes(s.read_bytes())
    extractor = RGBFeatures(tile_size=64, halo=4)
    project = new_project(folder, classes=[ClassInfo(1, "background", "#a0a0a0")])
    # slide 0: the GeoJSON; slide 1: only background and nuclei-rich, named differently
    with AnnotationSession.open(open_slide(project.slides[0]), extractor=extractor, classes=[]) as s:
        drive(s.import_annotations(geojson), show=False)
    with AnnotationSession.open(open_slide(project.slides[1]), extractor=extractor,
                                classes=[ClassInfo(1, "nuclei-rich", "#911eb4"), ClassInfo(2, "background", "#a0a0a0")]) as s:
        s.store.write_edits(10, 10, np.full((20, 100), 2, np.uint8))
        s.store.write_edits(150, 250, np.full((20, 100), 1, np.uint8))
    result, project = drive(train_project(project, extractor=extractor, auto=False, steps=60), show=False)
    by_name = {c.name: c.id for c in project.classes}
    assert list(by_name) == ["background", "stroma", "nuclei-rich"]
    assert read_project(folder).classes == project.classes
    counts = {c.name: c.painted for c in result.counts}
    assert counts["slide-1.tif"] == {by_name["nuclei-rich"]: 2000, by_name["background"]: 2000}
    assert sum(counts["slide-0.tif"].values()) == 256 * 384
    assert (project.head / "config.json").is_file() and not project.previous_head.exists()
    record = json.loads((project.head / "training.json").read_text())
    assert [s["slide"] for s in record["slides"]] == ["slide-0.tif", "slide-1.tif"]
    result2, _ = drive(train_project(project, extractor=extractor, auto=False, steps=10,
                                     head=result.result.head), show=False)
    assert result2.fine_tuned and (project.previous_head / "config.json").is_file()


def test_train_project_without_annotations_says_what_to_do(slides_and_geojson, tmp_path):
    _, slides, _ = slides_and_geojson
    (tmp_path / "x.tif").write_bytes(slides[0].read_bytes())
    project = new_project(tmp_path)
    with pytest.raises(ProjectError, match="has annotations yet"):
        drive(train_project(project, extractor=RGBFeatures(tile_size=64, halo=4), auto=False), show=False)


# --- the command line -------------------------------------------------------------------------
def test_a_head_trained_from_two_slides_geojson_reproduces_their_labels(slides_and_geojson, tmp_path, capsys):
    root, slides, geojson = slides_and_geojson
    head = tmp_path / "head"
    argv = ["train", "--slides", *map(str, slides), "--annotations", str(geojson), str(geojson),
            "--features", "rgb", "--head", "forest", "--out", str(head)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "slide-0.tif: 98304 labelled px (background 24576, stroma 36864, nuclei-rich 36864)" in out
    record = json.loads((head / "training.json").read_text())
    assert [s["used"] for s in record["slides"]] == [98304, 98304]
    # fine-tuning it on a file naming the classes in another order keeps the head's ids
    other = write_geojson(tmp_path / "two.geojson", labels_to_geojson(
        truth_level1(), {3: TRUTH_CLASSES[3], 1: TRUTH_CLASSES[1]}, downsample=(2.0, 2.0)))
    assert main(["train", "--slides", str(slides[1]), "--annotations", str(other), "--init", str(head),
                 "--out", str(tmp_path / "tuned")]) == 0
    record = json.loads((tmp_path / "tuned" / "training.json").read_text())
    assert record["fine_tuned"] and [c["name"] for c in record["classes"]] == ["background", "stroma", "nuclei-rich"]
    assert record["slides"][0]["painted"] == {"1": 24576, "3": 36864}
    # segment both slides through a project that lists them
    (root / PROJECT_FILE).unlink(missing_ok=True)
    project = new_project(root, slides=slides, head=str(head))
    assert main(["segment-slide", str(project.path), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    for s in slides:
        labels, _ = read_labels_ome_zarr(tmp_path / "out" / s.stem / "labels.ome.zarr", level=0)
        assert _dice(truth_level1(), np.asarray(labels)) >= 0.8
    # round trip: the GeoJSON segment-slide wrote, imported on the same slide, gives its labels
    labels = np.asarray(read_labels_ome_zarr(tmp_path / "out" / slides[0].stem / "labels.ome.zarr", level=0)[0])
    with AnnotationSession.open(open_slide(slides[0]), folder=tmp_path / "fresh", classes=[],
                                extractor=RGBFeatures(tile_size=64, halo=4)) as session:
        drive(session.import_annotations(tmp_path / "out" / slides[0].stem / "classes.geojson"), show=False)
        back = session.store.read(0, 0, *session.store.shape, which="edits")
        ids = {c.name: c.id for c in session.classes}
    for cid, (name, _) in TRUTH_CLASSES.items():
        if (labels == cid).any():
            a, b = labels == cid, back == ids[name]
            assert (a & b).sum() / (a | b).sum() >= 0.99, name


@pytest.mark.parametrize("argv, words", [
    (["--annotations", "a.geojson"], "one GeoJSON per slide"),
    (["--images", "x", "--masks", "y"], "not both"),
])
def test_train_slides_refuses_mismatched_options(slides_and_geojson, tmp_path, capsys, argv, words):
    _, slides, _ = slides_and_geojson
    code = main(["train", "--slides", *map(str, slides), *argv, "--out", str(tmp_path / "h")])
    assert code == 2 and words in capsys.readouterr().err


def test_segment_slide_on_a_project_without_a_head_says_so(slides_and_geojson, tmp_path, capsys):
    _, slides, _ = slides_and_geojson
    project = new_project(tmp_path, slides=slides)
    assert main(["segment-slide", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert f"The project's head {project.head} does not exist yet" in capsys.readouterr().err
