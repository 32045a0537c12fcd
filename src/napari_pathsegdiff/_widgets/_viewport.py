"""What part of a slide the canvas shows, and how to show a given part (pure viewport maths).

The visible region is computed from the camera (centre and zoom) and the canvas size, mapped
to the slide layer's level-0 pixels with the layer's own world-to-data transform. The layer's
``corner_pixels`` / ``data_level`` are not used for this: napari expands ``corner_pixels`` to
the data's chunk boundaries and keeps the larger box when zooming in, so they describe what
was loaded, not what is visible, and would make "Segment view" segment far more than the user
sees.
"""

from __future__ import annotations

import math

import numpy as np

from ..core.region import Region


def camera(viewer):
    """The viewer's camera (``viewer.scene.camera`` since napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def visible_region(viewer, layer) -> Region | None:
    """The level-0 region of ``layer`` (a multiscale slide layer) visible in the canvas.

    Returns None when the canvas shows none of the slide.
    """
    h, w = (float(s) for s in viewer.canvas.size)
    cam = camera(viewer)
    zoom = float(cam.zoom)
    center = np.asarray(cam.center, dtype=float)[-2:]
    half = np.array([h, w]) / (2.0 * zoom)
    corners = [center - half, center + half, [center[0] - half[0], center[1] + half[1]],
               [center[0] + half[0], center[1] - half[1]]]
    data = np.array([np.asarray(layer.world_to_data(c), dtype=float)[-2:] for c in corners])
    shape = layer.data[0].shape[:2] if layer.multiscale else layer.data.shape[:2]
    y0, x0 = (max(0, math.floor(v)) for v in data.min(axis=0))
    y1 = min(int(shape[0]), math.ceil(data[:, 0].max()))
    x1 = min(int(shape[1]), math.ceil(data[:, 1].max()))
    if y1 <= y0 or x1 <= x0:
        return None
    return Region(0, y0, x0, y1 - y0, x1 - x0)


def show_region(viewer, layer, region: Region, downsamples, *, fill: float = 0.9) -> None:
    """Centre the camera on ``region`` (any level of ``layer``'s slide) and zoom so that it
    fills ``fill`` of the canvas."""
    r0 = region.to_level(0, downsamples)
    corners_world = np.array([layer.data_to_world([r0.y, r0.x]), layer.data_to_world([r0.y1, r0.x1])],
                             dtype=float)[:, -2:]
    center = corners_world.mean(axis=0)
    size = np.abs(corners_world[1] - corners_world[0])
    h, w = (float(s) for s in viewer.canvas.size)
    cam = camera(viewer)
    cam.center = tuple(center)
    cam.zoom = fill * min(h / max(size[0], 1e-9), w / max(size[1], 1e-9))


def view_of(viewer, layer) -> tuple[tuple[float, float], float]:
    """Where the camera looks on ``layer``'s slide: the centre in level-0 pixels (y, x) and
    the zoom in screen pixels per level-0 pixel (both kept whatever the layer's scale)."""
    cam = camera(viewer)
    center = np.asarray(layer.world_to_data(np.asarray(cam.center, dtype=float)[-2:]), dtype=float)[-2:]
    return (float(center[0]), float(center[1])), float(cam.zoom) * _world_per_pixel(layer)


def show_view(viewer, layer, center: tuple[float, float], zoom: float) -> None:
    """Put the camera back on a view given by :func:`view_of`."""
    cam = camera(viewer)
    cam.center = tuple(np.asarray(layer.data_to_world(list(center)), dtype=float)[-2:])
    cam.zoom = zoom / _world_per_pixel(layer)


def _world_per_pixel(layer) -> float:
    """World units per level-0 pixel of ``layer`` (along x)."""
    return abs(float(layer.scale[-1])) or 1.0
