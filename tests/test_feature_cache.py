"""The feature cache: identical features back, hits counted, least recently used out by bytes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_pathsegdiff.core.feature_cache import FeatureCache, feature_key
from napari_pathsegdiff.core.progress import drive
from napari_pathsegdiff.core.region import Region
from napari_pathsegdiff.engine.inference.predict import predict_region
from napari_pathsegdiff.models.features import RGBFeatures
from napari_pathsegdiff.models.heads import new_head


def _value(n, fill=1.0):
    return [np.full(n, fill, np.float16), np.full(n // 2, fill, np.float16)]


def test_get_returns_identical_read_only_features_and_counts():
    cache = FeatureCache(max_bytes=10_000)
    value = _value(100, 2.5)
    assert cache.get("k") is None
    assert cache.put("k", value)
    got = cache.get("k")
    assert cache.hits == 1 and cache.misses == 1
    assert len(got) == 2
    for a, b in zip(got, value):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == np.float16 and not a.flags.writeable
    assert cache.nbytes == 300 and len(cache) == 1


def test_least_recently_used_is_evicted_by_bytes():
    cache = FeatureCache(max_bytes=900)  # three values of 300 bytes
    for k in "abc":
        cache.put(k, _value(100))
    cache.get("a")  # a is now the most recently used
    cache.put("d", _value(100))
    assert "b" not in cache and all(k in cache for k in "acd")
    assert cache.evictions == 1 and cache.nbytes == 900
    cache.put("e", _value(200))  # 600 bytes: two entries go
    assert set(k for k in "acde" if k in cache) == {"d", "e"}
    assert cache.nbytes == 900 and cache.evictions == 3


def test_value_larger_than_the_budget_is_not_stored():
    cache = FeatureCache(max_bytes=100)
    cache.put("small", _value(20))
    assert not cache.put("big", _value(100))
    assert "big" not in cache and "small" in cache and cache.nbytes == 60
    with pytest.raises(ValueError, match="budget"):
        FeatureCache(max_bytes=-1)


def test_keys_separate_extractors_scales_and_tiles():
    base = dict(source="s", level=0, scale=1.0, tile_size=64, halo=8, row=1, col=2, extractor="rgb:v1")
    key = feature_key(**base)
    assert key == feature_key(**base)
    for change in ({"extractor": "classic:v1"}, {"scale": 1.5}, {"row": 2}, {"level": 1}, {"halo": 4}):
        assert feature_key(**{**base, **change}) != key


class CountingRGB(RGBFeatures):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.tiles_seen = 0

    def extract(self, tiles):
        self.tiles_seen += len(tiles)
        return super().extract(tiles)


def test_prediction_from_the_cache_runs_no_extractor_and_is_identical():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    ex = CountingRGB(tile_size=32, halo=4)
    torch.manual_seed(0)
    head = new_head(ex, [0, 1]).eval()
    cache = FeatureCache()
    first = drive(predict_region(image, None, head=head, extractor=ex, cache=cache), show=False)
    assert ex.tiles_seen == 9 and first.cache == {"hits": 0, "misses": 9}
    region = Region(0, 10, 20, 40, 50)  # tiles rows 0-1, cols 0-2: all seen
    second = drive(predict_region(image, region, head=head, extractor=ex, cache=cache), show=False)
    assert ex.tiles_seen == 9 and second.cache == {"hits": 6, "misses": 0}
    np.testing.assert_array_equal(second.labels, first.labels[region.slices])
    # another image with the same shape is another source: no false hit
    other = image.copy()
    other[0, 0, 0] ^= 1
    drive(predict_region(other, None, head=head, extractor=ex, cache=cache), show=False)
    assert ex.tiles_seen == 18
