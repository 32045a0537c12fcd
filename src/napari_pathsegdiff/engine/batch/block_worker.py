"""What runs on a worker for one block: predict it, write its chunk, then mark it done.

Everything a block task needs travels in a small, picklable :class:`BlockJob`; the head, its
feature extractor and the open slide are kept in module-level caches, so each worker process
(or the one process of a threads run) loads the model once, not once per block.

Writing is crash-safe in this order: the block's labels go to exactly one chunk of the zarr
label array (zarr's local store writes a chunk to a temporary file and renames it into place),
and only then is the block's *done marker* written, also through a temporary file and a
rename. A run killed at any moment leaves every block either done (chunk and marker), or to be
computed again, never half-written. The marker is separate from the chunk because zarr does
not store chunks that are all zeros.

Results do not depend on how blocks are spread over threads, processes or machines: every
block is predicted with :data:`BLOCK_TORCH_THREADS` torch intra-op threads, set in the thread
that runs it. Floating-point sums split over a different number of threads add in a different
order, and a class whose score differs from the best by a rounding error would then win some
pixels in one layout and lose them in another; with the thread count fixed per block, the
same block gives the same bytes on a laptop, on ``--threads 8`` and on a cluster of the same
CPU kind. Parallelism comes from blocks computed side by side instead.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...core.atomic import write_text_atomic
from ...core.progress import drive
from ...core.region import Region
from ...core.slide import MAX_SLIDE_PIXELS, Slide, open_slide
from .block_plan import Block

#: Torch intra-op threads of every block, whatever the layout (see the module docstring).
BLOCK_TORCH_THREADS = 1
#: Head/extractor pairs and open slides kept per process.
_MAX_MODELS = 2
_MAX_SLIDES = 4

_lock = threading.Lock()
_models: OrderedDict[tuple, tuple] = OrderedDict()
_slides: OrderedDict[tuple, Slide] = OrderedDict()
_stats = {"model_loads": 0, "blocks": 0}


@dataclass(frozen=True)
class BlockJob:
    """What a block task needs to know, the same for every block of a slide.

    Attributes
    ----------
    slide_path, slide_identity : str
        The slide file, and its identity (path, size, modification time) for the cache.
    level : int
        The analysis level.
    mpp : float or None
        Level-0 µm/px given by the user (``--mpp``), else None.
    head_dir, head_identity : str
        Head folder and a hash of its files (a head replaced in place is reloaded).
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda"``, resolved on the worker.
    backbone : str or None
        Backbone overriding the one recorded in the head's feature config.
    batch_size : int
        Tiles per feature and head batch.
    labels_path, done_dir : str
        The zarr label array and the folder of done markers.
    max_pixels : int
        The size limit the slide was opened with (see :func:`~napari_pathsegdiff.core.slide.open_slide`).
    """

    slide_path: str
    slide_identity: str
    level: int
    mpp: float | None
    head_dir: str
    head_identity: str
    device: str
    backbone: str | None
    batch_size: int
    labels_path: str
    done_dir: str
    max_pixels: int = MAX_SLIDE_PIXELS


def head_identity(folder: str | Path) -> str:
    """A hash of the files of a head folder: a head retrained in place gets a new identity."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).iterdir() if p.is_file()):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


# --- per-process caches ------------------------------------------------------------------------
def worker_models(head_dir: str, *, head_identity: str, device: str = "auto", backbone: str | None = None):
    """The ``(head, extractor)`` of a head folder, loaded once per process.

    Keyed by folder, identity (a hash of the head's files), device and backbone; at most
    :data:`_MAX_MODELS` pairs are kept.
    """
    key = (str(head_dir), head_identity, str(device), backbone)
    with _lock:
        if key in _models:
            _models.move_to_end(key)
            return _models[key]
        from ...models.heads import load_head_and_extractor

        head, extractor = load_head_and_extractor(head_dir, backbone=backbone, device=device)
        _models[key] = (head, extractor)
        _stats["model_loads"] += 1
        while len(_models) > _MAX_MODELS:
            _models.popitem(last=False)
        return head, extractor


def worker_slide(path: str, identity: str, *, max_pixels: int = MAX_SLIDE_PIXELS) -> Slide:
    """The slide at ``path``, opened once per process (at most :data:`_MAX_SLIDES` kept)."""
    key = (str(path), identity)
    with _lock:
        if key in _slides:
            _slides.move_to_end(key)
            return _slides[key]
        slide = open_slide(path, max_pixels=max_pixels)
        _slides[key] = slide
        while len(_slides) > _MAX_SLIDES:
            _slides.popitem(last=False)[1].close()
        return slide


def worker_stats() -> dict[str, int]:
    """Models loaded and blocks computed by this process (``client.run(worker_stats)``)."""
    with _lock:
        return dict(_stats)


def reset_worker_state() -> None:
    """Forget cached models and slides and zero the counters of this process."""
    with _lock:
        _models.clear()
        for slide in _slides.values():
            slide.close()
        _slides.clear()
        _stats.update(model_loads=0, blocks=0)


