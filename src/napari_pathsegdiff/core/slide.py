"""Whole-slide images as lazy pyramids of dask arrays.

A slide is opened with :func:`open_slide`: every pyramid level becomes a dask array of shape
``(height, width, 3)`` and dtype ``uint8`` (RGB, (y, x) order) that reads only the tiles a
computation touches (tifffile ``aszarr`` -> zarr -> dask). Opening decodes no tile, and
nothing here ever reads a whole full-resolution level into memory.

What is read from the file:

- the main image only: Aperio label, macro and thumbnail images are never the slide;
- microns per pixel (µm/px) of level 0 from, in this order, the Aperio ``MPP`` field, OME
  ``PhysicalSizeX/Y`` (with units), or the TIFF resolution tags (``XResolution`` with
  ``ResolutionUnit`` inch or centimetre). Resolution tags without a unit, or with a value that
  cannot be a microscope's (such as the 72 dpi that image editors write), are ignored and the
  µm/px is left unknown (``None``);
- the objective power from the Aperio ``AppMag`` field or OME ``NominalMagnification``.

Pixel formats: 8-bit RGB and RGBA (alpha dropped) open as they are; 8-bit single-channel
images open as grey RGB with the note ``metadata['grayscale'] = True``. Anything else, in
particular **16-bit single-channel TIFFs**, is refused with a :class:`SlideError` that says
why: the project segments brightfield H&E slides, and turning fluorescence or a mask into
RGB would need an intensity window that the file does not give. napari's built-in reader
opens such files.

Size limits. A TIFF header can claim any size: a few megabytes of tile offsets that all point
at one compressed tile make a "decompression bomb" of 10⁶ × 10⁶ pixels, which would exhaust
memory and time long before a pixel is shown. :func:`open_slide` refuses, before it builds any
array, a main image of more than ``max_pixels`` pixels (default :data:`MAX_SLIDE_PIXELS`, above
any scanner's slide) or whose largest tile or strip decodes to more than ``max_tile_bytes``
(default :data:`MAX_TILE_BYTES`). The :class:`SlideError` names the file, the size it claims
and the keyword (``pathsegdiff segment-slide --max-pixels``) that raises the limit for a
genuine slide.

A single-level image larger than :data:`COMPUTED_LEVELS_ABOVE` pixels a side gets coarser
levels computed lazily (2x2 mean, block by block) until the coarsest fits in
:data:`COMPUTED_LEVELS_UNTIL` pixels, so that zooming out stays fast; they are marked with
``metadata['computed_levels']``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import tifffile
import zarr
from dask.base import tokenize

from .region import Region, downsamples_from_shapes

__all__ = [
    "Slide", "SlideError", "open_slide", "is_tiff_file", "ome_physical_metadata",
    "COMPUTED_LEVELS_ABOVE", "COMPUTED_LEVELS_UNTIL", "MAX_SLIDE_PIXELS", "MAX_TILE_BYTES",
]

COMPUTED_LEVELS_ABOVE = 4096
"""A single-level image with a side longer than this gets computed coarser levels."""
COMPUTED_LEVELS_UNTIL = 2048
"""Computed levels halve the size until the longer side is at most this."""
TARGET_CHUNK = 1024
MAX_SLIDE_PIXELS = 2**36
"""Largest main image (height x width, about 262,000 px a side) opened by default."""
MAX_TILE_BYTES = 2**30
"""Largest decoded tile or strip (bytes) opened by default: one read never decodes more."""
"""Dask chunks hold about this many pixels a side, aligned to the file's tiles."""

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_ASSOCIATED = {"label", "macro", "thumbnail", "overview"}
# µm per unit for OME PhysicalSize units
_OME_UNITS_UM = {
    "pm": 1e-6, "nm": 1e-3, "µm": 1.0, "um": 1.0, "\u03bcm": 1.0, "mm": 1e3, "cm": 1e4,
    "dm": 1e5, "m": 1e6, "Å": 1e-4, "\u212b": 1e-4,
}
# µm/px that a brightfield scan can plausibly have; outside, resolution tags are defaults
_PLAUSIBLE_MPP = (0.01, 50.0)


MPP_TOLERANCE = 0.05
"""Relative difference of µm/px treated as the same scale (no resampling, level accepted)."""


class SlideError(ValueError):
    """A file that cannot be opened as a slide; the message names the file, the problem and
    what to do about it."""


