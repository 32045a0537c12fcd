"""QuPath GeoJSON in: reading, rasterising at pixel centres, and painting into a slide's session."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _annotation_scene import CLASSES, paint_strokes, truth_level1, write_scene
from skimage.draw import disk

from napari_pathsegdiff.core import geojson_read
from napari_pathsegdiff.core.geojson import labels_to_geojson, write_geojson
from napari_pathsegdiff.core.geojson_read import GeoJSONError, RasterStats, parse_annotations, rasterise
from napari_pathsegdiff.core.label_canvas import LabelCanvas
from napari_pathsegdiff.core.label_store import ClassInfo
from napari_pathsegdiff.core.progress import drive
from napari_pathsegdiff.core.slide import open_slide
from napari_pathsegdiff.engine.session.annotation import AnnotationSession
from napari_pathsegdiff.models.features import RGBFeatures

NAMES = {1: ("tumour", "#ff0000"), 2: ("stroma", "#00ff00"), 3: ("necrosis", "#0000ff")}


def _nested_labels() -> np.ndarray:
    """Class 1 with a hole holding class 2 with a hole holding a class-1 island, and a
    two-part class 3 (a MultiPolygon once traced)."""
    lab = np.zeros((600, 700), np.uint8)
    for radius, value in ((250, 1), (120, 2), (50, 1)):
        rr, cc = disk((300, 300), radius, shape=lab.shape)
        lab[rr, cc] = value
    lab[40:120, 580:680] = 3
    lab[400:560, 600:660] = 3
    return lab


def _paint(blocks, shape) -> np.ndarray:
    canvas = LabelCanvas(shape)
    for b in blocks:
        canvas.paint(b.y, b.x, b.mask)
    return canvas.read(0, 0, *shape)


def _iou(a, b) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("tile", [4096, 64, 16])
def test_exported_labels_come_back_the_same(tile, monkeypatch):
    monkeypatch.setattr(geojson_read, "TILE", tile)  # 4096: one fill per area; 64 and 16: tiles
    lab = _nested_labels()
    fc = json.loads(json.dumps(labels_to_geojson(lab, NAMES, downsample=(4.0, 4.0))))
    read = parse_annotations(fc, source="export")
    ids = {name: i for i, (name, _) in NAMES.items()}
    stats = RasterStats()
    back = _paint(rasterise(read.annotations, ids, shape=lab.shape, downsample=(4.0, 4.0), stats=stats), lab.shape)
    assert (stats.clipped, stats.outside) == (0, 0)
    for c in NAMES:
        assert _iou(lab == c, back == c) >= 0.99, c
    assert read.class_colors() == {"tumour": "#ff0000", "stroma": "#00ff00", "necrosis": "#0000ff"}


def test_pixels_are_painted_by_their_centres():
    square = {"type": "Feature", "properties": {"classification": {"name": "a"}},
              "geometry": {"type": "Polygon", "coordinates": [[[4, 4], [12, 4], [12, 12], [4, 12], [4, 4]]]}}
    read = parse_annotations({"type": "FeatureCollection", "features": [square]}, source="t")
    out = _paint(rasterise(read.annotations, {"a": 7}, shape=(10, 10), downsample=(2.0, 2.0)), (10, 10))
    expected = np.zeros((10, 10), np.uint8)
    expected[2:6, 2:6] = 7  # level-0 4..12 is grid 2..6 at downsample 2
    np.testing.assert_array_equal(out, expected)


def _feature(coords, name=None, color=None, kind="Polygon", **classification):
    props = {"objectType": "annotation"}
    if name is not None:
        props["classification"] = {"name": name, **({"color": color} if color else {}), **classification}
    return {"type": "Feature", "geometry": {"type": kind, "coordinates": coords}, "properties": props}


def _ring(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


@pytest.fixture
def session(tmp_path):
    """A session of the 512 x 768 scene (analysis level 1, 256 x 384) with the scene's classes."""
    slide = open_slide(write_scene(tmp_path / "scene.tif"))
    s = AnnotationSession.open(slide, extractor=RGBFeatures(tile_size=64, halo=4), classes=CLASSES,
                               folder=tmp_path / "session")
    yield s
    s.close()