# --- one block ---------------------------------------------------------------------------------
def predict_block(job: BlockJob, region: Region) -> np.ndarray:
    """Class ids of ``region`` (uint8), with the cached model and slide of this process.

    The pixels every tile of the block reads (core and halo) are read from the slide once, as
    one window: tiles are much smaller than the slide's chunks, and reading them one by one
    would decode each chunk several times. Values are the same, so are the labels.
    """
    from ..inference.predict import predict_region
    from ...core.scale_plan import plan_at_level
    from ..inference.tile_features import prediction_grid

    head, extractor = worker_models(
        job.head_dir, head_identity=job.head_identity, device=job.device, backbone=job.backbone
    )
    slide = worker_slide(job.slide_path, job.slide_identity, max_pixels=job.max_pixels)
    plan = plan_at_level(slide, region.level, target_mpp=head.mpp, mpp=job.mpp)
    window = tile_window(prediction_grid(extractor, plan.scale), slide, region)
    source = WindowedSlide(slide, window, slide.read_region(window))
    work = predict_region(
        source, region, head=head, extractor=extractor, plan=plan, batch_size=job.batch_size
    )
    return drive(work, show=False).labels


def tile_window(grid, slide: Slide, region: Region) -> Region:
    """The pixels of ``region``'s level that the tiles predicting ``region`` read (a superset).

    These include the neighbouring tiles whose predictions are blended into the block's edges.
    """
    from ..inference.tile_features import prediction_tiles

    _, tiles = prediction_tiles(grid, slide, region)
    y0, x0 = min(t.outer.y0 for t in tiles), min(t.outer.x0 for t in tiles)
    y1, x1 = max(t.outer.y1 for t in tiles), max(t.outer.x1 for t in tiles)
    if grid.resampled:  # source coordinates of the analysis pixels, plus the filter's reach
        s = grid.scale
        margin = math.ceil(4 * max(0.0, (s - 1.0) / 2.0)) + 3
        y0, x0 = math.floor((y0 + 0.5) * s - 0.5) - margin, math.floor((x0 + 0.5) * s - 0.5) - margin
        y1, x1 = math.ceil((y1 - 0.5) * s - 0.5) + margin + 1, math.ceil((x1 - 0.5) * s - 0.5) + margin + 1
    return Region(region.level, y0, x0, y1 - y0, x1 - x0)


class WindowedSlide(Slide):
    """A slide whose reads inside one window of one level come from pixels already read.

    Reads elsewhere go to the slide. It shares the slide's file and never closes it.
    """

    def __init__(self, slide: Slide, window: Region, pixels: np.ndarray):
        super().__init__(
            path=slide.path, levels=slide.levels, downsamples=slide.downsamples, mpp=slide.mpp,
            objective_power=slide.objective_power, metadata=slide.metadata, _identity=slide.identity,
        )
        self._base, self._window, self._pixels = slide, window, pixels

    def read_region(self, region: Region) -> np.ndarray:
        w = self._window
        if region.level == w.level and w.y <= region.y and w.x <= region.x and region.y1 <= w.y1 and region.x1 <= w.x1:
            return self._pixels[region.y - w.y : region.y1 - w.y, region.x - w.x : region.x1 - w.x].copy()
        return self._base.read_region(region)


def run_block(job: BlockJob, block: Block) -> dict:
    """Predict ``block``, write its chunk, then its done marker; returns the marker's record.

    The record holds the block's position, its class pixel counts, the seconds it took, and
    the process that computed it with the number of models that process has loaded.
    """
    import zarr

    t0 = time.perf_counter()
    threads = fix_torch_threads()
    labels = predict_block(job, block.region)
    if labels.shape != block.region.shape:
        raise RuntimeError(f"Block {block.key}: labels of shape {labels.shape}, expected {block.region.shape}.")
    array = zarr.open_array(job.labels_path, mode="r+")
    array[block.region.slices] = labels
    counts = np.bincount(labels.ravel(), minlength=256)
    record = {
        "row": block.row,
        "col": block.col,
        "counts": {str(i): int(counts[i]) for i in np.flatnonzero(counts)},
        "seconds": round(time.perf_counter() - t0, 4),
        "pid": os.getpid(),
        "torch_threads": threads,
    }
    with _lock:
        _stats["blocks"] += 1
        record["process_model_loads"] = _stats["model_loads"]
    write_done(job.done_dir, block, record)
    return record


def fix_torch_threads(n: int | None = None) -> int:
    """Make torch use ``n`` (default :data:`BLOCK_TORCH_THREADS`) intra-op threads in the
    calling thread; returns the number in use.

    torch keeps the count per thread for threads it did not start, so it is set in the thread
    that computes the block, every time (cheap when already right).
    """
    import torch

    n = BLOCK_TORCH_THREADS if n is None else int(n)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return torch.get_num_threads()


# --- done markers ------------------------------------------------------------------------------
def write_done(done_dir: str | Path, block: Block, record: dict) -> Path:
    """Write the done marker of ``block`` atomically (temporary file, then rename)."""
    done_dir = Path(done_dir)
    done_dir.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(done_dir / f"{block.key}.json", json.dumps(record))


def read_done(done_dir: str | Path) -> dict[str, dict]:
    """Done markers by block key (``r<row>-c<col>``); an absent folder holds none."""
    done_dir = Path(done_dir)
    if not done_dir.is_dir():
        return {}
    return {p.stem: json.loads(p.read_text()) for p in done_dir.glob("r*-c*.json")}
