"""Tile features on disk: kept across sessions, within a budget, never trusted when damaged or
foreign, never unpickled; a reopened slide segments without computing features."""

from __future__ import annotations

import io
import os
import time

import numpy as np
import pytest
from _annotation_scene import CLASSES, paint_strokes, write_scene

from napari_pathsegdiff.core.disk_feature_cache import DiskFeatureCache
from napari_pathsegdiff.core.feature_cache import FeatureCache, feature_key
from napari_pathsegdiff.core.progress import drive
from napari_pathsegdiff.core.region import Region
from napari_pathsegdiff.core.slide import open_slide
from napari_pathsegdiff.engine.session.annotation import AnnotationSession
from napari_pathsegdiff.engine.session.session_folder import FEATURES
from napari_pathsegdiff.models.features import RGBFeatures


def _key(col=0, extractor="rgb:v1", source="slide-a"):
    return feature_key(source=source, level=0, scale=1.0, tile_size=64, halo=8, row=0, col=col, extractor=extractor)


def _maps(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(3, 80, 80)).astype(np.float16), rng.normal(size=(2, 20, 20)).astype(np.float16)]


def test_features_come_back_from_a_new_cache_on_the_same_folder(tmp_path):
    cache = DiskFeatureCache(tmp_path / "f")
    assert cache.put(_key(), _maps())
    again = DiskFeatureCache(tmp_path / "f")  # as after reopening the slide
    got = again.get(_key())
    assert [m.shape for m in got] == [(3, 80, 80), (2, 20, 20)] and all(m.dtype == np.float16 for m in got)
    for a, b in zip(got, _maps()):
        np.testing.assert_array_equal(a, b)
    assert not got[0].flags.writeable
    # another tile, slide or extractor is another key
    assert again.get(_key(col=1)) is None and again.get(_key(source="slide-b")) is None
    assert again.get(_key(extractor="rgb:v2")) is None
    assert again.stats()["hits"] == 1 and again.stats()["misses"] == 3 and again.stats()["files"] == 1


def test_a_damaged_or_foreign_file_is_ignored_deleted_and_written_again(tmp_path):
    cache = DiskFeatureCache(tmp_path)
    cache.put(_key(0), _maps(0))
    cache.put(_key(1), _maps(1))
    path0, path1 = cache._path(_key(0)), cache._path(_key(1))
    path1.write_bytes(path0.read_bytes())  # the file of another tile under this tile's name
    assert cache.get(_key(1)) is None and not path1.exists()
    path0.write_bytes(path0.read_bytes()[:1000])  # truncated
    assert cache.get(_key(0)) is None and not path0.exists()
    assert cache.rejected == 2
    assert cache.put(_key(0), _maps(0))  # computed again, written again
    np.testing.assert_array_equal(cache.get(_key(0))[1], _maps(0)[1])


def test_a_file_that_needs_unpickling_is_never_unpickled(tmp_path):
    cache = DiskFeatureCache(tmp_path)

    class Boom:
        def __reduce__(self):
            return (os.mkdir, (str(tmp_path / "unpickled"),))

    buffer = io.BytesIO()
    np.savez(buffer, key=np.array("x", dtype=object), map_0=np.array([Boom()], dtype=object))
    path = cache._path(_key())
    path.write_bytes(buffer.getvalue())
    assert cache.get(_key()) is None and not path.exists()
    assert not (tmp_path / "unpickled").exists()
    # float32 maps (not what a feature extractor gives) are refused too
    buffer = io.BytesIO()
    from napari_pathsegdiff.core.disk_feature_cache import _key_text

    np.savez(buffer, key=np.array(_key_text(_key())), map_0=np.zeros((1, 2, 2), np.float32))
    path.write_bytes(buffer.getvalue())
    assert cache.get(_key()) is None and cache.rejected == 2


def test_the_least_recently_used_files_go_beyond_the_budget(tmp_path):
    probe = DiskFeatureCache(tmp_path / "probe")
    probe.put(_key(), _maps())
    size = os.path.getsize(probe._path(_key()))
    cache = DiskFeatureCache(tmp_path / "f", max_bytes=int(3.5 * size))
    for col in range(3):
        cache.put(_key(col), _maps())
        time.sleep(0.02)
    assert cache.get(_key(0)) is not None  # used again: now the most recent
    time.sleep(0.02)
    cache.put(_key(3), _maps())
    assert cache.get(_key(1)) is None  # the least recently used went
    assert all(cache.get(_key(c)) is not None for c in (0, 2, 3))
    assert cache.evictions == 1 and cache.nbytes <= cache.max_bytes and len(cache) == 3
    assert not DiskFeatureCache(tmp_path / "g", max_bytes=size - 1).put(_key(), _maps())  # larger than all
    (tmp_path / "f" / ".x.npz.tmp-12345678").write_bytes(b"half a write")
    assert len(DiskFeatureCache(tmp_path / "f")) == 3 and not (tmp_path / "f" / ".x.npz.tmp-12345678").exists()
    with pytest.raises(ValueError, match="budget must be >= 0 bytes"):
        DiskFeatureCache(tmp_path, max_bytes=-1)


def test_the_memory_cache_reads_the_disk_tier_on_a_miss(tmp_path):
    first = FeatureCache(disk=DiskFeatureCache(tmp_path))
    first.put(_key(), _maps())
    second = FeatureCache(disk=DiskFeatureCache(tmp_path))
    assert second.get(_key()) is not None and second.get(_key()) is not None
    assert second.stats()["hits"] == 2 and second.stats()["disk_hits"] == 1  # then from memory
    assert second.get(_key(col=5)) is None and second.misses == 1


def test_a_reopened_slide_segments_without_computing_features(tmp_path):
    scene = write_scene(tmp_path / "scene.tif")
    region = Region(1, 40, 60, 150, 200)
    with open_slide(scene) as slide:
        session = AnnotationSession.open(slide, extractor=RGBFeatures(tile_size=64, halo=8), classes=CLASSES)
        paint_strokes(session.store)
        drive(session.train_on_edits(steps=20), show=False)
        cold = drive(session.segment(region), show=False)
        folder = session.folder
        session.close()
    assert cold.cache["misses"] > 0 and any((folder / FEATURES).iterdir())
    with open_slide(scene) as slide:  # a new process would see the same: nothing in memory
        again = AnnotationSession.open(slide, folder=folder)
        warm = drive(again.segment(region), show=False)
        again.close()
    assert warm.cache == {"hits": cold.cache["hits"] + cold.cache["misses"], "misses": 0}
    np.testing.assert_array_equal(warm.labels, cold.labels)
    with open_slide(scene) as slide:
        off = AnnotationSession.open(slide, folder=tmp_path / "other", extractor=RGBFeatures(tile_size=64, halo=8),
                                     classes=CLASSES, feature_disk_bytes=0)
        assert off.cache.disk is None and not (tmp_path / "other" / FEATURES).exists()
        off.close()
