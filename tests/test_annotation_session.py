"""The annotate-and-retrain loop without a GUI: session folder, segment, train on edits,
protection of painted pixels, cancel, reopening, suggestions, exports and bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from _annotation_scene import CLASSES, LEVEL1_SHAPE, paint_strokes, strokes_level1, truth_level1, write_scene
from safetensors.torch import load_file

from napari_pathsegdiff.core.label_store import ClassInfo, LabelStore
from napari_pathsegdiff.core.progress import drive
from napari_pathsegdiff.core.region import Region
from napari_pathsegdiff.core.slide import Slide, open_slide
from napari_pathsegdiff.engine.session.annotation import AnnotationError, AnnotationSession, store_ids_for
from napari_pathsegdiff.engine.session.annotation_export import export_labels
from napari_pathsegdiff.engine.session.label_window import PREDICTED, EditWindow, class_ids, display_values
from napari_pathsegdiff.engine.session.session_folder import (
    HEAD,
    LABELS,
    PREVIOUS_HEAD,
    identity_hash,
    session_folder_for,
)
from napari_pathsegdiff.models.features import ClassicFeatures, RGBFeatures
from napari_pathsegdiff.models.heads import WEIGHTS_FILE, HeadError, save_head

STEPS = 40


@pytest.fixture(scope="module")
def rgb():
    return RGBFeatures(tile_size=64, halo=4)


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    path = write_scene(tmp_path_factory.mktemp("slides") / "scene.tif")
    with open_slide(path) as s:
        yield s


@pytest.fixture
def session(slide, rgb, tmp_path):
    """A fresh session with the class table and no head, in its own folder."""
    return AnnotationSession.open(slide, extractor=rgb, classes=CLASSES, folder=tmp_path / "session")


@pytest.fixture(scope="module")
def trained_folder(slide, rgb, tmp_path_factory):
    """A session folder after painting the three strokes and training once."""
    folder = tmp_path_factory.mktemp("trained") / "session"
    session = AnnotationSession.open(slide, extractor=rgb, classes=CLASSES, folder=folder)
    _trained(session)
    return folder


@pytest.fixture
def trained(slide, trained_folder, tmp_path):
    """A copy of the trained session, reopened from disk."""
    shutil.copytree(trained_folder, tmp_path / "trained")
    return AnnotationSession.open(slide, folder=tmp_path / "trained")


def _trained(session, **kw):
    paint_strokes(session.store)
    return drive(session.train_on_edits(steps=STEPS, **kw), show=False)


def _weights(folder):
    return {k: v.clone() for k, v in load_file(folder / WEIGHTS_FILE).items()}


def _same_weights(a, b):
    return a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


# --- where the session lives -------------------------------------------------------------------


def test_session_folder_is_beside_the_slide_or_in_the_user_cache(slide, rgb, tmp_path):
    root = tmp_path / "cache"
    beside = slide.path.resolve().with_name("scene.tif.pathsegdiff")
    assert session_folder_for(slide, root=root) == beside
    opened = AnnotationSession.open(slide, extractor=rgb, classes=CLASSES, root=root)
    try:
        assert opened.folder == beside and (beside / LABELS).is_dir()
    finally:
        shutil.rmtree(beside)

    # the bundled sample lies inside the package: never write there
    from napari_pathsegdiff._sample_data import sample_slide_path

    with open_slide(sample_slide_path()) as sample:
        assert session_folder_for(sample, root=root) == root / identity_hash(sample.identity)
    # in-memory images always use the cache
    image = Slide.from_array(np.zeros((32, 32, 3), np.uint8), mpp=0.5)
    assert session_folder_for(image, root=root) == root / identity_hash(image.identity)


def test_read_only_slide_folder_falls_back_to_the_user_cache(slide, tmp_path, monkeypatch):
    from napari_pathsegdiff.engine.session import session_folder

    writable = []
    # the permission check itself (root may write into read-only folders, so ask os.access)
    monkeypatch.setattr(session_folder.os, "access", lambda p, mode: writable.append(p) or False)
    got = session_folder_for(slide, root=tmp_path / "cache")
    assert got == tmp_path / "cache" / identity_hash(slide.identity)
    assert writable == [slide.path.resolve().parent]


def test_an_existing_session_is_found_again_wherever_it_was_made(slide, rgb, tmp_path, monkeypatch):
    from napari_pathsegdiff.engine.session import session_folder

    monkeypatch.setattr(session_folder.os, "access", lambda p, mode: False)
    root = tmp_path / "cache"
    cached = root / identity_hash(slide.identity)
    AnnotationSession.open(slide, extractor=rgb, classes=CLASSES, folder=cached)
    assert session_folder_for(slide, root=root) == cached


def test_the_store_is_created_at_the_analysis_level(session, slide):
    assert session.level == 1  # 0.5 µm/px, the default analysis µm/px
    assert session.store.shape == LEVEL1_SHAPE
    assert session.store.mpp == pytest.approx(0.5)
    assert session.store.downsample == (2.0, 2.0)
    assert (session.folder / LABELS).is_dir()
    assert session.classes == CLASSES and session.head is None


# --- training on edits --------------------------------------------------------------------------


def test_training_without_painted_pixels_or_with_one_class_changes_nothing(session):
    with pytest.raises(AnnotationError, match="No pixel is painted yet"):
        drive(session.train_on_edits(steps=STEPS), show=False)
    paint_strokes(session.store, classes=(2,))
    with pytest.raises(AnnotationError, match="Only class 'stroma' is painted"):
        drive(session.train_on_edits(steps=STEPS), show=False)
    assert session.head is None and not (session.folder / HEAD).exists()
    assert session.painted_counts() == {2: 600}

    session.store.write_edits(0, 0, np.full((2, 2), 9, np.uint8))
    with pytest.raises(AnnotationError, match=r"Painted class id\(s\) \[9\] are not in the class table"):
        drive(session.train_on_edits(steps=STEPS), show=False)
    assert session.head is None and not (session.folder / HEAD).exists()


def test_segmenting_without_a_head_says_what_to_do(session):
    with pytest.raises(AnnotationError, match="no trained head yet"):
        drive(session.segment(Region(1, 0, 0, 32, 32)), show=False)


def test_strokes_then_training_predict_their_classes_and_save_the_head(session):
    records = []
    paint_strokes(session.store)
    outcome = drive(session.train_on_edits(steps=STEPS), show=False, callback=records.append)
    assert outcome.new_head and outcome.painted == {1: 600, 2: 600, 3: 600} and outcome.windows == 1
    assert {r.stage for r in records} >= {"features", "train", "save"}
    assert any("loss" in r.metrics for r in records if r.stage == "train")
    head = session.head
    assert head.class_ids == [1, 2, 3] and head.class_names == ["background", "stroma", "nuclei-rich"]
    assert head.config.mpp == pytest.approx(0.5)
    saved = session.folder / HEAD
    assert _same_weights(_weights(saved), {k: v for k, v in head.state_dict().items()})
    training = json.loads((saved / "training.json").read_text())
    assert training["painted"] == {"1": 600, "2": 600, "3": 600} and training["fine_tuned"] is False

    result = drive(session.segment(Region(1, 0, 0, *LEVEL1_SHAPE)), show=False)
    truth = truth_level1()
    assert result.labels.shape == LEVEL1_SHAPE
    assert (result.labels == truth).mean() > 0.98
    for k, box in strokes_level1().items():
        assert (session.store.read(box[0].start, box[1].start, 6, 100) == k).all()


def test_segment_writes_only_inside_the_region_and_never_over_painted_pixels(trained):
    session = trained
    region = Region(0, 200, 300, 200, 300)  # level 0: y 100..200, x 150..300 at level 1
    result = drive(session.segment(region), show=False)
    assert result.region == Region(1, 100, 150, 100, 150)
    assert result.uncertainty.shape == (100, 150) and 0 <= np.nanmin(result.uncertainty)
    prediction = session.store.read(0, 0, *LEVEL1_SHAPE, which="prediction")
    inside = np.zeros(LEVEL1_SHAPE, bool)
    inside[100:200, 150:300] = True
    assert (prediction[inside] > 0).all() and (prediction[~inside] == 0).all()

    # paint a wrong class over part of the region: a new prediction keeps it
    session.store.write_edits(120, 160, np.full((10, 10), 3, np.uint8))
    drive(session.segment(region), show=False)
    merged = session.store.read(120, 160, 10, 10)
    assert (merged == 3).all()
    assert (session.store.read(120, 160, 10, 10, which="prediction") == 2).all()


def test_training_uses_edits_everywhere_on_the_slide_and_fine_tunes(trained):
    session = trained
    before = _weights(session.folder / HEAD)
    # correct far from the first strokes: another chunk of the store is edited
    session.store.write_edits(230, 370, np.full((20, 10), 3, np.uint8))
    outcome = drive(session.train_on_edits(steps=STEPS), show=False)
    assert not outcome.new_head and outcome.painted[3] == 800 and outcome.windows == 1
    assert outcome.head_folder == session.folder / HEAD
    assert _same_weights(_weights(session.folder / PREVIOUS_HEAD), before)
    assert not _same_weights(_weights(session.folder / HEAD), before)


def test_a_new_class_painted_makes_a_new_head_for_the_class_table(trained):
    session = trained
    session.set_classes(CLASSES + [ClassInfo(4, "fat", "#46f0f0")])
    session.store.write_edits(30, 300, np.full((6, 60), 4, np.uint8))
    outcome = drive(session.train_on_edits(steps=STEPS), show=False)
    assert outcome.new_head and session.head.class_ids == [1, 2, 3, 4]
    assert session.head.class_names[-1] == "fat"


def test_closing_the_training_early_leaves_the_previous_head(trained):
    session = trained
    head, before = session.head, _weights(session.folder / HEAD)
    session.store.write_edits(230, 370, np.full((20, 10), 2, np.uint8))
    work = session.train_on_edits(steps=500)
    steps = 0
    for record in work:
        if record.stage == "train" and record.done > 0:
            steps = record.done
            if steps == 3:
                break
    work.close()
    assert steps == 3
    assert session.head is head
    assert _same_weights(_weights(session.folder / HEAD), before)
    assert not (session.folder / PREVIOUS_HEAD).exists()


def test_reopening_the_slide_restores_edits_classes_and_head(slide, session):
    _trained(session)
    weights = _weights(session.folder / HEAD)
    painted = session.painted_counts()
    again = AnnotationSession.open(slide, folder=session.folder)  # features from the saved head
    assert again.level == 1
    assert again.classes == CLASSES
    assert again.painted_counts() == painted
    assert again.extractor.identity == "rgb:v1"
    assert _same_weights({k: v for k, v in again.head.state_dict().items()}, weights)


def test_a_store_of_another_slide_is_refused_and_left_alone(session):
    paint_strokes(session.store)
    other = Slide.from_array(np.zeros((64, 64, 3), np.uint8), mpp=0.5)
    with pytest.raises(AnnotationError, match="belongs to another slide"):
        AnnotationSession.open(other, folder=session.folder, extractor=RGBFeatures())
    assert LabelStore.open(session.folder / LABELS).painted_pixel_count() == 1800


# --- heads --------------------------------------------------------------------------------------


def test_a_head_for_other_features_is_refused_with_the_reason(trained, tmp_path):
    session = trained
    classic = ClassicFeatures(num_sigma=1, sigma_max=1, tile_size=64)
    session_classic = AnnotationSession.open(
        Slide.from_array(np.full((64, 64, 3), 200, np.uint8), mpp=0.5),
        folder=tmp_path / "classic", extractor=classic, classes=CLASSES,
    )
    session_classic.store.write_edits(0, 0, np.full((8, 8), 1, np.uint8))
    session_classic.store.write_edits(40, 40, np.full((8, 8), 2, np.uint8))
    drive(session_classic.train_on_edits(steps=5), show=False)
    foreign = tmp_path / "classic-head"
    save_head(session_classic.head, foreign)

    head, before = session.head, _weights(session.folder / HEAD)
    with pytest.raises(HeadError, match="trained on features 'classic:.*' but the extractor gives 'rgb:v1'"):
        session.open_head(foreign)
    assert session.head is head and _same_weights(_weights(session.folder / HEAD), before)


def test_a_head_with_class_zero_is_shown_with_ids_shifted_by_one(slide, rgb, tmp_path):
    from napari_pathsegdiff.engine.training.train_head import train_head

    image = np.asarray(slide.levels[1])
    mask = (truth_level1() >= 2).astype(np.uint8)  # 0 background, 1 tissue
    head = drive(train_head([(image, mask)], extractor=rgb, steps=STEPS, seed=0), show=False).head
    assert head.class_ids == [0, 1] and store_ids_for(head.class_ids) == [1, 2]
    session = AnnotationSession.open(slide, extractor=rgb, head=head, folder=tmp_path / "s")
    assert [(c.id, c.name) for c in session.classes] == [(1, "background"), (2, "class 1")]
    result = drive(session.segment(Region(1, 0, 0, *LEVEL1_SHAPE)), show=False)
    assert ((result.labels == 2) == (truth_level1() >= 2)).mean() > 0.98
    # fine-tuning maps the store ids back to the head's
    session.store.write_edits(20, 40, np.full((6, 100), 1, np.uint8))
    session.store.write_edits(150, 40, np.full((6, 100), 2, np.uint8))
    outcome = drive(session.train_on_edits(steps=10), show=False)
    assert not outcome.new_head and outcome.painted == {1: 600, 2: 600}
    assert set(outcome.result.class_pixels) == {0, 1}


def test_new_head_keeps_the_old_one_aside(trained):
    session = trained
    before = _weights(session.folder / HEAD)
    session.new_head()
    assert session.head is None and not (session.folder / HEAD).exists()
    assert _same_weights(_weights(session.folder / PREVIOUS_HEAD), before)


# --- suggestions --------------------------------------------------------------------------------


def test_where_to_label_next_picks_uncertain_unpainted_tissue(trained):
    session = trained
    with pytest.raises(AnnotationError, match="segment a region first"):
        session.where_to_label_next()
    drive(session.segment(Region(1, 0, 0, *LEVEL1_SHAPE)), show=False)
    # make the lower-right part the most uncertain area
    unc = session._uncertainty_array(create=False)
    unc[:, :] = 10
    unc[192:256, 320:384] = 250
    suggestion = session.where_to_label_next(size=64)
    assert suggestion.region == Region(1, 192, 320, 64, 64)
    assert suggestion.uncertainty == pytest.approx(249 / 254)
    # once painted there, it is not suggested again
    session.store.write_edits(200, 330, np.full((4, 4), 3, np.uint8))
    assert session.where_to_label_next(size=64).region != Region(1, 192, 320, 64, 64)
    # glass is never suggested: the top rows are background
    session.store.write_edits(64, 0, np.full((192, 384), 2, np.uint8))
    with pytest.raises(AnnotationError, match="already holds painted pixels"):
        session.where_to_label_next(size=64)


# --- the editable window ----------------------------------------------------------------------


def test_edit_window_records_paint_erase_and_undo(session):
    session.store.write_prediction(0, 0, np.full((40, 40), 2, np.uint8))
    window = EditWindow(session.store, 10, 10, 20, 20)
    data = window.reload()
    assert data.dtype == np.uint16 and (data == PREDICTED + 2).all()  # predicted, not painted

    data[2:4, 2:6] = 3  # a stroke
    change = window.record(data)
    assert change.painted == 8 and change.erased == 0
    assert (session.store.read(12, 12, 2, 4, which="edits") == 3).all()
    assert session.painted_counts() == {3: 8}

    data[2:4, 2:4] = 0  # the eraser: the edit goes, the prediction shows again
    change = window.record(data)
    assert change.erased == 4 and (change.display == PREDICTED + 2).all()
    data[change.box] = change.display
    assert session.painted_counts() == {3: 4}

    data[2:4, 4:6] = PREDICTED + 2  # undo restores the predicted pixels: no longer painted
    change = window.record(data, kind="restore")
    assert change.erased == 4 and session.painted_counts() == {}
    data[5, 5] = 1  # undo restoring a painted class keeps it painted
    window.record(data, kind="restore")
    assert session.painted_counts() == {1: 1}

    with pytest.raises(ValueError, match="does not lie inside the store"):
        EditWindow(session.store, 250, 0, 20, 20)
    with pytest.raises(ValueError, match="has shape"):
        window.record(np.zeros((3, 3), np.uint8))


def test_edit_window_records_every_touched_pixel_whatever_the_prediction(session):
    session.store.write_prediction(0, 0, np.full((40, 40), 2, np.uint8))
    window = EditWindow(session.store, 10, 10, 20, 20)
    stroke = np.zeros((3, 5), bool)
    stroke[1] = True

    # a stroke of the class the model already predicts is an edit of that class
    change = window.record_paint((slice(4, 7), slice(0, 5)), stroke, 2)
    assert (change.painted, change.erased) == (5, 0) and change.box == (slice(4, 7), slice(0, 5))
    assert (session.store.read(15, 10, 1, 5, which="edits") == 2).all()
    assert session.painted_counts() == {2: 5}
    assert (window.shown[5, :5] == 2).all() and (window.shown[4] == PREDICTED + 2).all()
    # a value picked from a predicted pixel paints its class
    window.record_paint((slice(0, 1), slice(0, 2)), np.ones((1, 2), bool), PREDICTED + 3)
    assert session.painted_counts() == {2: 5, 3: 2}
    assert (change := window.record_paint((slice(0, 1), slice(0, 2)), np.ones((1, 2), bool), 0)).erased == 2
    assert (change.display == PREDICTED + 2).all() and session.painted_counts() == {2: 5}
    # the eraser over a predicted pixel leaves no edit and shows the prediction
    change = window.record_paint((slice(10, 11), slice(10, 11)), np.ones((1, 1), bool), 0)
    assert change.erased == 1 and change.display.tolist() == [[PREDICTED + 2]]
    assert session.painted_counts() == {2: 5}
    # per-pixel values (a fill of one class next to a polygon of another)
    values = np.array([[1, 1, 3]])
    window.record_paint((slice(19, 20), slice(17, 20)), np.ones((1, 3), bool), values)
    assert session.store.read(29, 27, 1, 3, which="edits").tolist() == [[1, 1, 3]]
    assert display_values(np.array([[2, 0]]), np.array([[0, 0]])).tolist() == [[PREDICTED + 2, 0]]
    assert class_ids(window.shown[19:20, 16:20]).tolist() == [[2, 1, 1, 3]]

    with pytest.raises(ValueError, match="600 is not a class id"):
        window.record_paint((slice(0, 1), slice(0, 1)), np.ones((1, 1), bool), 600)
    with pytest.raises(ValueError, match="does not lie inside the window"):
        window.record_paint((slice(18, 21), slice(0, 1)), np.ones((3, 1), bool), 1)
    with pytest.raises(ValueError, match="touched mask has shape"):
        window.record_paint((slice(0, 2), slice(0, 2)), np.ones((1, 2), bool), 1)
    assert session.painted_counts() == {2: 5, 1: 2, 3: 1}


# --- export -------------------------------------------------------------------------------------


def test_export_writes_the_merged_labels_with_scale_and_class_names(session, trained, tmp_path):
    from napari_pathsegdiff.core.ome_writer import read_labels_ome_tiff, read_labels_ome_zarr

    with pytest.raises(AnnotationError, match="Nothing is segmented or painted yet"):
        export_labels(session, tmp_path / "empty.geojson")
    paint_strokes(session.store)
    session = AnnotationSession.open(session.slide, folder=session.folder, head=trained.head)
    drive(session.segment(Region(1, 64, 0, 192, 384)), show=False)
    merged = session.store.read(0, 0, *LEVEL1_SHAPE)

    labels, mpp = read_labels_ome_tiff(export_labels(session, tmp_path / "m.ome.tif"))
    np.testing.assert_array_equal(labels, merged)
    assert mpp == pytest.approx(0.5)
    labels, mpp = read_labels_ome_zarr(export_labels(session, tmp_path / "m.ome.zarr"))
    np.testing.assert_array_equal(labels.compute(), merged)

    fc = json.loads(export_labels(session, tmp_path / "m.geojson").read_text())
    names = {f["properties"]["classification"]["name"] for f in fc["features"]}
    assert names == {"background", "stroma", "nuclei-rich"}
    stroma = [f for f in fc["features"] if f["properties"]["class_id"] == 2]
    xs = [x for f in stroma for ring in f["geometry"]["coordinates"] for x, _ in ring]
    ys = [y for f in stroma for ring in f["geometry"]["coordinates"] for _, y in ring]
    # level-0 pixels: the stroma half is x < 384, y >= 128 (the stroke at the top is painted glass)
    assert max(xs) <= 384 + 2 and min(ys) >= 128 - 2

    with pytest.raises(AnnotationError, match=r"name the file \*\.ome\.tif"):
        export_labels(session, tmp_path / "m.png")


def test_an_export_format_is_one_function_and_one_registration(session, trained, tmp_path, monkeypatch):
    from napari_pathsegdiff.engine.session import annotation_export

    monkeypatch.setattr(annotation_export, "_FORMATS", dict(annotation_export._FORMATS))
    written = []

    def write_npy(sess, path):
        with open(path, "wb") as fh:
            np.save(fh, np.asarray(sess.store.merged()))
        written.append(path)
        return path

    annotation_export.register_export_format("numpy", (".npy",), write_npy)
    assert annotation_export.export_formats() == ("ome-tiff", "ome-zarr", "geojson", "numpy")
    paint_strokes(session.store)
    out = export_labels(session, tmp_path / "labels.NPY")  # chosen by its ending, any case
    assert written == [out] and np.load(out).shape == LEVEL1_SHAPE
    with pytest.raises(AnnotationError, match=r"Unknown export format 'tiff': use one of ome-tiff, ome-zarr, "
                                              r"geojson, numpy"):
        export_labels(session, tmp_path / "x.tif", format="tiff")
