"""npe2 sample data: the CC0 slide CMU-1-Small-Region.svs shipped with the package."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from ._slide_layer import slide_layer_data
from .core.slide import open_slide

SAMPLE_SLIDE = "CMU-1-Small-Region.svs"


def sample_slide_path() -> Path:
    """Path of the bundled sample slide (origin and licence: ``sample_data/ORIGIN.md``)."""
    path = Path(str(files("napari_pathsegdiff") / "sample_data" / SAMPLE_SLIDE))
    if not path.is_file():
        raise FileNotFoundError(
            f"The sample slide {path} is missing from the installed package; reinstall "
            "napari-pathsegdiff."
        )
    return path


def sample_slide() -> list[tuple]:
    """The sample slide as a multiscale Image layer (0.499 µm/px), read like any slide."""
    return slide_layer_data(open_slide(sample_slide_path()), name="CMU-1-Small-Region")