def _write(tmp_path, features, name="qupath.geojson"):
    path = tmp_path / name
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def test_a_qupath_file_paints_classes_and_counts_what_it_skips(session, tmp_path):
    features = [
        _feature([_ring(0, 0, 200, 100)], "Stroma"),  # another case: the table's 'stroma'
        _feature([_ring(400, 200, 600, 400), _ring(450, 250, 550, 350)], "Tumor", [200, 0, 0]),  # with a hole
        _feature([[_ring(0, 300, 100, 400)], [_ring(200, 300, 300, 400)]], "Tumor", kind="MultiPolygon"),
        _feature([_ring(600, 0, 700, 100)], "Necrosis", colorRGB=-16744448),  # QuPath 0.2 packed colour
        _feature([_ring(300, 0, 400, 100)]),  # no class
        _feature([10, 10], "Tumor", kind="Point"),
        _feature([[0, 0], [50, 50]], "Tumor", kind="LineString"),
    ]
    report = drive(session.import_annotations(_write(tmp_path, features)), show=False)
    assert (report.areas, report.unclassified, report.not_areas, report.clipped) == (4, 1, 2, 0)
    names = {c.name: c for c in session.classes}
    assert names["Tumor"].color == "#c80000" and names["Necrosis"].color == "#008000"
    assert {c.id for c in report.new_classes} == {names["Tumor"].id, names["Necrosis"].id}
    edits = session.store.read(0, 0, *session.store.shape, which="edits")
    stroma, tumour = names["stroma"].id, names["Tumor"].id
    assert (edits[0:50, 0:100] == stroma).all()  # level 0 halved: analysis level 1
    assert edits[125, 225] == 0 and edits[105, 205] == tumour  # the hole stays unpainted
    assert (edits[150:200, 0:50] == tumour).all() and (edits[150:200, 100:150] == tumour).all()
    assert report.painted[tumour] == 100 * 100 - 50 * 50 + 2 * 50 * 50
    assert "1 without a class" in report.text() and "2 points or lines" in report.text()


def test_painted_pixels_are_kept_and_counted(session, tmp_path):
    paint_strokes(session.store, classes=(1,))  # background stroke at rows 20..26, cols 40..140
    before = session.store.read(0, 0, *session.store.shape, which="edits")
    report = drive(session.import_annotations(_write(tmp_path, [_feature([_ring(0, 0, 768, 80)], "stroma")])),
                   show=False)
    after = session.store.read(0, 0, *session.store.shape, which="edits")
    assert (after[before > 0] == 1).all()
    assert report.kept == int((before > 0).sum()) == 600
    assert report.painted == {2: 40 * 384 - 600}


def test_areas_crossing_the_edge_are_clipped_and_counted(session, tmp_path):
    report = drive(session.import_annotations(_write(tmp_path, [_feature([_ring(700, 480, 790, 530)], "stroma")])),
                   show=False)
    assert report.clipped == 1
    edits = session.store.read(0, 0, *session.store.shape, which="edits")
    assert report.painted == {2: 16 * 34} and (edits[240:, 350:] == 2).sum() == 16 * 34


@pytest.mark.parametrize("content, words", [
    ('{"type": "FeatureCollection", "features": []}', "holds no features"),
    ("{not json", "not a GeoJSON file"),
    ('{"type": "Polygon", "coordinates": []}', "not GeoJSON features"),
    ('{"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}, '
     '"geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1]]]}}]}', "feature 0 has a malformed geometry"),
    ('{"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}, '
     '"geometry": {"type": "Polygon", "coordinates": [[[0, 0], [9, 0], [9, 9], [0, 0]]]}}]}', "no classified area"),
])
def test_bad_files_are_refused_naming_the_file_and_change_nothing(session, tmp_path, content, words):
    path = tmp_path / "bad.geojson"
    path.write_text(content)
    classes = session.classes
    with pytest.raises(GeoJSONError, match=words) as info:
        drive(session.import_annotations(path), show=False)
    assert str(path) in str(info.value)
    assert session.classes == classes and session.store.edited_windows() == []


def test_a_file_for_another_slide_is_refused(session, tmp_path):
    path = _write(tmp_path, [_feature([_ring(100, 100, 300, 300)], "stroma"),
                             _feature([_ring(4000, 3000, 4100, 3100)], "New class")])
    with pytest.raises(GeoJSONError, match=r"far beyond scene.tif \(768 x 512 px\): the file was made for another slide"):
        drive(session.import_annotations(path), show=False)
    assert [c.name for c in session.classes] == [c.name for c in CLASSES]
    assert session.store.edited_windows() == []


def test_the_canvas_writes_each_chunk_once_and_keeps_what_is_there():
    import zarr

    array = zarr.create_array(store={}, shape=(1000, 1000), chunks=(256, 256), dtype="uint8", fill_value=0)
    array[0:10, 0:10] = 5
    canvas = LabelCanvas(array.shape, array=array, max_chunks=1)  # flushes after every chunk
    painted, kept = canvas.paint(0, 0, np.full((300, 300), 2, np.uint8))
    assert kept == 100 and painted == {2: 300 * 300 - 100}
    canvas.flush()
    out = np.asarray(array[:])
    assert (out[:10, :10] == 5).all() and (out[:300, :300] > 0).all() and out[300:].sum() == 0


def test_the_export_of_a_truth_mask_round_trips_through_a_session(session, tmp_path):
    truth = truth_level1()
    fc = labels_to_geojson(truth, {c.id: (c.name, c.color) for c in CLASSES}, downsample=(2.0, 2.0))
    path = write_geojson(tmp_path / "truth.geojson", fc)
    drive(session.import_annotations(path), show=False)
    edits = session.store.read(0, 0, *session.store.shape, which="edits")
    for c in CLASSES:
        assert _iou(truth == c.id, edits == c.id) >= 0.99
    assert session.classes == CLASSES
    assert isinstance(session.classes[0], ClassInfo)
