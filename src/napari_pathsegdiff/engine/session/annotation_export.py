"""Export the labels of an annotation session: OME-TIFF, OME-Zarr and QuPath GeoJSON.

The exported mask is the store's merged view (painted pixels over predictions) on the analysis
level, with that level's µm/px; 0 means "not segmented". OME files are written from the lazy
view band by band. GeoJSON coordinates are level-0 pixels of the slide (QuPath's), and only
the bounding box of what was segmented or painted is read into memory.

An export never mixes the predictions of two heads: :func:`export_labels` refuses a store
with regions that an earlier head segmented, and :func:`export_work` (what the widget runs)
first segments those regions again with the current head.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ...core.geojson import labels_to_geojson, write_geojson
from ...core.ome_writer import write_labels_ome_tiff, write_labels_ome_zarr
from ...core.progress import Progress, Work
from .annotation import AnnotationError, AnnotationSession
from .suggestion import stored_chunks

MAX_GEOJSON_PIXELS = 20_000 * 20_000
"""Largest segmented area (analysis pixels) exported as GeoJSON in one piece."""


@dataclass(frozen=True)
class ExportFormat:
    """A way to write a session's labels: its name, the file-name endings that choose it (the
    first is the default), ``write(session, path) -> path``, and the title a person sees."""

    name: str
    endings: tuple[str, ...]
    write: Callable[[AnnotationSession, Path], Path]
    title: str


_FORMATS: dict[str, ExportFormat] = {}


def register_export_format(name: str, endings: tuple[str, ...], write, *, title: str | None = None) -> None:
    """Add (or replace) an export format; ``endings`` are file-name endings (any case), and
    ``title`` names it in the widget (default ``name``)."""
    _FORMATS[name] = ExportFormat(name, tuple(e.lower() for e in endings), write, title or name)


def export_formats() -> tuple[str, ...]:
    """The names of the registered export formats."""
    return tuple(_FORMATS)


def export_format(name: str) -> ExportFormat:
    """The registered format ``name`` (its endings and title)."""
    return _FORMATS[name]


def export_labels(session: AnnotationSession, path: str | Path, *, format: str | None = None) -> Path:
    """Write the session's labels to ``path``.

    Parameters
    ----------
    session : AnnotationSession
        The session.
    path : path
        Output file; its ending chooses the format unless ``format`` is given
        (``.ome.tif``/``.ome.tiff``, ``.ome.zarr``, ``.geojson``/``.json``).
    format : str, optional
        A registered format (:func:`export_formats`): ``"ome-tiff"``, ``"ome-zarr"``,
        ``"geojson"``.

    Raises
    ------
    AnnotationError
        Unknown format, predictions of an earlier head (segment them again first:
        :func:`export_work`), nothing segmented yet (GeoJSON), or a segmented area too large
        for one GeoJSON file.
    """
    path = Path(path)
    name = format or _format_of(path)
    if name not in _FORMATS:
        raise AnnotationError(f"Unknown export format {name!r}: use one of {', '.join(_FORMATS)}.")
    check_one_head(session)
    return _FORMATS[name].write(session, path)


def _write_ome_tiff(session: AnnotationSession, path: Path) -> Path:
    store = session.store
    return write_labels_ome_tiff(path, store.merged(), mpp=store.mpp, name=path.name.split(".")[0])


def _write_ome_zarr(session: AnnotationSession, path: Path) -> Path:
    store = session.store
    return write_labels_ome_zarr(path, store.merged(), mpp=store.mpp, name=path.name.split(".")[0],
                                 class_names={c.id: c.name for c in session.classes},
                                 class_colors={c.id: c.color for c in session.classes})


def _write_geojson(session: AnnotationSession, path: Path) -> Path:
    box = segmented_box(session)
    if box is None:
        raise AnnotationError("Nothing is segmented or painted yet: there is nothing to export.")
    y, x, h, w = box
    if h * w > MAX_GEOJSON_PIXELS:
        raise AnnotationError(
            f"The segmented area is {w}x{h} analysis pixels, too large for one GeoJSON file: "
            "export OME-TIFF, or use the whole-slide command line."
        )
    store = session.store
    dy, dx = store.downsample
    collection = labels_to_geojson(
        store.read(y, x, h, w),
        {c.id: (c.name, c.color) for c in session.classes},
        downsample=(dy, dx),
        offset_yx=(y * dy, x * dx),
    )
    return write_geojson(path, collection)


register_export_format("ome-tiff", (".ome.tif", ".ome.tiff"), _write_ome_tiff, title="OME-TIFF")
register_export_format("ome-zarr", (".ome.zarr",), _write_ome_zarr, title="OME-Zarr")
register_export_format("geojson", (".geojson", ".json"), _write_geojson, title="GeoJSON")


def export_work(session: AnnotationSession, path: str | Path, *, format: str | None = None) -> Work[Path]:
    """:func:`export_labels` after segmenting again, with the current head, every region an
    earlier head predicted; a generator of :class:`Progress`, returning the path written."""
    if format is None:
        _format_of(Path(path))  # a bad name fails before any work
    if session.head is not None and session.stale_regions():
        yield from session.refresh_stale()
    yield Progress("export", 0, 1, "writing")
    written = export_labels(session, path, format=format)
    yield Progress("export", 1, 1, "written")
    return written


def check_one_head(session: AnnotationSession) -> None:
    """Raise :class:`AnnotationError` unless every stored prediction comes from one head: the
    session's current head when it has one."""
    heads = session.store.prediction_heads()
    current = session.head_identity
    older = sum(n for h, n in heads.items() if h != current) if current is not None else 0
    if older == 0 and (current is not None or len(heads) <= 1):
        return
    what = (f"{older} px were segmented by an earlier head than the current one"
            if current is not None else f"the segmented regions come from {len(heads)} different heads")
    raise AnnotationError(
        f"Not exported: {what}, and an export must not mix heads. Segment them again with the "
        "current head first (the widget's Export does it; from Python, session.refresh_stale() "
        "or annotation_export.export_work)."
    )


def segmented_box(session: AnnotationSession) -> tuple[int, int, int, int] | None:
    """(y, x, height, width) at the analysis level around every stored prediction or edit chunk."""
    store = session.store
    chunks = list(stored_chunks(store.path / "prediction", store.prediction.chunks, store.shape))
    chunks += list(stored_chunks(store.path / "edits", store.edits.chunks, store.shape))
    if not chunks:
        return None
    a = np.array(chunks)
    y0, x0 = a[:, 0].min(), a[:, 1].min()
    y1, x1 = (a[:, 0] + a[:, 2]).max(), (a[:, 1] + a[:, 3]).max()
    return int(y0), int(x0), int(y1 - y0), int(x1 - x0)


def _format_of(path: Path) -> str:
    name = path.name.lower()
    for fmt in _FORMATS.values():
        if name.endswith(fmt.endings):
            return fmt.name
    endings = ", ".join(f"*{e}" for fmt in _FORMATS.values() for e in fmt.endings)
    raise AnnotationError(f"{path.name}: name the file {endings} to choose the format.")