def is_tiff_file(path: str | os.PathLike) -> bool:
    """Whether the file starts with a TIFF or BigTIFF signature (reads 4 bytes)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) in _TIFF_MAGIC
    except OSError:
        return False


@dataclass
class Slide:
    """A whole-slide image as a pyramid of lazily read dask arrays.

    Parameters
    ----------
    path : Path or None
        The file, or None for an in-memory image (:meth:`from_array`).
    levels : list of dask.array.Array
        One array per pyramid level, level 0 (full resolution) first; each ``(h, w, 3)``
        ``uint8``, read tile by tile on demand.
    downsamples : list of (float, float)
        ``(dy, dx)``: level-0 pixels per pixel of each level.
    mpp : float or None
        Microns per pixel of level 0 (mean of x and y); None when the file does not say.
    objective_power : float or None
        Scanner objective magnification (e.g. 20.0), None when unknown.
    metadata : dict
        ``vendor``, ``mpp_source`` and notes such as ``grayscale`` or ``computed_levels``.

    Examples
    --------
    >>> import numpy as np
    >>> s = Slide.from_array(np.zeros((64, 96, 3), np.uint8), mpp=0.5)
    >>> s.levels[0].shape, s.level_mpp(0)
    ((64, 96, 3), 0.5)
    """

    path: Path | None
    levels: list[da.Array]
    downsamples: list[tuple[float, float]]
    mpp: float | None = None
    objective_power: float | None = None
    metadata: dict = field(default_factory=dict)
    _identity: str | None = field(default=None, repr=False, compare=False)
    _tiff: Any = field(default=None, repr=False, compare=False)

    # --- identity and scale --------------------------------------------------------------
    @property
    def identity(self) -> str:
        """A stable id for caches: resolved path, size and modification time of the file
        (``'array:<hash>'`` for in-memory images)."""
        if self._identity is not None:
            return self._identity
        if self.path is None:
            return "array:" + tokenize(self.levels[0])
        return _file_identity(self.path)

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of level 0."""
        return (int(self.levels[0].shape[0]), int(self.levels[0].shape[1]))

    def level_mpp(self, level: int) -> float | None:
        """Microns per pixel of ``level`` (None when the slide's µm/px is unknown)."""
        dy, dx = self._downsample(level)
        if self.mpp is None:
            return None
        return self.mpp * (dy + dx) / 2.0

    def with_mpp(self, mpp: float, source: str) -> "Slide":
        """This slide with a level-0 µm/px a person gave (its file records none, or a wrong one).

        A new :class:`Slide` sharing the file and its pyramid (close the original, not this
        one); the slide itself is not changed. ``source`` is kept as ``metadata["mpp_source"]``.
        """
        from .scale_plan import check_mpp

        metadata = {**self.metadata, "mpp_source": source}
        return replace(self, mpp=check_mpp(mpp), metadata=metadata, _identity=self.identity, _tiff=None)

    def best_level_for_mpp(self, mpp: float) -> int:
        """The coarsest level whose µm/px is at most ``mpp`` (within :data:`MPP_TOLERANCE`).

        The finest level (0) when every level is coarser than ``mpp``.

        Raises
        ------
        SlideError
            When the slide's µm/px is unknown.
        """
        if self.mpp is None:
            raise SlideError(
                f"{self._name()}: the µm/px of this slide is unknown, so no level can be chosen "
                f"for {mpp} µm/px; give the µm/px explicitly."
            )
        if not mpp > 0:
            raise ValueError(f"mpp must be a positive number of µm per pixel, got {mpp!r}.")
        from .scale_plan import best_level

        return best_level(self, mpp, self.mpp)

    # --- reading -------------------------------------------------------------------------
    def read_region(self, region: Region) -> np.ndarray:
        """Pixels of ``region`` as a ``(height, width, 3)`` ``uint8`` array.

        Only the tiles overlapping the region are decoded. Parts of the region outside the
        level are white (255), like the background of a glass slide.
        """
        level = self.levels[self._check_level(region.level)]
        out = np.full((region.height, region.width, 3), 255, dtype=np.uint8)
        try:
            inside = region.clip(level.shape[:2])
        except ValueError:
            return out
        oy, ox = inside.y - region.y, inside.x - region.x
        # Synchronous: callers run regions in parallel themselves, and inside a dask.distributed
        # task the default scheduler would ship every tile read through the cluster.
        pixels = level[inside.slices].compute(scheduler="synchronous")
        out[oy : oy + inside.height, ox : ox + inside.width] = pixels
        return out

    # --- construction --------------------------------------------------------------------
    @classmethod
    def from_array(
        cls, array, *, mpp: float | None = None, identity: str | None = None
    ) -> "Slide":
        """An in-memory RGB image (numpy or dask) as a one-level slide.

        Parameters
        ----------
        array : array-like
            ``(h, w, 3)`` or ``(h, w, 4)`` ``uint8`` (the alpha channel is dropped).
        mpp : float, optional
            Microns per pixel, if known.
        identity : str, optional
            Cache identity; by default ``'array:'`` plus a hash of the pixels.

        Raises
        ------
        SlideError
            For grayscale, multichannel or non-``uint8`` arrays.
        """
        if not isinstance(array, da.Array):
            array = np.asarray(array)
        if array.ndim != 3 or array.shape[2] not in (3, 4):
            raise SlideError(
                f"An in-memory slide must be an RGB or RGBA image of shape (height, width, 3 or 4); "
                f"got shape {tuple(array.shape)}. Convert grayscale or multichannel images to RGB first."
            )
        if array.dtype != np.uint8:
            raise SlideError(
                f"An in-memory slide must have dtype uint8 (0-255 per channel); got {array.dtype}. "
                "Scale it to 0-255 and convert with .astype('uint8') first."
            )
        metadata: dict[str, Any] = {"vendor": "array", "mpp_source": "given" if mpp else None}
        if array.shape[2] == 4:
            array = array[..., :3]
            metadata["alpha_dropped"] = True
        level = da.from_array(array, chunks=(TARGET_CHUNK, TARGET_CHUNK, 3)) if isinstance(
            array, np.ndarray
        ) else array
        if identity is None:
            identity = "array:" + tokenize(level)
        return cls(
            path=None,
            levels=[level],
            downsamples=[(1.0, 1.0)],
            mpp=float(mpp) if mpp else None,
            objective_power=None,
            metadata=metadata,
            _identity=identity,
        )

    def close(self) -> None:
        """Release the open file handle (tifffile reopens it if the levels are read again)."""
        if self._tiff is not None:
            self._tiff.close()
            self._tiff = None

    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- helpers -------------------------------------------------------------------------
    def _check_level(self, level: int) -> int:
        if not 0 <= level < len(self.levels):
            raise ValueError(
                f"{self._name()} has levels 0..{len(self.levels) - 1}; level {level} does not exist."
            )
        return level

    def _downsample(self, level: int) -> tuple[float, float]:
        return self.downsamples[self._check_level(level)]

    def _name(self) -> str:
        return str(self.path) if self.path is not None else "The in-memory slide"


