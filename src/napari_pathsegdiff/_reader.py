"""npe2 reader: whole-slide images as lazy multiscale Image layers.

Which files are this reader's own: a single path with a slide suffix (see
:data:`SLIDE_SUFFIXES`) that is a TIFF (checked from its first bytes) whose first image is
8-bit RGB(A), or a TIFF whose structure tifffile cannot parse (so that a truncated or damaged
slide gets an error saying so). For anything else ``get_reader`` returns None and napari can
offer another reader: lists of paths, folders, missing files, non-TIFF files (an empty file,
a PNG renamed ``.svs``), and single-channel TIFFs (masks such as the OME-TIFFs this plugin
writes, fluorescence, 16-bit images), which napari's built-in reader shows as they are. A claimed file that cannot be read raises
:class:`~napari_pathsegdiff.core.slide.SlideError`, whose message names the file and the
problem; napari shows it.

A file with a slide suffix that the reader steps aside for gets its reason as a warning
(:class:`SlideNotOpened`), which napari shows as a notification: when no other reader takes
the file either, napari itself says only that the reader "refused the file".

Size: a file whose header claims more pixels than
:data:`~napari_pathsegdiff.core.slide.MAX_SLIDE_PIXELS` (a damaged file or a decompression
bomb) is claimed and refused at once, before any array is built.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import tifffile

from ._slide_layer import slide_layer_data
from .core.slide import SlideError, is_tiff_file, open_slide, quiet_tifffile

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".scn", ".bif", ".qptiff")
"""File suffixes the reader considers (the manifest's patterns; ``.ome.tif`` ends in .tif)."""


class SlideNotOpened(UserWarning):
    """Why the reader stepped aside for a file with a slide suffix (shown by napari)."""


def get_reader(path) -> Callable[[str], list[tuple]] | None:
    """Return :func:`read_slide` when ``path`` is a slide this plugin reads, else None.

    Cheap: reads the TIFF header and first directory only, no pixels.
    """
    if not isinstance(path, str):
        return None
    file = Path(path)
    if file.suffix.lower() not in SLIDE_SUFFIXES or not file.is_file():
        return None
    if not is_tiff_file(file) or not _first_image_is_rgb8(file):
        warnings.warn(f"napari-pathsegdiff does not open {file.name}: {_refusal(file)}",
                      SlideNotOpened, stacklevel=2)
        return None
    return read_slide


def read_slide(path: str) -> list[tuple]:
    """Open ``path`` lazily as one multiscale RGB Image layer (scale in µm when known).

    Raises
    ------
    SlideError
        When the file is a TIFF that cannot be read as a slide (truncated, damaged, ...).
    """
    return slide_layer_data(open_slide(path))


def _refusal(path: Path) -> str:
    """Why this reader does not open ``path`` (a file it stepped aside for)."""
    try:
        open_slide(path).close()
    except (SlideError, OSError) as exc:
        return str(exc)
    return (
        f"{path} is a single-channel 8-bit image, not an RGB slide; napari's built-in reader "
        "shows it as it is (from Python, open_slide opens it as grey RGB)."
    )


def _first_image_is_rgb8(path: Path) -> bool:
    """Whether the first image is 8-bit RGB(A); True for unparsable TIFFs (claimed so that
    reading them reports the damage)."""
    try:
        with quiet_tifffile(), tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            return page.dtype == np.uint8 and page.samplesperpixel in (3, 4)
    except Exception:  # tifffile raises many exception types on damaged files
        return True
