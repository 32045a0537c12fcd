"""QuPath GeoJSON in: classified areas read from a file and rasterised onto a label grid.

The counterpart of :mod:`~napari_pathsegdiff.core.geojson`. A file is read as QuPath exports
it: a ``FeatureCollection`` (or QuPath's older plain list of features, or one ``Feature``),
coordinates in level-0 pixels (x, y), each feature's class in
``properties.classification.name`` with its colour in ``color`` (``[r, g, b]``) or the older
``colorRGB`` (a packed integer). ``Polygon`` and ``MultiPolygon`` (holes, islands inside holes)
are the areas kept; features without a class, and points and lines, are skipped and counted.

Rasterising is shapely (geometry, scaling, clipping) plus :func:`skimage.draw.polygon`: a
pixel belongs to an area when its centre lies inside it, which is the rule
:func:`~napari_pathsegdiff.core.geojson.class_polygons` traces by, so an exported mask comes
back the same. Large areas are cut into tiles with :func:`shapely.clip_by_rect` first, so the
cost follows the area's own pixels and the vertices near each tile, and tiles lying wholly
inside an area are filled without a polygon test.

Examples
--------
>>> fc = {"type": "FeatureCollection", "features": [{"type": "Feature",
...     "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [8, 0], [8, 4], [0, 4], [0, 0]]]},
...     "properties": {"classification": {"name": "tumour", "color": [255, 0, 0]}}}]}
>>> read = parse_annotations(fc, source="example")
>>> [(a.name, a.color) for a in read.annotations]
[('tumour', '#ff0000')]
>>> blocks = list(rasterise(read.annotations, {"tumour": 2}, shape=(4, 8), downsample=(2.0, 2.0)))
>>> int(blocks[0].mask.sum() // 2), (blocks[0].y, blocks[0].x)
(8, (0, 0))
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon, box, shape
from skimage.draw import polygon as draw_polygon

from .region import xy_to_yx

__all__ = [
    "Annotation",
    "GeoJSONError",
    "LabelBlock",
    "ReadAnnotations",
    "parse_annotations",
    "rasterise",
    "read_annotations",
]

#: Areas more than twice this many pixels a side on the grid are rasterised in tiles of this side
#: (fastest of 512, 128, 64 and 32 on blobs 100-500 px across: only tiles on an edge run a fill).
TILE = 64
_AREAS = ("Polygon", "MultiPolygon")
_NOT_AREAS = ("Point", "MultiPoint", "LineString", "MultiLineString")


class GeoJSONError(ValueError):
    """A GeoJSON file that cannot be imported: the message names the file and what to do."""


@dataclass(frozen=True)
class Annotation:
    """One classified area.

    Attributes
    ----------
    name : str
        Class name (QuPath's ``classification.name``).
    color : str or None
        ``"#rrggbb"`` when the file gives one.
    geometry : Polygon or MultiPolygon
        The area in level-0 pixels, (x, y).
    """

    name: str
    color: str | None
    geometry: Polygon | MultiPolygon


@dataclass
class ReadAnnotations:
    """What :func:`read_annotations` found.

    Attributes
    ----------
    source : str
        The file (or what was parsed), for messages.
    annotations : list of Annotation
        The classified areas, in the file's order.
    features : int
        Features in the file.
    unclassified : int
        Areas without a class (skipped).
    not_areas : int
        Points and lines (skipped).
    empty : int
        Features with an empty or zero-area geometry (skipped).
    """

    source: str
    annotations: list[Annotation] = field(default_factory=list)
    features: int = 0
    unclassified: int = 0
    not_areas: int = 0
    empty: int = 0

    def class_colors(self) -> dict[str, str | None]:
        """Class names in the order they first appear, with the first colour given for each."""
        out: dict[str, str | None] = {}
        for a in self.annotations:
            if out.get(a.name) is None:
                out[a.name] = a.color
        return out

    def skipped_text(self) -> str:
        """``"2 without a class, 1 points or lines"``, or ``""`` when nothing was skipped."""
        parts = [(self.unclassified, "without a class"), (self.not_areas, "points or lines"),
                 (self.empty, "empty")]
        return ", ".join(f"{n} {what}" for n, what in parts if n)


@dataclass(frozen=True)
class LabelBlock:
    """Class ids painted by one area on a window of the grid (0 outside the area)."""

    y: int
    x: int
    mask: np.ndarray


# --- reading -----------------------------------------------------------------------------------
def read_annotations(path: str | Path) -> ReadAnnotations:
    """Read the classified areas of a QuPath GeoJSON file.

    Raises
    ------
    GeoJSONError
        The file is not JSON, not GeoJSON features, holds no feature, a feature's geometry
        is malformed, or no feature is a classified area; the message names the file.
    FileNotFoundError
        No such file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No GeoJSON file at {path}.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GeoJSONError(f"{path} is not a GeoJSON file (not readable as JSON: {exc}). "
                           "Export the annotations from QuPath as GeoJSON and pick that file.") from None
    return parse_annotations(data, source=str(path))


def parse_annotations(data, *, source: str) -> ReadAnnotations:
    """The classified areas of parsed GeoJSON ``data`` (see :func:`read_annotations`)."""
    features = _features(data, source)
    out = ReadAnnotations(source, features=len(features))
    for index, feature in enumerate(features):
        geometry = _geometry(feature, index, source)
        if geometry is None:
            out.empty += 1
            continue
        kind = geometry.geom_type
        if kind in _NOT_AREAS:
            out.not_areas += 1
            continue
        area = _areas(geometry)
        if area is None:  # a collection of points and lines
            out.not_areas += 1
            continue
        if area.is_empty or area.area == 0:
            out.empty += 1
            continue
        name, color = _classification(feature.get("properties"), index, source)
        if name is None:
            out.unclassified += 1
            continue
        out.annotations.append(Annotation(name, color, area))
    if not out.annotations:
        raise GeoJSONError(
            f"{source} holds no classified area to import ({len(features)} features: "
            f"{out.skipped_text() or 'none usable'}). Give the annotations a class in QuPath "
            "(Set class) before exporting."
        )
    return out


def _features(data, source: str) -> list:
    if isinstance(data, list):
        features = data
    elif isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features")
        if not isinstance(features, list):
            raise GeoJSONError(f"{source}: the FeatureCollection has no list of 'features'.")
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    else:
        kind = data.get("type") if isinstance(data, dict) else type(data).__name__
        raise GeoJSONError(
            f"{source} is not GeoJSON features (found {kind!r}, expected a FeatureCollection). "
            "Export the annotations from QuPath with File > Export objects as GeoJSON."
        )
    if not features:
        raise GeoJSONError(f"{source} holds no features (an empty FeatureCollection): there is "
                           "nothing to import. Export the slide's annotations again.")
    for index, feature in enumerate(features):
        if not isinstance(feature, dict) or feature.get("type") != "Feature":
            raise GeoJSONError(f"{source}: item {index} of 'features' is not a GeoJSON Feature.")
    return features


def _geometry(feature: dict, index: int, source: str):
    geometry = feature.get("geometry")
    if geometry is None:
        return None
    try:
        geom = shape(geometry)
    except Exception as exc:  # shapely raises several types for malformed coordinates
        raise GeoJSONError(f"{source}: feature {index} has a malformed geometry ({exc}).") from None
    if geom.is_empty:
        return None
    coords = shapely.get_coordinates(geom)
    if not np.isfinite(coords).all():
        raise GeoJSONError(f"{source}: feature {index} has coordinates that are not finite numbers.")
    return geom


def _areas(geom) -> Polygon | MultiPolygon | None:
    """The polygonal part of a geometry (made valid), or None when it has none."""
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    parts = [g for g in getattr(geom, "geoms", [geom]) if g.geom_type in _AREAS]
    if not parts:
        return None
    polys = [p for g in parts for p in getattr(g, "geoms", [g])]
    return polys[0] if len(polys) == 1 else MultiPolygon(polys)


def _classification(properties, index: int, source: str) -> tuple[str | None, str | None]:
    """(class name, "#rrggbb" or None) of a feature's properties; (None, None) when unclassified."""
    if not isinstance(properties, dict):
        return None, None
    c = properties.get("classification")
    if not isinstance(c, dict):
        return None, None
    name = c.get("name")
    if not isinstance(name, str) or not name.strip():
        return None, None
    return name.strip(), _color(c, index, source)


def _color(c: dict, index: int, source: str) -> str | None:
    rgb = c.get("color")
    if rgb is None and isinstance(c.get("colorRGB"), int):  # QuPath 0.2: packed (A)RGB
        v = c["colorRGB"] & 0xFFFFFF
        rgb = [(v >> 16) & 255, (v >> 8) & 255, v & 255]
    if rgb is None:
        return None
    if not (isinstance(rgb, list) and len(rgb) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in rgb)):
        raise GeoJSONError(f"{source}: feature {index} has the colour {rgb!r}; expected [r, g, b] of 0..255.")
    return "#{:02x}{:02x}{:02x}".format(*rgb)


