"""npe2 writers: a Labels layer as OME-TIFF or OME-Zarr, at the layer's physical scale.

The µm/px written is, in this order: ``metadata['mpp']`` of the layer (the µm/px of the
layer's data pixels, which this plugin's layers carry), else the layer ``scale`` when its
``units`` are lengths (converted to µm). Otherwise the file gets no physical size.

Class names and colours for OME-Zarr come from ``metadata['classes']`` (a list of dicts or
objects with ``id``, ``name`` and ``color``), else colours from a direct label colormap.

The plugin's edit window shows predicted, unpainted pixels as ``metadata['predicted_offset']``
+ class id; they are written as their class id.
"""

from __future__ import annotations

from typing import Any

from .core.ome_writer import write_labels_ome_tiff as _write_tiff
from .core.ome_writer import write_labels_ome_zarr as _write_zarr


def write_labels_ome_tiff(path: str, data: Any, meta: dict) -> list[str]:
    """Write a Labels layer to a tiled, compressed, pyramidal OME-TIFF; returns ``[path]``."""
    _write_tiff(path, _level0(data, meta), mpp=layer_mpp(meta), name=meta.get("name") or "labels")
    return [path]


def write_labels_ome_zarr(path: str, data: Any, meta: dict) -> list[str]:
    """Write a Labels layer to a multiscale OME-Zarr (NGFF 0.4); returns ``[path]``."""
    names, colors = _classes(meta)
    _write_zarr(
        path,
        _level0(data, meta),
        mpp=layer_mpp(meta),
        name=meta.get("name") or "labels",
        class_names=names,
        class_colors=colors,
    )
    return [path]


def layer_mpp(meta: dict) -> float | None:
    """µm per data pixel of a layer, from its metadata or from a scale in length units."""
    mpp = (meta.get("metadata") or {}).get("mpp")
    if mpp:
        return float(mpp)
    scale, units = meta.get("scale"), meta.get("units")
    if scale is None or units is None:
        return None
    try:
        per_axis = [float(s) * _to_um(u) for s, u in zip(list(scale)[-2:], list(units)[-2:])]
    except (ValueError, TypeError, AttributeError):
        return None
    return sum(per_axis) / len(per_axis) if per_axis else None


def _to_um(unit) -> float:
    """Micrometres per ``unit`` (a pint unit); raises for non-length units such as pixel."""
    import pint

    if isinstance(unit, str):
        unit = pint.get_application_registry().Unit(unit)
    try:
        return float((1 * unit).to("micrometer").magnitude)
    except pint.DimensionalityError as exc:
        raise ValueError(f"{unit} is not a length") from exc


def _level0(data: Any, meta: dict) -> Any:
    """Full-resolution class ids of a (possibly multiscale) Labels layer."""
    data = data[0] if isinstance(data, (list, tuple)) else data
    if (meta.get("metadata") or {}).get("predicted_offset"):
        from .engine.session.label_window import class_ids

        return class_ids(data)
    return data


def _classes(meta: dict) -> tuple[dict[int, str] | None, dict[int, Any] | None]:
    """Class names and colours by label value, from ``metadata['classes']`` or the colormap."""
    names: dict[int, str] = {}
    colors: dict[int, Any] = {}
    for item in (meta.get("metadata") or {}).get("classes") or []:
        value = _field(item, "id")
        if value is None:
            continue
        if _field(item, "name"):
            names[int(value)] = str(_field(item, "name"))
        if _field(item, "color") is not None:
            colors[int(value)] = _field(item, "color")
    if not colors:
        color_dict = getattr(meta.get("colormap"), "color_dict", None) or {}
        colors = {
            int(k): tuple(float(c) for c in v) for k, v in color_dict.items() if k is not None and int(k) > 0
        }
    return names or None, colors or None


def _field(item: Any, key: str) -> Any:
    return item.get(key) if isinstance(item, dict) else getattr(item, key, None)
