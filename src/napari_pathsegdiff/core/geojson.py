"""Class masks as GeoJSON polygons that QuPath (and other tools) import.

Coordinates are level-0 pixels of the slide, in (x, y) order, as QuPath expects. Each feature
is one connected area of one class (a ``Polygon`` with its holes) with QuPath's
``classification`` property (name and RGB colour).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import shapely
from shapely.geometry import Polygon, mapping
from skimage.measure import find_contours

from .atomic import write_text_atomic
from .region import yx_to_xy


def hex_to_rgb(color: str) -> list[int]:
    """``"#rrggbb"`` → ``[r, g, b]``."""
    c = color.lstrip("#")
    if len(c) != 6:
        raise ValueError(f"Expected a colour like '#ff8800', got {color!r}.")
    return [int(c[i : i + 2], 16) for i in (0, 2, 4)]


def class_polygons(
    mask: np.ndarray,
    *,
    min_area: float = 4.0,
    simplify: float = 0.5,
) -> list[Polygon]:
    """Polygons (with holes) of the ``True`` pixels of a 2D boolean mask.

    Vertices are in pixel coordinates (x, y) of the mask, pixel centres at ``i + 0.5``.

    Parameters
    ----------
    mask : ndarray of bool, shape (H, W)
        Pixels of one class.
    min_area : float
        Areas smaller than this many pixels are dropped.
    simplify : float
        Douglas-Peucker tolerance in pixels (0 keeps every vertex).
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"Expected a 2D mask, got shape {mask.shape}.")
    if not mask.any():
        return []
    padded = np.pad(mask, 1).astype(np.float32)
    rings = find_contours(padded, 0.5, fully_connected="high", positive_orientation="high")
    outers: list[Polygon] = []
    holes: list[Polygon] = []
    for ring in rings:
        if len(ring) < 4:
            continue
        xy = yx_to_xy(ring - 1.0) + 0.5  # undo the padding, pixel centres at i + 0.5
        poly = Polygon(xy)
        if poly.area == 0:
            continue
        # With positive_orientation="high", rings around foreground wind one way in (x, y)
        # and rings around holes the other way.
        (holes if shapely.is_ccw(poly.exterior) else outers).append(poly)
    holes_of = _assign_holes(outers, holes)
    out = []
    for outer, its_holes in zip(outers, holes_of):
        poly = Polygon(outer.exterior.coords, [h.exterior.coords for h in its_holes])
        if simplify > 0:
            poly = poly.simplify(simplify, preserve_topology=True)
        if not poly.is_valid:
            poly = shapely.make_valid(poly)
        if poly.area >= min_area:
            out.append(poly)
    return out


def _assign_holes(outers: list[Polygon], holes: list[Polygon]) -> list[list[Polygon]]:
    """The holes of each outer ring: a hole belongs to the smallest outer ring containing it.

    Containment is tested with the hole's whole ring, not one of its points: an island inside
    a hole lies inside the hole's ring, so a point of the hole's area can fall in the island
    and pick the island as parent. Rings traced from one mask never cross, so the smallest
    outer ring around a hole's ring is the area the hole is cut from.
    """
    holes_of: list[list[Polygon]] = [[] for _ in outers]
    if not outers or not holes:
        return holes_of
    hole_index, outer_index = shapely.STRtree(outers).query(holes, predicate="within")
    parent: dict[int, int] = {}
    for h, o in zip(hole_index.tolist(), outer_index.tolist()):
        if h not in parent or outers[o].area < outers[parent[h]].area:
            parent[h] = o
    for h, o in sorted(parent.items()):
        holes_of[o].append(holes[h])
    return holes_of


def labels_to_geojson(
    labels: np.ndarray,
    classes: Mapping[int, tuple[str, str]],
    *,
    downsample: Sequence[float] = (1.0, 1.0),
    offset_yx: Sequence[float] = (0.0, 0.0),
    min_area: float = 4.0,
    simplify: float = 0.5,
) -> dict:
    """A GeoJSON ``FeatureCollection`` of the class areas of a label image.

    Parameters
    ----------
    labels : ndarray of int, shape (H, W)
        Class ids; ids absent from ``classes`` (e.g. 0, "not segmented") are skipped.
    classes : mapping of int to (name, "#rrggbb")
        Class names and colours by id.
    downsample : (float, float)
        (dy, dx) level-0 pixels per pixel of ``labels``.
    offset_yx : (float, float)
        Level-0 (y, x) of the top-left corner of ``labels``.
    min_area, simplify : float
        In pixels of ``labels``; see :func:`class_polygons`.

    Examples
    --------
    >>> lab = np.zeros((8, 8), np.uint8); lab[2:6, 2:6] = 1
    >>> fc = labels_to_geojson(lab, {1: ("tumour", "#ff0000")})
    >>> fc["features"][0]["properties"]["classification"]["name"]
    'tumour'
    """
    labels = np.asarray(labels)
    dy, dx = float(downsample[0]), float(downsample[1])
    oy, ox = float(offset_yx[0]), float(offset_yx[1])
    features = []
    for class_id, (name, color) in classes.items():
        for poly in class_polygons(labels == class_id, min_area=min_area, simplify=simplify):
            poly = shapely.affinity.affine_transform(poly, [dx, 0, 0, dy, ox, oy])
            features.append(
                {
                    "type": "Feature",
                    "geometry": mapping(poly),
                    "properties": {
                        "objectType": "annotation",
                        "classification": {"name": name, "color": hex_to_rgb(color)},
                        "class_id": int(class_id),
                    },
                }
            )
    return {"type": "FeatureCollection", "features": features}


def write_geojson(path: str | Path, collection: dict) -> Path:
    """Write a FeatureCollection to ``path`` (atomically: a crash leaves the old file)."""
    return write_text_atomic(path, json.dumps(collection))
