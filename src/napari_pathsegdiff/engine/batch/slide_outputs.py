"""The files a whole-slide run leaves per slide, made from its zarr label array once every
block is done.

- ``labels.ome.zarr``: multiscale OME-Zarr label image (NGFF ``multiscales`` with the µm/px of
  the analysis level, ``image-label`` class names and colours); coarser levels are
  nearest-neighbour halvings computed lazily with dask (:mod:`~napari_pathsegdiff.core.ome_writer`);
- ``labels.ome.tif`` (optional): the same as a pyramidal OME-TIFF;
- ``classes.geojson``: class polygons from the finest pyramid level of at most
  :data:`GEOJSON_MAX_SIDE` pixels a side, in level-0 pixel coordinates
  (:mod:`~napari_pathsegdiff.core.geojson`). Label 0 (background, or not segmented) gets none.

Each file is written under a temporary name beside its final one and renamed into place when
complete (:mod:`~napari_pathsegdiff.core.atomic`): a run killed while writing leaves the
previous file or none, never a partial file under the final name; leftovers of such a kill are
removed when the outputs are written again.

The pyramid is computed chunk by chunk with dask threads in this process (never on a
cluster: measured faster, and the workers need not see the outputs), so memory does not grow
with the slide.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import dask
import dask.array as da
import zarr

from ...core.atomic import recover_folder, replace_file, replace_folder, write_text_atomic
from ...core.geojson import labels_to_geojson, write_geojson
from ...core.ome_writer import read_labels_ome_zarr, write_labels_ome_tiff, write_labels_ome_zarr

OME_ZARR = "labels.ome.zarr"
OME_TIFF = "labels.ome.tif"
GEOJSON = "classes.geojson"
SUMMARY = "summary.json"
#: The GeoJSON is traced on the finest pyramid level with at most this many pixels a side.
GEOJSON_MAX_SIDE = 4096


def write_slide_outputs(
    folder: Path,
    labels_path: Path,
    *,
    name: str,
    mpp: float | None,
    level_downsample: tuple[float, float],
    classes: list[tuple[int, str, str]],
    ome_tiff: bool = False,
) -> dict:
    """Write the OME-Zarr, optional OME-TIFF and GeoJSON of a finished label array.

    Parameters
    ----------
    folder : Path
        The slide's output folder.
    labels_path : Path
        The zarr label array of the analysis level.
    name : str
        Image name in the metadata.
    mpp : float or None
        µm/px of the analysis level.
    level_downsample : (float, float)
        Level-0 pixels per analysis-level pixel, ``(dy, dx)``.
    classes : list of (id, name, colour)
        The head's classes.
    ome_tiff : bool
        Also write the OME-TIFF.

    Returns
    -------
    dict
        Paths of the files written (relative to ``folder``), the GeoJSON's resolution and
        features, and the seconds each file took.
    """
    labels = da.from_zarr(zarr.open_array(str(labels_path), mode="r"))
    names = {cid: cname for cid, cname, _ in classes}
    colors = {cid: color for cid, _, color in classes}
    outputs: dict = {}
    seconds: dict = {}
    t0 = time.perf_counter()
    for output in (OME_ZARR, OME_TIFF, GEOJSON, SUMMARY):
        recover_folder(folder / output)  # leftovers of a write that was killed
    with dask.config.set(scheduler="threads"):
        replace_folder(folder / OME_ZARR, lambda tmp: write_labels_ome_zarr(
            tmp, labels, mpp=mpp, name=name, class_names=names, class_colors=colors))
        outputs["ome_zarr"] = OME_ZARR
        seconds["ome_zarr"] = round(time.perf_counter() - t0, 3)
        if ome_tiff:
            t0 = time.perf_counter()
            replace_file(folder / OME_TIFF,
                         lambda tmp: write_labels_ome_tiff(tmp, labels, mpp=mpp, name=name))
            outputs["ome_tiff"] = OME_TIFF
            seconds["ome_tiff"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    index, coarse = _geojson_level(folder / OME_ZARR)
    factor = 2**index
    collection = labels_to_geojson(
        coarse,
        {cid: (cname, color) for cid, cname, color in classes if cid != 0},
        downsample=(level_downsample[0] * factor, level_downsample[1] * factor),
    )
    write_geojson(folder / GEOJSON, collection)
    outputs["geojson"] = GEOJSON
    outputs["geojson_level0_px_per_px"] = [level_downsample[0] * factor, level_downsample[1] * factor]
    outputs["geojson_features"] = len(collection["features"])
    seconds["geojson"] = round(time.perf_counter() - t0, 3)
    outputs["seconds"] = seconds
    return outputs


def _geojson_level(path: Path):
    """(pyramid index, labels in memory) of the finest level within GEOJSON_MAX_SIDE."""
    index = 0
    while True:
        try:
            level, _ = read_labels_ome_zarr(path, level=index)
        except ValueError:  # no coarser level: use the coarsest
            level, _ = read_labels_ome_zarr(path, level=index - 1)
            return index - 1, level.compute(scheduler="threads")
        if max(level.shape) <= GEOJSON_MAX_SIDE:
            return index, level.compute(scheduler="threads")
        index += 1


def write_json(path: Path, obj) -> Path:
    """Write ``obj`` as indented JSON, atomically (temporary file, then rename)."""
    return write_text_atomic(path, json.dumps(obj, indent=2) + "\n")
