"""Which head predicted what: the label store records it, regions an earlier head segmented are
found and segmented again, painted pixels stay, and exports never mix two heads."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from _annotation_scene import CLASSES, COLOURS

from napari_pathsegdiff.core.label_store import HEAD_ARRAY, LabelStore
from napari_pathsegdiff.core.progress import drive
from napari_pathsegdiff.core.region import Region
from napari_pathsegdiff.core.slide import Slide
from napari_pathsegdiff.engine.inference.predict import predict_region
from napari_pathsegdiff.engine.session.annotation import AnnotationError, AnnotationSession
from napari_pathsegdiff.engine.session.annotation_export import export_labels, export_work
from napari_pathsegdiff.engine.session.session_folder import session_head_identity
from napari_pathsegdiff.models.features import RGBFeatures

SIDE = 1200  # 3 x 3 store chunks of 512


def _image() -> np.ndarray:
    """Glass on top, stroma on the left, nuclei-rich tissue on the right (store ids 1, 2, 3)."""
    truth = np.full((SIDE, SIDE), 2, np.uint8)
    truth[:, SIDE // 2 :] = 3
    truth[:200] = 1
    rgb = np.zeros((SIDE, SIDE, 3), np.float32)
    for k, colour in COLOURS.items():
        rgb[truth == k] = colour
    rng = np.random.default_rng(0)
    return np.clip(rgb + rng.normal(0, 6, rgb.shape), 0, 255).astype(np.uint8)


def _paint(store):
    for k, (y, x) in {1: (50, 100), 2: (600, 100), 3: (600, 900)}.items():
        store.write_edits(y, x, np.full((6, 120), k, np.uint8))


@pytest.fixture
def session(tmp_path):
    slide = Slide.from_array(_image(), mpp=0.5)
    s = AnnotationSession.open(slide, extractor=RGBFeatures(tile_size=64, halo=8), classes=CLASSES,
                               folder=tmp_path / "session")
    _paint(s.store)
    drive(s.train_on_edits(steps=30), show=False)
    yield s
    s.close()


A = Region(0, 100, 100, 300, 300)  # chunk (0, 0)
B = Region(0, 700, 700, 300, 300)  # chunk (1, 1)


def _segmented_then_retrained(session):
    """A and B segmented by the first head, then a stroke and a second training."""
    drive(session.segment(A), show=False)
    drive(session.segment(B), show=False)
    first = session.head_identity
    session.store.write_edits(300, 200, np.full((4, 40), 3, np.uint8))  # a wrong class, painted in A
    drive(session.train_on_edits(steps=30, seed=1), show=False)
    assert session.head_identity not in (None, first)
    return first


def test_the_store_records_which_head_predicted_every_pixel(tmp_path):
    store = LabelStore.create(tmp_path / "labels.zarr", shape=(700, 600), mpp=0.5, downsample=(1.0, 1.0),
                              slide_identity="s")
    labels = np.full((100, 100), 2, np.uint8)
    labels[:10] = 0  # nothing predicted there
    store.write_prediction(0, 0, labels, head="aaa")
    store.write_prediction(600, 520, np.full((100, 80), 3, np.uint8), head="bbb")
    assert store.heads == ["aaa", "bbb"]
    assert store.prediction_heads() == {"aaa": 9000, "bbb": 8000}
    assert store.stale_windows("bbb") == [(0, 0, 512, 512)]
    assert store.stale_windows("aaa") == [(512, 512, 188, 88)]
    assert store.stale_windows("ccc") == [(0, 0, 512, 512), (512, 512, 188, 88)]
    store.write_prediction(0, 0, labels, head="bbb")  # predicted again by the newer head
    assert store.stale_windows("bbb") == [] and store.prediction_heads() == {"bbb": 17000}


def test_a_store_from_before_heads_were_recorded_counts_its_predictions_as_stale(tmp_path):
    path = tmp_path / "labels.zarr"
    store = LabelStore.create(path, shape=(300, 300), mpp=0.5, downsample=(1.0, 1.0), slide_identity="s")
    store.write_prediction(0, 0, np.full((50, 50), 2, np.uint8))
    zarr.open_group(str(path), mode="r+").__delitem__(HEAD_ARRAY)  # as an older version left it
    reopened = LabelStore.open(path)
    assert reopened.prediction_heads() == {None: 2500}
    assert reopened.stale_windows("any") == [(0, 0, 300, 300)]
    assert (reopened.read(0, 0, 50, 50) == 2).all()  # the predictions themselves are kept


def test_after_training_the_regions_segmented_before_are_stale_and_refreshed(session):
    first = _segmented_then_retrained(session)
    assert session.head_identity == session_head_identity(session.folder)
    predicted_before = session.store.read(0, 0, SIDE, SIDE, which="prediction") > 0
    edits_before = session.store.read(0, 0, SIDE, SIDE, which="edits")
    stale = session.stale_regions()
    assert [(r.y, r.x, r.height, r.width) for r in stale] == [(0, 0, 512, 512), (512, 512, 512, 512)]
    assert session.store.prediction_heads().keys() == {first}

    records = []
    work = session.refresh_stale(first=B, block=512)  # one region per chunk
    while True:
        try:
            records.append(next(work))
        except StopIteration as stop:
            count = stop.value
            break
    assert count == 2 and {r.stage for r in records} == {"refresh"}
    assert "region 1 of 2" in records[1].message and records[-1].done == records[-1].total == 2
    assert session.stale_regions() == []
    assert session.store.prediction_heads().keys() == {session.head_identity}
    # the same pixels are segmented as before, painted pixels are untouched
    np.testing.assert_array_equal(session.store.read(0, 0, SIDE, SIDE, which="prediction") > 0, predicted_before)
    np.testing.assert_array_equal(session.store.read(0, 0, SIDE, SIDE, which="edits"), edits_before)
    # A holds exactly what the new head predicts there
    direct = drive(predict_region(session.slide, A, head=session.head, extractor=session.extractor), show=False)
    np.testing.assert_array_equal(session.store.read(A.y, A.x, A.height, A.width, which="prediction"),
                                  session._head_to_store(session.head)[direct.labels])
    assert (session.store.read(301, 201, 2, 38) == 3).all()  # the painted stroke shows over it


def test_a_refresh_stopped_midway_keeps_every_region_whole(session):
    _segmented_then_retrained(session)
    work = session.refresh_stale(first=A, block=512)
    for record in work:
        if record.done == 1:  # the first region (nearest A) is written
            break
    work.close()
    assert [(r.y, r.x) for r in session.stale_regions()] == [(512, 512)]
    heads = session.store.prediction_heads()
    assert len(heads) == 2 and heads[session.head_identity] == A.height * A.width


def test_an_export_never_mixes_two_heads(session, tmp_path):
    _segmented_then_retrained(session)
    with pytest.raises(AnnotationError, match="180000 px were segmented by an earlier head .* must not mix"):
        export_labels(session, tmp_path / "mixed.ome.tif")
    drive(session.segment(B), show=False)  # B now by the new head, A still by the first
    with pytest.raises(AnnotationError, match="90000 px were segmented by an earlier head"):
        export_labels(session, tmp_path / "mixed.ome.tif")
    assert not (tmp_path / "mixed.ome.tif").exists()
    written = drive(export_work(session, tmp_path / "labels.ome.tif"), show=False)
    assert written.is_file() and session.stale_regions() == []  # A and B in one 2048-px block
    with pytest.raises(AnnotationError, match=r"name the file \*.ome.tif"):
        drive(export_work(session, tmp_path / "labels.png"), show=False)


def test_a_reopened_session_knows_its_head_and_what_is_stale(session, tmp_path):
    _segmented_then_retrained(session)
    identity, folder, slide = session.head_identity, session.folder, session.slide
    session.close()
    again = AnnotationSession.open(slide, folder=folder)
    try:
        assert again.head_identity == identity
        assert len(again.stale_regions()) == 2
        again.new_head()
        assert again.head_identity is None and again.stale_regions() == []
    finally:
        again.close()