def open_slide(
    path: str | os.PathLike,
    *,
    max_pixels: int = MAX_SLIDE_PIXELS,
    max_tile_bytes: int = MAX_TILE_BYTES,
) -> Slide:
    """Open a TIFF-based whole-slide image (SVS, generic or OME pyramidal TIFF, NDPI, SCN,
    BIF, ...) lazily.

    Parameters
    ----------
    path : str or path-like
        The slide file.
    max_pixels : int
        Refuse a main image of more pixels (height x width of level 0) than this: a header
        that claims more is damaged or a decompression bomb. Raise it for a genuine giant.
    max_tile_bytes : int
        Refuse a file whose largest tile or strip decodes to more bytes than this.

    Returns
    -------
    Slide
        Levels as dask arrays; nothing is decoded until pixels are read.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    SlideError
        When the file is empty, not a TIFF, truncated or damaged, holds no 8-bit RGB
        image (for example a 16-bit single-channel TIFF), or claims more pixels than
        ``max_pixels``; the message says what to do.

    Examples
    --------
    >>> slide = open_slide("CMU-1-Small-Region.svs")  # doctest: +SKIP
    >>> slide.levels[0].shape, slide.mpp  # doctest: +SKIP
    ((2967, 2220, 3), 0.499)
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Slide file not found: {path}. Check the path and try again.")
    if path.is_dir():
        raise SlideError(f"{path} is a folder, not a slide file: give the path of the slide file itself.")
    size = path.stat().st_size
    if size == 0:
        raise SlideError(f"{path} is empty (0 bytes): it holds no slide. Copy the file again from its source.")
    if not is_tiff_file(path):
        raise SlideError(
            f"{path} is not a TIFF-based slide ({_sniff_format(path)}). This reader opens TIFF-based "
            "slides (.svs, .tif, .ndpi, .scn, .bif); open other images with napari's built-in reader."
        )
    try:
        with quiet_tifffile():
            tif = tifffile.TiffFile(path)
    except Exception as exc:  # tifffile raises many types on damaged files
        raise SlideError(
            f"{path}: the TIFF structure cannot be read ({type(exc).__name__}: {exc}). The file is "
            "probably truncated or damaged: copy it again from its source."
        ) from exc
    try:
        with quiet_tifffile():
            return _open_tiff(path, tif, size, SizeLimits(max_pixels, max_tile_bytes))
    except BaseException:
        tif.close()
        raise


# --- opening a TIFF ----------------------------------------------------------------------


@dataclass(frozen=True)
class SizeLimits:
    """The most pixels (level 0) and decoded bytes per tile or strip a file may claim."""

    max_pixels: int = MAX_SLIDE_PIXELS
    max_tile_bytes: int = MAX_TILE_BYTES

    def check(self, path: Path, shape: tuple[int, ...], axes: str, tile_bytes: int) -> None:
        """Raise :class:`SlideError` when an image of ``shape`` (axes ``axes``) is too large."""
        height, width = int(shape[axes.index("Y")]), int(shape[axes.index("X")])
        if height * width > self.max_pixels:
            raise SlideError(
                f"{path} claims {height:,} x {width:,} pixels ({height * width / 1e9:,.1f} "
                f"gigapixels), more than the limit of {self.max_pixels:,} pixels. No scanner makes "
                "slides this large: the file is damaged or a decompression bomb (a small file "
                "whose header promises more pixels than memory holds). If the slide is genuine, "
                "raise the limit: open_slide(path, max_pixels=N), or pathsegdiff segment-slide "
                "--max-pixels N."
            )
        if tile_bytes > self.max_tile_bytes:
            raise SlideError(
                f"{path}: one tile or strip of its image decodes to {tile_bytes:,} bytes, more "
                f"than the limit of {self.max_tile_bytes:,}: reading any pixel would decode all "
                "of it. Convert the file to a tiled pyramidal TIFF (for example with bfconvert "
                "or vips), or, if it is genuine, raise the limit: open_slide(path, "
                "max_tile_bytes=N)."
            )


@contextlib.contextmanager
def quiet_tifffile():
    """A context in which tifffile's log (``<TiffPages @...> invalid offset...``) is not printed:
    what is wrong with a file reaches the user as one clear error instead."""
    logger = logging.getLogger("tifffile")
    before = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(before)


def _open_tiff(path: Path, tif: tifffile.TiffFile, size: int, limits: SizeLimits) -> Slide:
    series = _main_series(tif)
    _check_size(path, series, limits)
    _check_pixel_format(path, series)
    _check_complete(path, series, size)
    metadata: dict[str, Any] = {"vendor": _vendor(tif), "series": series.name or "", "mpp_source": None}
    try:
        levels = [_level_array(path, series, i, metadata) for i in range(len(series.levels))]
    except Exception as exc:  # e.g. a compression imagecodecs cannot decode
        raise SlideError(
            f"{path}: the pyramid levels cannot be read ({type(exc).__name__}: {exc}). The file "
            "may use a compression that imagecodecs cannot decode, or be damaged; converting it "
            "to a pyramidal OME-TIFF (for example with bfconvert) usually helps."
        ) from exc
    mpp, objective = _physical_metadata(tif, series.levels[0].keyframe, metadata)
    if len(levels) == 1 and max(levels[0].shape[:2]) > COMPUTED_LEVELS_ABOVE:
        levels = _computed_levels(levels[0])
        metadata["computed_levels"] = len(levels) - 1
    return Slide(
        path=path,
        levels=levels,
        downsamples=downsamples_from_shapes([lv.shape for lv in levels]),
        mpp=mpp,
        objective_power=objective,
        metadata=metadata,
        _identity=_file_identity(path),
        _tiff=tif,
    )


def _main_series(tif: tifffile.TiffFile) -> tifffile.TiffPageSeries:
    """The slide itself: the first series that is not an associated image."""
    try:
        all_series = tif.series
    except Exception as exc:
        raise SlideError(
            f"{tif.filehandle.path}: the image directories cannot be read ({type(exc).__name__}: "
            f"{exc}). The file is probably truncated or damaged: copy it again from its source."
        ) from exc
    if not all_series:
        raise SlideError(
            f"{tif.filehandle.path}: no image directory can be read. The file is probably "
            "truncated or damaged: copy it again from its source."
        )
    for series in all_series:
        if (series.name or "").strip().lower() not in _ASSOCIATED:
            return series
    raise SlideError(f"{tif.filehandle.path}: the file holds only associated images (label, macro, "
                     "thumbnail), no slide image.")


def _check_size(path: Path, series: tifffile.TiffPageSeries, limits: SizeLimits) -> None:
    """Refuse images larger than ``limits``, from the header alone (nothing decoded)."""
    page = series.levels[0].keyframe
    if "Y" not in series.axes or "X" not in series.axes:
        return  # not an image of rows and columns: _check_pixel_format refuses it
    tile_bytes = int(np.prod(page.chunks, dtype=np.int64)) * np.dtype(page.dtype).itemsize
    limits.check(path, series.shape, series.axes, tile_bytes)


def _check_pixel_format(path: Path, series: tifffile.TiffPageSeries) -> None:
    axes, dtype, shape = series.axes, np.dtype(series.dtype), series.shape
    rgb = (axes == "YXS" and shape[-1] in (3, 4)) or (axes == "SYX" and shape[0] in (3, 4))
    if dtype == np.uint8 and (rgb or axes == "YX"):
        return
    if axes == "YX":
        raise SlideError(
            f"{path} is a {dtype.itemsize * 8}-bit single-channel image ({dtype}), not an 8-bit RGB "
            "brightfield slide. napari-pathsegdiff segments RGB (H&E) slides and does not guess an "
            "intensity window for fluorescence or masks; open this file with napari's built-in reader "
            "(viewer.open(path, plugin='napari'))."
        )
    raise SlideError(
        f"{path} holds an image with axes {axes!r}, shape {tuple(shape)} and dtype {dtype}, not an "
        "8-bit RGB brightfield slide (height, width, 3). Open multichannel or 3D images with "
        "napari's built-in reader."
    )


def _check_complete(path: Path, series: tifffile.TiffPageSeries, size: int) -> None:
    """Refuse files whose tile data runs past the end (an incomplete copy)."""
    for index, level in enumerate(series.levels):
        page = level.keyframe
        ends = [o + c for o, c in zip(page.dataoffsets, page.databytecounts) if o]
        if not ends and page.dataoffsets:
            raise SlideError(f"{path}: level {index} has no image data; the file is damaged.")
        if ends and max(ends) > size:
            raise SlideError(
                f"{path} is truncated: the image data of level {index} ends at byte {max(ends)} but "
                f"the file has only {size} bytes. The copy is incomplete; copy it again from its source."
            )


def _level_array(path: Path, series: tifffile.TiffPageSeries, index: int, metadata: dict) -> da.Array:
    store = series.aszarr(level=index)
    array = zarr.open_array(store, mode="r", zarr_format=2)
    chunks = tuple(_aligned_chunk(c) for c in array.chunks)
    level = da.from_zarr(array, chunks=chunks, name=f"slide-{tokenize(_file_identity(path), index)}")
    axes = series.levels[index].axes
    if axes == "SYX":
        level = level.transpose(1, 2, 0)
    if level.ndim == 2:
        level = da.stack([level, level, level], axis=-1)
        metadata["grayscale"] = True
    elif level.shape[2] == 4:
        level = level[..., :3]
        metadata["alpha_dropped"] = True
    return level


def _aligned_chunk(tile: int) -> int:
    """A dask chunk of about TARGET_CHUNK pixels that is a whole number of file tiles."""
    return tile * max(1, round(TARGET_CHUNK / tile))


def _computed_levels(level0: da.Array) -> list[da.Array]:
    """Level 0 plus lazily computed 2x2-mean levels until the longer side fits."""
    levels = [level0]
    while max(levels[-1].shape[:2]) > COMPUTED_LEVELS_UNTIL:
        levels.append(_half(levels[-1]))
    return levels


def _half(level: da.Array) -> da.Array:
    h, w = level.shape[:2]
    level = level[: h - h % 2, : w - w % 2]
    even = tuple(max(2, c + c % 2) for c in level.chunksize[:2])
    level = level.rechunk({0: even[0], 1: even[1]})
    half = da.coarsen(np.mean, level, {0: 2, 1: 2}, trim_excess=True)
    half = da.round(half).astype(np.uint8)
    if max(half.chunksize[:2]) < TARGET_CHUNK // 2:
        half = half.rechunk({0: TARGET_CHUNK, 1: TARGET_CHUNK})
    return half


# --- metadata ----------------------------------------------------------------------------


def _vendor(tif: tifffile.TiffFile) -> str:
    for name in ("svs", "ome", "ndpi", "scn", "bif", "philips", "qpi"):
        if getattr(tif, f"is_{name}", False):
            return {"svs": "aperio", "ndpi": "hamamatsu", "scn": "leica", "bif": "ventana"}.get(name, name)
    return "generic-tiff"


def _physical_metadata(
    tif: tifffile.TiffFile, page: tifffile.TiffPage, metadata: dict
) -> tuple[float | None, float | None]:
    """(µm/px, objective power) of level 0; records where the µm/px came from."""
    mpp = objective = None
    description = page.description or ""
    if description.startswith("Aperio"):
        fields = _aperio_fields(description)
        mpp = _positive(fields.get("MPP"))
        objective = _positive(fields.get("AppMag"))
        if mpp:
            metadata["mpp_source"] = "aperio MPP"
    if tif.is_ome and (mpp is None or objective is None):
        ome_mpp, ome_objective = ome_physical_metadata(tif.ome_metadata or "")
        if mpp is None and ome_mpp:
            mpp, metadata["mpp_source"] = ome_mpp, "OME PhysicalSizeX/Y"
        objective = objective or ome_objective
    if mpp is None:
        mpp = _resolution_mpp(page, metadata)
        if mpp:
            metadata["mpp_source"] = "TIFF resolution tags"
    return mpp, objective


def _aperio_fields(description: str) -> dict[str, str]:
    fields = {}
    for item in description.split("|")[1:]:
        key, sep, value = item.partition("=")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def ome_physical_metadata(xml: str) -> tuple[float | None, float | None]:
    """(µm/px, objective power) from OME-XML: the mean of ``PhysicalSizeX/Y`` of the first
    image converted to µm, and the first ``Objective``'s ``NominalMagnification``."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None, None
    ns = {"ome": root.tag[1:].split("}")[0]} if root.tag.startswith("{") else {}
    prefix = "ome:" if ns else ""
    pixels = root.find(f".//{prefix}Image/{prefix}Pixels", ns)
    mpp = None
    if pixels is not None:
        sizes = []
        for axis in ("X", "Y"):
            value = _positive(pixels.get(f"PhysicalSize{axis}"))
            factor = _OME_UNITS_UM.get(pixels.get(f"PhysicalSize{axis}Unit", "µm"))
            if value and factor:
                sizes.append(value * factor)
        mpp = sum(sizes) / len(sizes) if sizes else None
    objective = None
    for node in root.iterfind(f".//{prefix}Objective", ns):
        objective = _positive(node.get("NominalMagnification"))
        if objective:
            break
    return mpp, objective


