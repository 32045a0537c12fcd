import json

import numpy as np
import pytest
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
