"""Write label masks as pyramidal OME-TIFF and OME-Zarr, with their physical pixel size.

Both writers take a 2D label array (numpy or dask) and never hold more than a band of tiles
in memory, so a mask the size of a whole slide can be saved from a lazy dask array.

OME-TIFF
    BigTIFF, 256 x 256 tiles, zlib (deflate) compression, which every OME reader decodes
    (Bio-Formats, QuPath, tifffile). Coarser levels (every second pixel: nearest neighbour,
    which keeps class ids intact) go into SubIFDs as the OME-TIFF pyramid specification
    asks. The µm/px is written as OME ``PhysicalSizeX/Y`` (unit µm) and as TIFF resolution
    tags (pixels per centimetre).
OME-Zarr
    NGFF 0.4 ``multiscales`` (axes y, x in micrometer, a ``scale`` transformation per level)
    in the zarr v2 format, the one current OME-Zarr readers all read; chunks of 1024 x 1024
    compressed with Blosc-zstd. The root group is the label image itself and carries
    ``image-label`` metadata (colours and class names when given).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import dask.array as da
import numpy as np
import tifffile
import zarr
from numcodecs import Blosc

from .slide import ome_physical_metadata

__all__ = [
    "write_labels_ome_tiff",
    "write_labels_ome_zarr",
    "read_labels_ome_tiff",
    "read_labels_ome_zarr",
    "label_pyramid",
]

TILE = 256
ZARR_CHUNK = 1024
BAND_BYTES = 64 * 2**20
"""The OME-TIFF writer computes at most about this many bytes of labels at once."""
_LABEL_DTYPES = (np.uint8, np.uint16, np.uint32)

Color = str | Sequence[float]


def label_pyramid(labels, *, min_size: int = TILE) -> list[da.Array]:
    """Level 0 and nearest-neighbour halvings until the longer side is at most ``min_size``.

    Parameters
    ----------
    labels : array-like
        2D integer labels (numpy or dask); values must fit in ``uint32``.
    min_size : int
        Stop halving once the longer side is at most this.

    Returns
    -------
    list of dask.array.Array
        ``uint8``, ``uint16`` or ``uint32`` arrays, level 0 first; level ``i`` is
        ``labels[::2**i, ::2**i]``.
    """
    level = _as_label_array(labels)
    levels = [level]
    while max(levels[-1].shape) > min_size:
        levels.append(levels[-1][::2, ::2])
    return levels


def write_labels_ome_tiff(
    path,
    labels,
    *,
    mpp: float | None = None,
    name: str = "labels",
    compression: str = "zlib",
) -> Path:
    """Write ``labels`` as a tiled, compressed, pyramidal OME-TIFF.

    Parameters
    ----------
    path : str or path-like
        Output file, usually ending in ``.ome.tif``; replaced if it exists.
    labels : array-like
        2D integer labels (numpy or dask), ``(height, width)``.
    mpp : float, optional
        Microns per pixel of ``labels``; omitted from the file when None.
    name : str
        Image name in the OME metadata.
    compression : str
        A tifffile compression name; ``"zlib"`` (the default) is read everywhere.

    Returns
    -------
    Path
        The written file.

    Examples
    --------
    >>> import numpy as np
    >>> p = write_labels_ome_tiff(tmp_path / "m.ome.tif", np.eye(8, dtype=np.uint8), mpp=0.5)  # doctest: +SKIP
    >>> read_labels_ome_tiff(p)[1]  # doctest: +SKIP
    0.5
    """
    path = Path(path)
    mpp = _check_mpp(mpp)
    levels = label_pyramid(labels)
    metadata: dict = {"axes": "YX", "Name": name}
    resolution = {}
    if mpp is not None:
        metadata.update(PhysicalSizeX=mpp, PhysicalSizeXUnit="µm", PhysicalSizeY=mpp, PhysicalSizeYUnit="µm")
    options = dict(tile=(TILE, TILE), compression=compression, photometric="minisblack")
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:
        for index, level in enumerate(levels):
            if mpp is not None:
                per_cm = 1e4 / (mpp * 2**index)
                resolution = dict(resolution=(per_cm, per_cm), resolutionunit="CENTIMETER")
            extra = (
                dict(subifds=len(levels) - 1, metadata=metadata)
                if index == 0
                else dict(subfiletype=1, metadata=None)
            )
            tif.write(
                _tiles(level), shape=level.shape, dtype=level.dtype, **options, **resolution, **extra
            )
    return path


def write_labels_ome_zarr(
    path,
    labels,
    *,
    mpp: float | None = None,
    name: str = "labels",
    class_names: Mapping[int, str] | None = None,
    class_colors: Mapping[int, Color] | None = None,
) -> Path:
    """Write ``labels`` as a multiscale OME-Zarr (NGFF 0.4, zarr v2) label image.

    Parameters
    ----------
    path : str or path-like
        Output folder, usually ending in ``.ome.zarr``. An existing zarr folder there is
        replaced; any other existing, non-empty folder is refused.
    labels : array-like
        2D integer labels (numpy or dask), ``(height, width)``.
    mpp : float, optional
        Microns per pixel of ``labels``; without it the axes have no unit and scale 1.
    name : str
        Name of the multiscale image.
    class_names : mapping of int to str, optional
        Class name per label value, written as ``image-label`` properties.
    class_colors : mapping of int to colour, optional
        ``"#rrggbb"`` strings, or RGB(A) tuples of 0-255 ints or 0-1 floats per label value.

    Returns
    -------
    Path
        The written folder.
    """
    path = Path(path)
    mpp = _check_mpp(mpp)
    if path.exists() and not _is_replaceable_zarr(path):
        raise ValueError(
            f"{path} exists and is not a zarr folder: refusing to replace it. Choose a new path."
        )
    levels = label_pyramid(labels)
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    unit = {"unit": "micrometer"} if mpp is not None else {}
    base = mpp if mpp is not None else 1.0
    root.attrs["multiscales"] = [
        {
            "version": "0.4",
            "name": name,
            "axes": [{"name": "y", "type": "space", **unit}, {"name": "x", "type": "space", **unit}],
            "datasets": [
                {
                    "path": str(i),
                    "coordinateTransformations": [{"type": "scale", "scale": [base * 2**i] * 2}],
                }
                for i in range(len(levels))
            ],
            "type": "nearest",
        }
    ]
    root.attrs["image-label"] = _image_label(class_names, class_colors)
    previous = None
    for index, level in enumerate(levels):
        if previous is not None:  # halve the level just written: one pass over each level
            level = da.from_zarr(previous)[::2, ::2]
        chunks = (min(ZARR_CHUNK, level.shape[0]), min(ZARR_CHUNK, level.shape[1]))
        target = root.create_array(
            name=str(index),
            shape=level.shape,
            chunks=chunks,
            dtype=level.dtype,
            compressors=Blosc(cname="zstd", clevel=5, shuffle=Blosc.BITSHUFFLE),
            fill_value=0,
            chunk_key_encoding={"name": "v2", "separator": "/"},
        )
        da.store(level.rechunk(chunks), target, lock=False)
        previous = target
    return path


def read_labels_ome_tiff(path, *, level: int = 0) -> tuple[np.ndarray, float | None]:
    """Labels of one pyramid ``level`` of an OME-TIFF, and the µm/px of level 0.

    Reads the whole level into memory: meant for tests and small masks.
    """
    path = Path(path)
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        if not 0 <= level < len(series.levels):
            raise ValueError(f"{path} has levels 0..{len(series.levels) - 1}, not {level}.")
        data = series.levels[level].asarray()
        mpp = ome_physical_metadata(tif.ome_metadata or "")[0] if tif.is_ome else None
    return data, mpp


def read_labels_ome_zarr(path, *, level: int = 0) -> tuple[da.Array, float | None]:
    """Labels of one pyramid ``level`` of an OME-Zarr (lazy), and the µm/px of level 0."""
    root = zarr.open_group(str(path), mode="r")
    multiscale = root.attrs["multiscales"][0]
    datasets = multiscale["datasets"]
    if not 0 <= level < len(datasets):
        raise ValueError(f"{path} has levels 0..{len(datasets) - 1}, not {level}.")
    units = {axis.get("unit") for axis in multiscale["axes"]}
    scale = datasets[0]["coordinateTransformations"][0]["scale"]
    mpp = float(np.mean(scale)) if units == {"micrometer"} else None
    return da.from_zarr(root[datasets[level]["path"]]), mpp


# --- helpers -----------------------------------------------------------------------------


def _as_label_array(labels) -> da.Array:
    array = labels if isinstance(labels, da.Array) else da.from_array(np.asarray(labels), chunks=ZARR_CHUNK)
    if array.ndim != 2:
        raise ValueError(
            f"Labels must be a 2D (height, width) array; got shape {tuple(array.shape)}. "
            "Save one plane at a time."
        )
    if array.dtype in _LABEL_DTYPES:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"Labels must be integers; got dtype {array.dtype}. Round and cast them first.")
    low, high = (int(v) for v in da.compute(array.min(), array.max()))
    if low < 0 or high > np.iinfo(np.uint32).max:
        raise ValueError(
            f"Label values must lie in 0..{np.iinfo(np.uint32).max}; found {low}..{high}. "
            "Relabel them first."
        )
    dtype = next(t for t in _LABEL_DTYPES if high <= np.iinfo(t).max)
    return array.astype(dtype)


def _tiles(level: da.Array) -> Iterator[np.ndarray]:
    """Tiles in row-major order, computing one band of whole tile rows at a time."""
    height, width = level.shape
    rows = _band_rows(level)
    for y0 in range(0, height, rows):
        band = np.asarray(level[y0 : y0 + rows])
        for y in range(0, band.shape[0], TILE):
            for x in range(0, width, TILE):
                yield band[y : y + TILE, x : x + TILE]


def _band_rows(level: da.Array) -> int:
    """Rows computed at once: whole dask chunk rows when they fit in BAND_BYTES, in tiles."""
    row_bytes = level.shape[1] * level.dtype.itemsize
    fit = max(1, BAND_BYTES // (row_bytes * TILE)) * TILE
    chunk = max(TILE, level.chunksize[0] // TILE * TILE)
    return min(chunk, fit)


def _check_mpp(mpp) -> float | None:
    if mpp is None:
        return None
    mpp = float(mpp)
    if not (math.isfinite(mpp) and mpp > 0):
        raise ValueError(f"mpp must be a positive number of µm per pixel, got {mpp!r}.")
    return mpp


def _is_replaceable_zarr(path: Path) -> bool:
    if path.is_file():
        return False
    names = {p.name for p in path.iterdir()}
    return not names or bool(names & {".zgroup", ".zattrs", "zarr.json", ".zarray"})


def _image_label(
    class_names: Mapping[int, str] | None, class_colors: Mapping[int, Color] | None
) -> dict:
    meta: dict = {"version": "0.4"}
    if class_colors:
        meta["colors"] = [
            {"label-value": int(v), "rgba": _rgba255(c)} for v, c in sorted(class_colors.items())
        ]
    if class_names:
        meta["properties"] = [
            {"label-value": int(v), "class": str(n)} for v, n in sorted(class_names.items())
        ]
    return meta


def _rgba255(color: Color) -> list[int]:
    if isinstance(color, str):
        text = color.lstrip("#")
        if len(text) not in (6, 8):
            raise ValueError(f"Colour {color!r} is not '#rrggbb' or '#rrggbbaa'.")
        values = [int(text[i : i + 2], 16) for i in range(0, len(text), 2)]
    else:
        values = list(color)
        if all(isinstance(v, float) or isinstance(v, np.floating) for v in values) and max(values) <= 1:
            values = [round(float(v) * 255) for v in values]
        values = [int(v) for v in values]
    if len(values) == 3:
        values.append(255)
    if len(values) != 4 or not all(0 <= v <= 255 for v in values):
        raise ValueError(f"Colour {color!r} is not an RGB(A) colour.")
    return values