def _resolution_mpp(page: tifffile.TiffPage, metadata: dict) -> float | None:
    """µm/px from XResolution/YResolution + ResolutionUnit, ignoring meaningless defaults."""
    if "XResolution" not in page.tags:
        return None
    unit = int(page.resolutionunit)
    um_per_unit = {2: 25400.0, 3: 10000.0}.get(unit)  # inch, centimetre
    if um_per_unit is None:
        metadata.setdefault("notes", []).append("resolution tags without a unit ignored")
        return None
    xres, yres = page.get_resolution()
    if not (xres > 0 and yres > 0):
        return None
    mpp = um_per_unit * (1.0 / xres + 1.0 / yres) / 2.0
    if not _PLAUSIBLE_MPP[0] <= mpp <= _PLAUSIBLE_MPP[1]:
        metadata.setdefault("notes", []).append(
            f"resolution tags ({xres:g} px per {'inch' if unit == 2 else 'cm'}) are not a "
            "microscope's and were ignored"
        )
        return None
    return mpp


def _positive(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


# --- files -------------------------------------------------------------------------------


def _file_identity(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


_SIGNATURES = [
    (b"\x89PNG", "it is a PNG image"),
    (b"\xff\xd8\xff", "it is a JPEG image"),
    (b"GIF8", "it is a GIF image"),
    (b"BM", "it is a BMP image"),
    (b"\x00\x00\x00\x0cjP", "it is a JPEG 2000 image"),
    (b"PK\x03\x04", "it is a ZIP archive"),
]


def _sniff_format(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(16)
    for signature, what in _SIGNATURES:
        if head.startswith(signature):
            return what
    if re.match(rb"^[\x09\x0a\x0d\x20-\x7e]*$", head):
        return "it looks like a text file"
    return "it does not start with a TIFF signature"
