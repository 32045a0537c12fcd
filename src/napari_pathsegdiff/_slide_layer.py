"""The napari layer data of a slide, shared by the reader and the sample data.

Kept apart from ``_reader`` because the napari contributions are independent layers that may
not import each other. Pure Python: it builds plain tuples and dicts, no napari import.
"""

from __future__ import annotations

from pathlib import Path

from .core.slide import Slide

MICROMETER = "micrometer"


def slide_layer_data(slide: Slide, *, name: str | None = None) -> list[tuple]:
    """One multiscale RGB Image layer for ``slide``, as napari layer data.

    The layer ``scale`` is in µm (and ``units`` micrometer) when the slide's µm/px is known;
    otherwise it is 1 pixel and ``metadata['mpp_known']`` is False. ``metadata['mpp']`` is the
    µm/px of the layer's level-0 pixels, the key the writers and widgets read.
    """
    mpp_known = slide.mpp is not None
    scale = (slide.mpp, slide.mpp) if mpp_known else (1.0, 1.0)
    metadata = {
        "mpp": slide.mpp,
        "mpp_known": mpp_known,
        "slide_path": str(slide.path) if slide.path is not None else None,
        "slide_identity": slide.identity,
        "downsamples": [tuple(d) for d in slide.downsamples],
        "level_shapes": [tuple(int(n) for n in level.shape[:2]) for level in slide.levels],
        "objective_power": slide.objective_power,
        "slide_metadata": dict(slide.metadata),
    }
    if not mpp_known:
        metadata["note"] = "µm/px unknown: the layer scale is in pixels"
    meta = {
        "name": name or _display_name(slide),
        "multiscale": True,
        "rgb": True,
        "scale": scale,
        "contrast_limits": [0, 255],
        "metadata": metadata,
    }
    if mpp_known:
        meta["units"] = (MICROMETER, MICROMETER)
    return [(list(slide.levels), meta, "image")]


def _display_name(slide: Slide) -> str:
    if slide.path is None:
        return "slide"
    name = Path(slide.path).name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem
