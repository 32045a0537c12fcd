import numpy as np
import pytest

from napari_pathsegdiff.core.region import Region, downsamples_from_shapes, yx_to_xy


def test_to_level_round_trip_and_cover():
    ds = [(1.0, 1.0), (4.0, 4.0), (16.0, 16.0)]
    r = Region(level=1, y=10, x=20, height=100, width=50)
    r0 = r.to_level(0, ds)
    assert r0 == Region(0, 40, 80, 400, 200)
    assert r0.to_level(1, ds) == r
    # a region not aligned to the coarser grid grows to cover it
    assert Region(0, 3, 5, 10, 10).to_level(1, ds) == Region(1, 0, 1, 4, 3)


def test_clip_and_errors():
    assert Region(0, -5, -5, 20, 20).clip((10, 12)) == Region(0, 0, 0, 10, 12)
    with pytest.raises(ValueError, match="outside"):
        Region(0, 50, 50, 5, 5).clip((10, 10))
    with pytest.raises(ValueError, match="positive size"):
        Region(0, 0, 0, 0, 5)
    with pytest.raises(ValueError, match="level 3 does not exist"):
        Region(0, 0, 0, 5, 5).to_level(3, [(1.0, 1.0)])


def test_xy_edge():
    r = Region.from_xywh(x=7, y=3, width=11, height=5, level=2)
    assert (r.y, r.x, r.height, r.width, r.level) == (3, 7, 5, 11, 2)
    assert r.to_xywh() == (7, 3, 11, 5)
    np.testing.assert_array_equal(yx_to_xy(np.array([[1, 2], [3, 4]])), [[2, 1], [4, 3]])
    assert downsamples_from_shapes([(100, 200, 3), (50, 100, 3)]) == [(1.0, 1.0), (2.0, 2.0)]