# --- rasterising -------------------------------------------------------------------------------
@dataclass
class RasterStats:
    """Counts :func:`rasterise` fills in: areas ``clipped`` at the grid's edge, areas lying
    wholly ``outside`` it."""

    clipped: int = 0
    outside: int = 0


def rasterise(
    annotations,
    ids: Mapping[str, int],
    *,
    shape: tuple[int, int],
    downsample: tuple[float, float],
    stats: RasterStats | None = None,
) -> Iterator[LabelBlock]:
    """Blocks of class ids painted by each area on a grid of level-0 ``downsample``.

    A pixel ``(i, j)`` of the grid is painted when its centre, level-0 point
    ``((j + 0.5) dx, (i + 0.5) dy)`` in (x, y), lies inside the area. Blocks come in the
    annotations' order, 0 outside each area (and in its holes): whoever paints them decides
    overlaps (:class:`~napari_pathsegdiff.core.label_canvas.LabelCanvas` keeps the first).

    Parameters
    ----------
    annotations : iterable of Annotation
        Areas in level-0 pixels.
    ids : mapping of str to int
        Class id (1..255) of each class name.
    shape : (int, int)
        (height, width) of the grid.
    downsample : (float, float)
        (dy, dx) level-0 pixels per grid pixel.
    stats : RasterStats, optional
        Filled with the areas clipped at the grid's edge and those wholly outside it.
    """
    stats = stats if stats is not None else RasterStats()
    H, W = int(shape[0]), int(shape[1])
    dy, dx = float(downsample[0]), float(downsample[1])
    grid = box(0, 0, W, H)
    for a in annotations:
        class_id = int(ids[a.name])
        geom = shapely.affinity.scale(a.geometry, 1 / dx, 1 / dy, origin=(0, 0))
        if not geom.intersects(grid):
            stats.outside += 1
            continue
        if not geom.within(grid):
            stats.clipped += 1
        for poly in getattr(geom, "geoms", [geom]):
            yield from _polygon_blocks(poly, class_id, H, W)


