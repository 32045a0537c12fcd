import numpy as np
import pytest

from napari_pathsegdiff.core.label_store import ClassInfo, LabelStore, LabelStoreError

CLASSES = [ClassInfo(1, "background", "#ffffff"), ClassInfo(2, "tumour", "#ff0000")]


def make(tmp_path, **kw):
    args = dict(shape=(1000, 1200), mpp=0.5, downsample=(1.0, 1.0), slide_identity="slide-a", classes=CLASSES, chunk=256)
    args.update(kw)
    return LabelStore.create(tmp_path / "labels.zarr", **args)


def test_prediction_never_hides_edits(tmp_path):
    store = make(tmp_path)
    store.write_edits(10, 20, np.full((5, 5), 2))
    store.write_prediction(0, 0, np.ones((100, 100), np.uint8))
    merged = store.read(0, 0, 100, 100)
    assert (merged[10:15, 20:25] == 2).all()
    assert (merged == 1).sum() == 100 * 100 - 25
    assert (store.read(0, 0, 100, 100, which="prediction") == 1).all()
    np.testing.assert_array_equal(store.merged()[:100, :100].compute(), merged)


def test_edits_persist_and_reopen(tmp_path):
    store = make(tmp_path)
    store.write_edit_points(np.array([[3, 4], [700, 900], [5000, 5]]), np.array([2, 1, 2]))
    del store
    again = LabelStore.open(tmp_path / "labels.zarr")
    assert again.read(3, 4, 1, 1, which="edits")[0, 0] == 2
    assert again.read(700, 900, 1, 1, which="edits")[0, 0] == 1
    assert again.painted_pixel_count() == 2  # the point outside the grid is ignored
    assert again.edited_windows() == [(0, 0, 256, 256), (512, 768, 256, 256)]
    assert [c.name for c in again.classes] == ["background", "tumour"]
    assert again.mpp == 0.5


def test_erasing_removes_the_chunk_from_the_painted_windows(tmp_path):
    store = make(tmp_path)
    store.write_edits(300, 300, np.full((4, 4), 2))
    assert store.edited_windows() == [(256, 256, 256, 256)]
    store.write_edits(300, 300, np.zeros((4, 4)), where=np.ones((4, 4), bool))
    assert store.edited_windows() == []


def test_where_mask_keeps_other_edits(tmp_path):
    store = make(tmp_path)
    store.write_edits(0, 0, np.full((2, 2), 2))
    where = np.array([[True, False], [False, False]])
    store.write_edits(0, 0, np.ones((2, 2)), where=where)
    np.testing.assert_array_equal(store.read(0, 0, 2, 2, which="edits"), [[1, 2], [2, 2]])


def test_refuses_a_store_of_another_slide_and_leaves_it(tmp_path):
    store = make(tmp_path)
    store.write_edits(0, 0, np.full((2, 2), 2))
    with pytest.raises(LabelStoreError, match="another slide"):
        make(tmp_path, slide_identity="slide-b")
    with pytest.raises(LabelStoreError, match="another slide"):
        make(tmp_path, shape=(10, 10))
    assert make(tmp_path).painted_pixel_count() == 4


def test_bad_blocks_and_folders(tmp_path):
    store = make(tmp_path)
    with pytest.raises(LabelStoreError, match="does not fit"):
        store.write_prediction(990, 0, np.ones((20, 20)))
    with pytest.raises(LabelStoreError, match="0..255"):
        store.write_edits(0, 0, np.full((2, 2), 300))
    with pytest.raises(LabelStoreError, match="unique"):
        store.set_classes([ClassInfo(1, "a", "#000000"), ClassInfo(1, "b", "#111111")])
    with pytest.raises(LabelStoreError, match="No label store"):
        LabelStore.open(tmp_path / "missing.zarr")
    (tmp_path / "junk").mkdir()
    with pytest.raises(LabelStoreError, match="junk"):
        LabelStore.open(tmp_path / "junk")
