import json

import numpy as np
import pytest
import shapely
from shapely.geometry import shape

from napari_pathsegdiff.core.geojson import class_polygons, hex_to_rgb, labels_to_geojson, write_geojson


def test_square_with_a_hole_and_a_second_island():
    mask = np.zeros((40, 50), bool)
    mask[5:25, 10:30] = True  # 20 x 20 square
    mask[10:15, 15:20] = False  # 5 x 5 hole
    mask[30:36, 40:46] = True  # 6 x 6 island
    polys = sorted(class_polygons(mask, simplify=0), key=lambda p: -p.area)
    assert len(polys) == 2
    big, small = polys
    assert len(big.interiors) == 1 and len(small.interiors) == 0
    # boundaries run through pixel-edge midpoints: areas within a pixel-corner of the truth
    assert abs(big.area - (400 - 25)) < 4
    assert abs(small.area - 36) < 2
    minx, miny, maxx, maxy = big.bounds
    assert (minx, miny, maxx, maxy) == (10.0, 5.0, 30.0, 25.0)
    assert big.contains(shape({"type": "Point", "coordinates": (12.0, 7.0)}))
    assert not big.contains(shape({"type": "Point", "coordinates": (17.5, 12.5)}))


def test_feature_collection_in_level0_xy(tmp_path):
    lab = np.zeros((20, 30), np.uint8)
    lab[2:8, 20:28] = 2
    lab[10:18, 1:5] = 1
    fc = labels_to_geojson(
        lab, {1: ("stroma", "#00ff00"), 2: ("tumour", "#ff0000")}, downsample=(4.0, 4.0), offset_yx=(100, 1000), simplify=0
    )
    by_name = {f["properties"]["classification"]["name"]: f for f in fc["features"]}
    assert set(by_name) == {"stroma", "tumour"}
    assert by_name["tumour"]["properties"]["classification"]["color"] == [255, 0, 0]
    # tumour occupies x 20..28, y 2..8 of the label grid -> level-0 x 1080..1112, y 108..132
    assert shape(by_name["tumour"]["geometry"]).bounds == (1080.0, 108.0, 1112.0, 132.0)
    out = write_geojson(tmp_path / "mask.geojson", fc)
    assert json.loads(out.read_text())["type"] == "FeatureCollection"
    assert not (tmp_path / "mask.geojson.partial").exists()


def test_empty_and_bad_input():
    assert labels_to_geojson(np.zeros((5, 5), np.uint8), {1: ("a", "#000000")})["features"] == []
    with pytest.raises(ValueError, match="2D mask"):
        class_polygons(np.zeros((2, 2, 2), bool))
    with pytest.raises(ValueError, match="colour"):
        hex_to_rgb("red")


def _rasterise(polygons, shape) -> np.ndarray:
    """Pixels whose centre (x + 0.5, y + 0.5) lies in any of ``polygons``."""
    ys, xs = np.mgrid[: shape[0], : shape[1]] + 0.5
    inside = np.zeros(shape, bool)
    for poly in polygons:
        inside |= shapely.contains_xy(poly, xs, ys)
    return inside


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_island_inside_a_hole_does_not_take_the_hole():
    m = np.zeros((40, 40), bool)
    m[2:38, 2:38] = 1
    m[8:32, 8:32] = 0
    m[14:26, 14:26] = 1
    polys = sorted(class_polygons(m, simplify=0), key=lambda p: -p.area)
    assert len(polys) == 2
    ring, island = polys
    assert len(ring.interiors) == 1 and len(island.interiors) == 0
    assert not ring.contains(shapely.Point(20.0, 20.0))  # the island's centre is not the ring's
    assert island.contains(shapely.Point(20.0, 20.0))
    assert not ring.intersects(island)
    assert _iou(_rasterise(polys, m.shape), m) == 1.0


@pytest.mark.parametrize("simplify", [0.0, 0.5])
def test_nested_rings_match_the_mask(simplify):
    # ring, hole, island with its own hole and an island in that, plus a second ring beside
    m = np.zeros((90, 120), bool)
    m[2:88, 2:88] = 1
    m[8:82, 8:82] = 0
    m[14:76, 14:76] = 1
    m[22:68, 22:68] = 0
    m[30:60, 30:60] = 1
    m[40:50, 40:50] = 0
    m[10:40, 95:115] = 1
    m[18:30, 100:110] = 0
    polys = class_polygons(m, simplify=simplify)
    assert sorted(len(p.interiors) for p in polys) == [1, 1, 1, 1]
    assert _iou(_rasterise(polys, m.shape), m) >= 0.99
    total = sum(p.area for p in polys)
    assert shapely.union_all(polys).area == pytest.approx(total)  # no overlapping polygons


def test_label_image_round_trip_per_class():
    lab = np.zeros((60, 60), np.uint8)
    lab[:] = 1                      # glass
    lab[5:55, 5:55] = 2             # tissue ring
    lab[15:45, 15:45] = 1           # glass hole
    lab[22:38, 22:38] = 2           # tissue island
    lab[27:33, 27:33] = 3           # gland lumen in the island
    fc = labels_to_geojson(lab, {1: ("glass", "#ffffff"), 2: ("tissue", "#ff0000"),
                                 3: ("lumen", "#0000ff")}, simplify=0)
    for cid in (1, 2, 3):
        polys = [shape(f["geometry"]) for f in fc["features"] if f["properties"]["class_id"] == cid]
        assert _iou(_rasterise(polys, lab.shape), lab == cid) >= 0.99
