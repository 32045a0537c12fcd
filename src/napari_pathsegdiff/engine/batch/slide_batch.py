"""Segment whole slides in batch: blocks of the analysis level mapped over dask workers.

For each slide:

1. open it lazily and choose the *analysis level*: the level whose µm/px best matches the
   head's (:meth:`~napari_pathsegdiff.core.slide.Slide.best_level_for_mpp`), or ``level``;
   when the level's µm/px differs from the head's, the engine resamples tiles internally;
2. find tissue on a low-resolution level and cut the analysis level into chunk-aligned
   blocks (:mod:`.block_plan`); with ``tissue_only`` blocks without tissue are skipped;
3. build a dask graph of one task per block not yet done and compute it with dask threads,
   or on a dask.distributed cluster (:mod:`.dask_runner`). Each task predicts its block
   with :func:`~napari_pathsegdiff.engine.inference.predict.predict_region`, which reads the halo
   around every tile from the slide itself, on a tile grid anchored to absolute level
   coordinates: this is the equivalent of ``dask.array.map_overlap`` with the overlap read
   at the source, so a block's labels equal the same pixels of a prediction of the whole
   level. The task writes the block as one chunk of a zarr label array, then a done marker
   (:mod:`.block_worker`): the model is loaded once per worker process, not per block;
4. write the multiscale OME-Zarr, optional OME-TIFF and GeoJSON (:mod:`.slide_outputs`)
   and ``summary.json``: class areas in mm² (pixel counts x (µm/px)² / 1e6), tissue area,
   blocks computed and skipped, seconds, status. This runs in a background thread of the
   client while the blocks of the next slide are computed.

One run at a time writes into an ``out`` folder: a run holds the lock ``out/.segment-slide.lock``
(:class:`~napari_pathsegdiff.core.locks.FolderLock`) from start to end, and a second run into the
same folder stops at once with a message naming the first (process, host, start time). The
lock ends with the process, however it ends, so a killed run never blocks the next one.

A slide that cannot be done (unreadable, no tissue, no µm/px for a head that needs one, a
failing block) is reported with its reason in its summary and in ``batch_summary.json``;
the other slides are still done. With ``resume`` the blocks already done are kept, so a
run killed at any moment resumes to the identical result.

Layout of ``out``::

    batch_summary.json
    .segment-slide.lock                   held by the run writing here
    <slide name>/summary.json, labels.ome.zarr, classes.geojson, [labels.ome.tif]
    <slide name>/work/labels.zarr     the analysis-level labels, one chunk per block
    <slide name>/work/done/r<row>-c<col>.json   done markers (class counts, seconds)

``summary.json`` holds ``status`` (``"ok"`` or ``"failed"``) and ``reason``; the analysis
``level``, its shape, ``mpp`` and where the µm/px came from; ``tissue`` (mask level, area in
mm², fraction); ``blocks`` (total, outside the region, with tissue, skipped without tissue,
planned, resumed from an earlier run, computed by this run); ``classes`` (id, name, colour,
pixels, area in mm²; label 0 of blocks not computed is counted in ``not_segmented_pixels``,
not in a class); ``outputs``; ``seconds`` (blocks, outputs, total) and ``notes``.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import dask
import numpy as np
import zarr
from dask.base import tokenize

from ...core.atomic import recover_folder, remove_folder, unfinished_files
from ...core.locks import FolderLock
from ...core.progress import Progress
from ...core.region import Region
from ...core.slide import MAX_SLIDE_PIXELS, SlideError, open_slide
from .block_plan import SlideFailed, choose_level, find_tissue, plan_blocks
from .block_worker import BlockJob, head_identity, read_done, run_block
from .dask_runner import BlockRunner
from .slide_outputs import GEOJSON, OME_TIFF, OME_ZARR, SUMMARY, write_json, write_slide_outputs

BATCH_SUMMARY = "batch_summary.json"
OUT_LOCK = ".segment-slide.lock"
WORK = "work"
MIN_BLOCK = 32
_OUTPUT_NAMES = (SUMMARY, OME_ZARR, OME_TIFF, GEOJSON)


DEFAULT_BLOCK = 2048
"""Block side in pixels: about a quarter faster than 1024 with blended tiles (fewer tiles of the
ring around each block; BENCHMARKS.md); 1.35 GB peak memory on the TCGA slide of the benchmark."""


@dataclass(frozen=True)
class BatchOptions:
    """Settings of a batch run (see :func:`segment_slides`)."""

    head: Path
    out: Path
    level: int | None = None
    mpp: float | None = None
    tissue_only: bool = False
    resume: bool = False
    device: str = "auto"
    block: int = DEFAULT_BLOCK
    batch_size: int = 4
    ome_tiff: bool = False
    backbone: str | None = None
    region: tuple[int, int, int, int] | None = None
    max_pixels: int = MAX_SLIDE_PIXELS


@dataclass
class BatchResult:
    """Per-slide summaries of a batch, and where the batch summary was written."""

    summaries: list[dict]
    path: Path
    seconds: float = 0.0
    failed: list[dict] = field(init=False)

    def __post_init__(self):
        self.failed = [s for s in self.summaries if s["status"] != "ok"]

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass
class _Head:
    """What the client needs to know of the head (the workers load the model itself)."""

    folder: Path
    identity: str
    mpp: float | None
    classes: list[tuple[int, str, str]]


def segment_slides(
    slides: Sequence[str | Path],
    *,
    head: str | Path,
    out: str | Path,
    level: int | None = None,
    mpp: float | None = None,
    tissue_only: bool = False,
    resume: bool = False,
    device: str = "auto",
    block: int = DEFAULT_BLOCK,
    batch_size: int = 4,
    ome_tiff: bool = False,
    backbone: str | None = None,
    region: tuple[int, int, int, int] | None = None,
    max_pixels: int = MAX_SLIDE_PIXELS,
    scheduler: str | None = None,
    workers: int | None = None,
    threads: int | None = None,
    show_progress: bool = False,
    callback: Callable[[Progress], Any] | None = None,
) -> BatchResult:
    """Segment every slide in ``slides`` with the head in ``head``; outputs go to ``out``.

    Parameters
    ----------
    slides : sequence of path
        Slide files; each gets the folder ``out/<file name without suffix>``.
    head : path
        A head folder (``pathsegdiff train`` or the napari widget wrote it).
    out : path
        Output folder (created).
    level : int, optional
        Analysis level; default the level matching the head's µm/px (level 0 for a head
        without one).
    mpp : float, optional
        Level-0 µm/px of the slides, for files that do not say (or to override them).
    tissue_only : bool
        Compute only blocks that hold tissue; the others keep label 0.
    resume : bool
        Keep the blocks a previous, interrupted run of the same settings finished.
    device : str
        Torch device on the workers: ``"auto"`` (a GPU when there is one), ``"cpu"``, ``"cuda"``.
    block : int
        Block side in pixels of the analysis level (one zarr chunk per block). A block also
        computes the ring of tiles around it that its edges are blended with, so larger blocks
        compute fewer tiles twice: 2048 px (the default) costs 1.56x the features of its own
        tiles, 1024 px 2.25x.
    batch_size : int
        Tiles per feature batch.
    ome_tiff : bool
        Also write a pyramidal OME-TIFF of the labels.
    backbone : str, optional
        Diffusion backbone replacing the one recorded in the head (a folder or ``"default"``).
    region : (y, x, height, width), optional
        Only blocks overlapping this box of the analysis level.
    max_pixels : int
        Slides whose level 0 claims more pixels are refused (damaged files, decompression
        bombs); see :func:`~napari_pathsegdiff.core.slide.open_slide`.
    scheduler : str, optional
        Address of a dask.distributed scheduler to run the blocks on.
    workers : int, optional
        Start a local dask cluster of this many worker processes (one thread each).
    threads : int, optional
        Without a cluster: blocks computed at once (default one per core). Every block runs
        with one torch thread, so results are identical whatever ``threads`` or ``workers``.
    show_progress : bool
        Progress bars (dask's for threads, distributed's for a cluster).
    callback : callable, optional
        Receives a :class:`~napari_pathsegdiff.core.progress.Progress` record (stage
        ``"slides"``) when a slide starts, plans its blocks and finishes.

    Returns
    -------
    BatchResult
        Per-slide summaries; ``result.ok`` is False when any slide failed.

    Raises
    ------
    FileNotFoundError, ValueError
        Problems that concern the whole batch (head folder, options, output folder, two
        slides with the same name, an unreachable scheduler), before any slide is touched.
    FolderInUse
        Another run is writing into ``out`` (a ``ValueError`` naming it).
    """
    t0 = time.perf_counter()
    options = BatchOptions(
        head=Path(head).resolve(), out=Path(out).resolve(), level=level, mpp=mpp,
        tissue_only=tissue_only, resume=resume, device=device, block=int(block),
        batch_size=int(batch_size), ome_tiff=ome_tiff, backbone=backbone,
        region=tuple(int(v) for v in region) if region is not None else None,
        max_pixels=int(max_pixels),
    )
    paths = _check_batch(slides, options)
    head_info = _read_head(options.head)
    report = callback or (lambda _rec: None)
    with FolderLock(options.out, OUT_LOCK, purpose="pathsegdiff segment-slide") as lock:
        if lock.taken_over is not None:
            report(Progress("slides", 0, len(paths), f"{options.out}: the run of "
                            f"{lock.taken_over.describe()} ended without finishing; continuing"))
        return _segment_locked(paths, options, head_info, report, scheduler=scheduler,
                               workers=workers, threads=threads, show_progress=show_progress, t0=t0)


def _segment_locked(paths: list[Path], options: BatchOptions, head_info: "_Head", report, *,
                    scheduler, workers, threads, show_progress: bool, t0: float) -> BatchResult:
    """The batch itself, run while holding the lock of ``options.out``."""
    # Each slide's outputs are written by one background thread while the blocks of the
    # next slide run, so the workers do not wait for them.
    with BlockRunner(scheduler=scheduler, workers=workers, threads=threads, show_progress=show_progress,
                     say=lambda line: report(Progress("slides", 0, len(paths), line))) as runner, \
            ThreadPoolExecutor(1, thread_name_prefix="slide-outputs") as finisher:
        try:
            futures = [
                _segment_slide(path, options, head_info, runner, finisher, report, (i, len(paths)))
                for i, path in enumerate(paths)
            ]
        except BaseException:  # interrupted: do not start the outputs still queued
            finisher.shutdown(wait=True, cancel_futures=True)
            raise
        summaries = [f.result() for f in futures]
    seconds = time.perf_counter() - t0
    batch_path = write_json(options.out / BATCH_SUMMARY, {
        "head": str(options.head),
        "scheduler": runner.description,
        "options": _jsonable(asdict(options)),
        "slides": [
            {k: s.get(k) for k in ("slide", "name", "status", "reason")}
            | {"summary": f"{s['name']}/{SUMMARY}"}
            for s in summaries
        ],
        "ok": sum(s["status"] == "ok" for s in summaries),
        "failed": sum(s["status"] != "ok" for s in summaries),
        "seconds": round(seconds, 3),
    })
    return BatchResult(summaries=summaries, path=batch_path, seconds=seconds)


def slide_name(path: str | Path) -> str:
    """The output folder name of a slide: its file name without suffix (and ``.ome``)."""
    stem = Path(path).stem
    return stem[:-4] if stem.lower().endswith(".ome") else stem


# --- one slide --------------------------------------------------------------------------------
def _segment_slide(path: Path, options: BatchOptions, head: _Head, runner: BlockRunner,
                   finisher: ThreadPoolExecutor, report, position: tuple[int, int]) -> Future:
    """Run the blocks of one slide here; its outputs and summary are written by ``finisher``.

    Returns a future of the slide's summary (already done when the slide failed early).
    """
    t0 = time.perf_counter()
    name = slide_name(path)
    folder = options.out / name
    summary: dict[str, Any] = {
        "slide": str(path), "name": name, "status": "failed", "reason": None,
        "head": str(head.folder), "head_mpp": head.mpp, "scheduler": runner.description,
        "notes": [],
    }
    report(Progress("slides", position[0], position[1], f"{name}: opening"))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            slide = open_slide(path, max_pixels=options.max_pixels)
        except (SlideError, OSError) as exc:
            raise SlideFailed(f"unreadable: {exc}") from exc
        with slide:
            finish = _run_slide(slide, folder, options, head, runner, summary, report, position)
    except Exception as exc:  # noqa: BLE001 - one bad slide must not stop the batch
        failed: Future = Future()
        failed.set_result(_close(summary, folder, t0, exc, report, position))
        return failed

    def complete() -> dict:
        try:
            finish()
        except Exception as exc:  # noqa: BLE001
            return _close(summary, folder, t0, exc, report, position)
        return _close(summary, folder, t0, None, report, position)

    return finisher.submit(complete)


def _close(summary: dict, folder: Path, t0: float, error: Exception | None, report,
           position: tuple[int, int]) -> dict:
    """Set the status and total time, write ``summary.json`` and report the slide's line."""
    if error is None:
        summary["status"] = "ok"
    else:
        summary["reason"] = str(error) if isinstance(error, SlideFailed) else f"{type(error).__name__}: {error}"
    summary.setdefault("seconds", {})["total"] = round(time.perf_counter() - t0, 3)
    summary["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if folder.is_dir():
        write_json(folder / SUMMARY, summary)
    report(Progress("slides", position[0] + 1, position[1], _one_line(summary)))
    return summary


def _run_slide(slide, folder: Path, options: BatchOptions, head: _Head, runner: BlockRunner,
               summary: dict, report, position: tuple[int, int]) -> Callable[[], None]:
    """Plan and compute the blocks of ``slide``; returns the function that writes its outputs."""
    # 1. the analysis level and scale
    plan = choose_level(slide, head_mpp=head.mpp, level=options.level, mpp=options.mpp)
    shape = tuple(int(v) for v in slide.levels[plan.level].shape[:2])
    summary["notes"] += list(plan.notes)
    summary.update(
        level=plan.level, level_shape=list(shape), level_downsample=list(slide.downsamples[plan.level]),
        mpp=plan.level_mpp, mpp_source=plan.mpp_source, block=options.block,
        region=list(options.region) if options.region else None,
    )
    # 2. the blocks to compute: in the region, with tissue, not done by an earlier run
    planned, blocks = _plan_slide_blocks(slide, plan, shape, options, summary)
    labels_path, done_dir = _prepare_work(folder, slide, plan.level, shape, options, head)
    todo = [b for b in planned if b.key not in read_done(done_dir)]
    blocks.update(resumed=len(planned) - len(todo), computed=0)
    summary["blocks"] = blocks
    report(Progress("slides", position[0], position[1],
                    f"{slide_name(slide.path)}: level {plan.level} {shape[0]}x{shape[1]} px, "
                    f"{len(todo)} blocks to compute ({blocks['resumed']} done before, "
                    f"{blocks['skipped_no_tissue']} without tissue skipped)"))
    # 3. the blocks, on the runner's workers
    job = BlockJob(
        slide_path=str(slide.path), slide_identity=slide.identity, level=plan.level, mpp=options.mpp,
        head_dir=str(head.folder), head_identity=head.identity, device=options.device,
        backbone=options.backbone, batch_size=options.batch_size, labels_path=str(labels_path),
        done_dir=str(done_dir), max_pixels=options.max_pixels,
    )
    seconds = summary["seconds"] = _compute_blocks(job, todo, runner, blocks)
    # 4. class areas, then the outputs once every slide is computed
    summary["classes"] = _class_areas(planned, read_done(done_dir), head.classes, plan.level_mpp)
    summary["not_segmented_pixels"] = int(shape[0] * shape[1] - sum(b.pixels for b in planned))
    if plan.level_mpp is None:
        summary["notes"].append("µm/px unknown: areas are given in pixels only")
    downsample = tuple(slide.downsamples[plan.level])

    def finish() -> None:
        t_out = time.perf_counter()
        summary["outputs"] = write_slide_outputs(
            folder, labels_path, name=summary["name"], mpp=plan.level_mpp, level_downsample=downsample,
            classes=head.classes, ome_tiff=options.ome_tiff,
        )
        seconds["outputs"] = round(time.perf_counter() - t_out, 3)

    return finish


def _plan_slide_blocks(slide, plan, shape: tuple[int, int], options: BatchOptions,
                       summary: dict) -> tuple[list, dict]:
    """The blocks in ``--region`` holding tissue (all of them without ``--tissue-only``) and
    their counts; the tissue figures go into ``summary``."""
    tissue = find_tissue(slide)
    summary["tissue"] = {
        "level": tissue.level, "step": tissue.step, "fraction": round(float(tissue.mask.mean()), 6),
        "area_mm2": tissue.area_mm2(plan.slide_mpp),
    }
    if not tissue.mask.any():
        raise SlideFailed(
            f"no tissue found on level {tissue.level} (a blank scan, or tissue too faint for "
            "the tissue detector)"
        )
    within = None
    if options.region is not None:
        y, x, h, w = options.region
        try:
            within = Region(plan.level, y, x, h, w).clip(shape)
        except ValueError as exc:
            raise SlideFailed(f"--region: {exc}") from exc
    all_blocks = plan_blocks(shape, level=plan.level, block=options.block)
    in_region = plan_blocks(shape, level=plan.level, block=options.block, within=within)
    fractions = {b.key: tissue.fraction(b.region, slide.downsamples) for b in in_region}
    planned = [b for b in in_region if fractions[b.key] > 0] if options.tissue_only else in_region
    summary["tissue"]["pixels_in_planned_blocks"] = int(sum(fractions[b.key] * b.pixels for b in planned))
    counts = {
        "total": len(all_blocks), "outside_region": len(all_blocks) - len(in_region),
        "tissue": sum(f > 0 for f in fractions.values()),
        "skipped_no_tissue": len(in_region) - len(planned), "planned": len(planned),
    }
    return planned, counts


def _compute_blocks(job: BlockJob, todo: list, runner: BlockRunner, blocks: dict) -> dict:
    """Run one task per block on ``runner``; returns the timings (``blocks["computed"]`` set)."""
    token = tokenize(job)[:12]
    tasks = [
        dask.delayed(run_block, pure=False)(job, b, dask_key_name=f"segment-block-{token}-{b.key}")
        for b in todo
    ]
    t_blocks = time.perf_counter()
    records = runner.run(tasks)
    seconds = {"blocks": round(time.perf_counter() - t_blocks, 3)}
    blocks["computed"] = len(records)
    if records:
        seconds["per_block_mean"] = round(float(np.mean([r["seconds"] for r in records])), 4)
    return seconds


def _class_areas(planned, done: dict, classes, level_mpp: float | None) -> list[dict]:
    """Pixels and mm² per class, summed over the done markers of the planned blocks."""
    missing = [b.key for b in planned if b.key not in done]
    if missing:
        raise SlideFailed(f"{len(missing)} blocks have no done marker after the run: {missing[:5]}")
    counts = np.zeros(256, np.int64)
    for b in planned:
        for cid, n in done[b.key]["counts"].items():
            counts[int(cid)] += n
    pixel_mm2 = level_mpp**2 / 1e6 if level_mpp is not None else None
    return [
        {"id": cid, "name": cname, "color": color, "pixels": int(counts[cid]),
         "area_mm2": float(counts[cid] * pixel_mm2) if pixel_mm2 is not None else None}
        for cid, cname, color in classes
    ]


def _prepare_work(folder: Path, slide, level: int, shape, options: BatchOptions, head: _Head):
    """The zarr label array and done-marker folder; fresh unless resuming the same settings."""
    work = folder / WORK
    recover_folder(work)  # a work folder whose deletion was killed (``.work.trash-*``)
    labels_path, done_dir = work / "labels.zarr", work / "done"
    run = _jsonable({
        "slide": slide.identity, "head": head.identity, "level": level, "shape": list(shape),
        "block": options.block, "mpp": options.mpp, "backbone": options.backbone,
    })
    if options.resume and labels_path.exists():
        before = zarr.open_array(str(labels_path), mode="r").attrs.get("pathsegdiff_run")
        if before != run:
            changed = sorted(k for k in run if (before or {}).get(k) != run[k])
            raise SlideFailed(
                f"cannot resume: the partial results in {work} were made with other settings "
                f"({', '.join(changed)} differ); run without --resume to start again"
            )
        for leftover in unfinished_files(done_dir):  # markers a kill left unrenamed
            leftover.unlink(missing_ok=True)
        return labels_path, done_dir
    remove_folder(work)
    for name in _OUTPUT_NAMES:
        old = folder / name
        recover_folder(old)
        if old.is_dir():
            remove_folder(old)
        elif old.exists():
            old.unlink()
    work.mkdir(parents=True)
    zarr.create_array(
        store=str(labels_path), shape=shape, chunks=(options.block, options.block), dtype="uint8",
        fill_value=0, zarr_format=3, attributes={"pathsegdiff_run": run},
    )
    done_dir.mkdir()
    return labels_path, done_dir


# --- batch-level checks -------------------------------------------------------------------------
def _check_batch(slides, options: BatchOptions) -> list[Path]:
    if not slides:
        raise ValueError("No slides given: pass one or more slide files.")
    if options.block < MIN_BLOCK:
        raise ValueError(f"--block must be at least {MIN_BLOCK} pixels, got {options.block}.")
    if options.max_pixels < 1:
        raise ValueError(f"--max-pixels must be a positive number of pixels, got {options.max_pixels}.")
    if options.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {options.batch_size}.")
    if options.mpp is not None and not (np.isfinite(options.mpp) and options.mpp > 0):
        raise ValueError(f"--mpp must be a positive number of µm per pixel, got {options.mpp}.")
    if options.level is not None and options.level < 0:
        raise ValueError(f"--level must be 'auto' or a level number >= 0, got {options.level}.")
    if options.region is not None and (len(options.region) != 4 or min(options.region[2:]) <= 0):
        raise ValueError(f"--region needs Y X HEIGHT WIDTH with a positive size, got {options.region}.")
    if options.out.exists() and not options.out.is_dir():
        raise ValueError(f"Output {options.out} is a file: give a folder.")
    paths = [Path(p).resolve() for p in slides]
    names: dict[str, list[Path]] = {}
    for p in paths:
        names.setdefault(slide_name(p), []).append(p)
    clashes = {n: ps for n, ps in names.items() if len(ps) > 1}
    if clashes:
        n, ps = next(iter(clashes.items()))
        raise ValueError(
            f"{len(ps)} slides would share the output folder {n!r} ({', '.join(map(str, ps))}): "
            "segment them into different --out folders."
        )
    return paths


def _read_head(folder: Path) -> _Head:
    from ...models.heads import load_head

    head = load_head(folder)
    classes = list(zip(head.class_ids, head.class_names, head.class_colors))
    return _Head(folder=folder, identity=head_identity(folder), mpp=head.mpp, classes=classes)


def _one_line(summary: dict) -> str:
    if summary["status"] != "ok":
        return f"{summary['name']}: FAILED - {summary['reason']}"
    b = summary["blocks"]
    return (f"{summary['name']}: ok, {b['computed']} blocks computed, {b['resumed']} resumed, "
            f"{b['skipped_no_tissue']} skipped, {summary['seconds']['total']:.1f} s")


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))