def _polygon_blocks(poly: Polygon, class_id: int, H: int, W: int) -> Iterator[LabelBlock]:
    """Blocks of one polygon: one for a small one, tiles of :data:`TILE` for a large one."""
    y0, y1, x0, x1 = _centre_span(poly.bounds, H, W)
    if y0 >= y1 or x0 >= x1:
        return
    if max(y1 - y0, x1 - x0) <= 2 * TILE:
        mask = _fill(poly, y0, x0, y1 - y0, x1 - x0)
        if mask.any():
            yield LabelBlock(y0, x0, mask.astype(np.uint8) * np.uint8(class_id))
        return
    shapely.prepare(poly)
    for ty in range(y0, y1, TILE):
        for tx in range(x0, x1, TILE):
            h, w = min(TILE, y1 - ty), min(TILE, x1 - tx)
            tile = box(tx, ty, tx + w, ty + h)
            if poly.contains(tile):
                yield LabelBlock(ty, tx, np.full((h, w), class_id, np.uint8))
                continue
            # clipped one pixel beyond the tile: the edges near its pixel centres are the area's own
            part = shapely.clip_by_rect(poly, tx - 1, ty - 1, tx + w + 1, ty + h + 1)
            mask = np.zeros((h, w), bool)
            for p in getattr(part, "geoms", [part]):
                if p.geom_type == "Polygon" and not p.is_empty:
                    mask |= _fill(p, ty, tx, h, w)
            if mask.any():
                yield LabelBlock(ty, tx, mask.astype(np.uint8) * np.uint8(class_id))


def _centre_span(bounds, H: int, W: int) -> tuple[int, int, int, int]:
    """Rows ``[y0, y1)`` and columns ``[x0, x1)`` whose pixel centres may lie in ``bounds``."""
    minx, miny, maxx, maxy = bounds
    y0, x0 = max(0, math.ceil(miny - 0.5)), max(0, math.ceil(minx - 0.5))
    y1, x1 = min(H, math.floor(maxy - 0.5) + 1), min(W, math.floor(maxx - 0.5) + 1)
    return y0, y1, x0, x1


def _fill(poly: Polygon, y0: int, x0: int, h: int, w: int) -> np.ndarray:
    """Pixels of the window ``(y0, x0, h, w)`` whose centres lie in ``poly`` (holes excluded)."""
    mask = np.zeros((h, w), bool)
    for ring, value in [(poly.exterior, True)] + [(r, False) for r in poly.interiors]:
        yx = xy_to_yx(np.asarray(ring.coords)) - (y0 + 0.5, x0 + 0.5)  # centres on integers
        rr, cc = draw_polygon(yx[:, 0], yx[:, 1], shape=(h, w))
        mask[rr, cc] = value
    return mask
