"""Benchmark: whole-slide batch segmentation (``pathsegdiff segment-slide``).

What it measures:

1. **Memory as the slide grows.** Synthetic pyramidal slides of 25,000, 50,000 and 100,000 px
   a side (0.25 µm/px, 256-px JPEG tiles of real H&E cut from the bundled sample slide, written
   tile by tile by ``scripts/bench_slide_open.py``) are segmented with ``classic`` features on
   a local dask cluster of 2 worker processes, with ``--tissue-only``. To keep the run short,
   only a fixed box of ``--blocks`` blocks at the centre of the analysis level (level 1,
   0.5 µm/px) is computed (``region``), so the work per run is the same and what grows is the
   slide: its pyramid, tissue detection, block plan, label array and outputs (OME-Zarr pyramid
   and GeoJSON of the whole analysis level). Peak RSS of the client process and of each
   worker process is reported.
2. **Throughput** in megapixels of tissue per second (tissue pixels of the computed blocks,
   from the tissue mask, divided by the wall time of the block phase; worker start-up and model
   loading excluded, as workers are warmed first) with 1 and 2 workers, for ``classic``
   features and for diffusion features. Diffusion features use ``--backbone`` when given, else
   the default backbone when installed, else a backbone of the shipped architecture ("small")
   with **random weights**: a stand-in for speed only, labelled as such. Heads are untrained
   (new) heads: a head's weights do not change its cost.
3. **Per-block costs** (decode, features, head, write) in one process, and the FLOPs of the
   diffusion features per tile, for a paper estimate of 1,000 slides of 100,000 x 80,000 px at
   20x on N GPU workers.

Usage::

    python scripts/bench_slide_batch.py [--sizes 25000 50000 100000] [--blocks 4] [--block 1024]
                                        [--backbone PATH|default] [--markdown BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

HEAD_MPP = 0.5
SECTION = "## Whole-slide batch (issue: batch)"


# --- heads -------------------------------------------------------------------------------------
def make_heads(tmp: Path, backbone: str | None) -> dict[str, tuple[Path, str]]:
    """Untrained heads at 0.5 µm/px: ``classic`` and ``diffusion`` -> (folder, description)."""
    from napari_pathsegdiff.models.backbone import (
        build_random_backbone,
        default_backbone_folder,
        load_backbone,
    )
    from napari_pathsegdiff.models.backbone_configs import get_config
    from napari_pathsegdiff.models.diffusion_features import DiffusionFeatures
    from napari_pathsegdiff.models.features import ClassicFeatures
    from napari_pathsegdiff.models.heads import new_head, save_head

    heads = {}
    classic = ClassicFeatures()
    heads["classic"] = (
        save_head(_head(new_head, classic), tmp / "head-classic"),
        f"classic (filter bank, {classic.channels[0]} channels, {classic.tile_size}-px tiles)",
    )
    if backbone is None and default_backbone_folder().is_dir():
        backbone = "default"
    if backbone is not None:
        loaded = load_backbone(backbone)
        label = f"diffusion, backbone {loaded.identity}"
    else:
        folder = build_random_backbone(get_config("small"), seed=0, name="random-small").save(
            tmp / "backbone-random-small"
        )
        loaded = load_backbone(folder)
        label = ("diffusion, RANDOM-WEIGHTS stand-in of the shipped 'small' architecture "
                 "(no default backbone installed; speed only)")
    diffusion = DiffusionFeatures(loaded)
    label += f", {diffusion.tile_size}-px tiles, timesteps {diffusion.timesteps}, blocks {diffusion.blocks}"
    heads["diffusion"] = (save_head(_head(new_head, diffusion), tmp / "head-diffusion"), label)
    return heads


def _head(new_head, extractor):
    return new_head(extractor, [0, 1], class_names=["background", "tissue"], mpp=HEAD_MPP)


# --- one run in a fresh process ----------------------------------------------------------------
def child_run(config: dict) -> dict:
    """Segment ``config['region']`` of a slide; peak RSS of the client and of each worker."""
    import logging

    from napari_pathsegdiff.engine.batch import block_worker
    from napari_pathsegdiff.engine.batch.slide_batch import segment_slides

    head, workers = config["head"], config["workers"]
    warm = dict(head_identity=block_worker.head_identity(head), device="cpu")
    client = cluster = None
    if workers:
        from distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               silence_logs=logging.ERROR, dashboard_address=None)
        client = Client(cluster, set_as_default=False)
        client.run(block_worker.worker_models, head, **warm)
    else:
        block_worker.worker_models(head, **warm)
    result = segment_slides(
        [config["slide"]], head=head, out=config["out"], block=config["block"], region=config["region"],
        tissue_only=True, device="cpu", scheduler=cluster.scheduler_address if cluster else None,
    )
    summary = result.summaries[0]
    if summary["status"] != "ok":
        raise RuntimeError(summary["reason"])
    worker_rss = []
    if client is not None:
        worker_rss = sorted(client.run(_peak_rss_mb).values())
        client.close()
        cluster.close()
    return {
        "summary": summary,
        "client_rss_mb": _peak_rss_mb(),
        "worker_rss_mb": worker_rss,
    }


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def run_in_child(mode: str, config: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, f"--{mode}", json.dumps(config)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- per-block costs -----------------------------------------------------------------------------
def child_split(config: dict) -> dict:
    """Seconds per block of decode, features, head and write; FLOPs per tile of features + head."""
    import torch
    import zarr
    from torch.utils.flop_counter import FlopCounterMode

    from napari_pathsegdiff.core.region import Region
    from napari_pathsegdiff.core.slide import open_slide
    from napari_pathsegdiff.engine.batch import block_worker
    from napari_pathsegdiff.engine.batch.block_plan import plan_blocks
    from napari_pathsegdiff.engine.inference.tile_features import prediction_grid, prediction_tiles

    head_dir = config["head"]
    head, extractor = block_worker.worker_models(
        head_dir, head_identity=block_worker.head_identity(head_dir), device="cpu")
    slide = open_slide(config["slide"])
    level = slide.best_level_for_mpp(HEAD_MPP)
    y, x, h, w = config["region"]
    blocks = plan_blocks(slide.levels[level].shape[:2], level=level, block=config["block"],
                         within=Region(level, y, x, h, w))[: config["n"]]
    slide.read_region(blocks[-1].region)  # warm the file and the decoder
    grid = prediction_grid(extractor, 1.0)
    store = zarr.create_array(store=str(Path(config["out"]) / "split.zarr"), shape=slide.levels[level].shape[:2],
                              chunks=(config["block"],) * 2, dtype="uint8", fill_value=0)
    times = {"decode": 0.0, "features": 0.0, "head": 0.0, "write": 0.0}
    cpu = {"decode": 0.0, "write": 0.0}  # CPU seconds of the single-threaded steps
    tiles_done = 0
    rng = np.random.default_rng(0)
    for block in blocks:
        _, tiles = prediction_tiles(grid, slide, block.region)
        t0, c0 = time.perf_counter(), time.process_time()  # as a block task: one window, tiles from memory
        window = block_worker.tile_window(grid, slide, block.region)
        source = block_worker.WindowedSlide(slide, window, slide.read_region(window))
        pixels = np.stack([grid.read_tile(source, level, t) for t in tiles])
        times["decode"] += time.perf_counter() - t0
        cpu["decode"] += time.process_time() - c0
        for start in range(0, len(tiles), 4):
            t0 = time.perf_counter()
            maps = extractor.extract(pixels[start : start + 4])
            times["features"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            with torch.inference_mode():
                head([torch.from_numpy(m) for m in maps]).argmax(1)
            times["head"] += time.perf_counter() - t0
        tiles_done += len(tiles)
        labels = rng.integers(0, 2, block.region.shape, dtype=np.uint8)
        t0, c0 = time.perf_counter(), time.process_time()
        store[block.region.slices] = labels
        times["write"] += time.perf_counter() - t0
        cpu["write"] += time.process_time() - c0
    flops = {}
    one = pixels[:1]
    if extractor.kind == "diffusion":
        with FlopCounterMode(display=False) as counter:
            maps = extractor.extract(one)
        flops["features_per_tile"] = counter.get_total_flops()
    else:
        maps = extractor.extract(one)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        head([torch.from_numpy(m) for m in maps])
    flops["head_per_tile"] = counter.get_total_flops()
    n = len(blocks)
    return {
        "blocks": n, "block_px": max(config["block"] ** 2, tiles_done / n * grid.tile**2),
        "tiles_per_block": tiles_done / n,
        "tile": grid.tile, "outer": grid.outer_size,
        "seconds_per_block": {k: v / n for k, v in times.items()},
        "cpu_seconds_per_block": {k: v / n for k, v in cpu.items()},
        "flops": flops, "torch_threads": torch.get_num_threads(),
    }


# --- the paper estimate ----------------------------------------------------------------------------
SLIDES, SLIDE_H, SLIDE_W = 1000, 80_000, 100_000
COMPUTED_SHARE = 0.5  # share of a slide's blocks that hold tissue (--tissue-only)
GPU_SUSTAINED_FLOPS = 50e12  # bf16 convolutions of a small UNet on an H100-class GPU, batched
CPU_THREADS_PER_GPU = 8  # decode/write threads per GPU worker (threads_per_worker)


def estimate(split: dict, outputs_s_per_gpx: float, file_bytes_per_px: float) -> dict:
    """Wall time of SLIDES slides on N GPU workers from the measured per-block costs."""
    mp_per_block = split["block_px"] / 1e6
    per_mp = {k: v / mp_per_block for k, v in split["seconds_per_block"].items()}
    per_mp.update({k: v / mp_per_block for k, v in split["cpu_seconds_per_block"].items()})
    tiles_per_mp = split["tiles_per_block"] / mp_per_block
    gpu_s_per_mp = (split["flops"]["features_per_tile"] + split["flops"]["head_per_tile"]) * tiles_per_mp / GPU_SUSTAINED_FLOPS
    cpu_s_per_mp = per_mp["decode"] + per_mp["write"]
    computed_mp = SLIDES * SLIDE_H * SLIDE_W * COMPUTED_SHARE / 1e6
    serial = 1.0 / (cpu_s_per_mp + gpu_s_per_mp)  # MP/s of a worker with one thread
    overlapped = min(CPU_THREADS_PER_GPU / cpu_s_per_mp, 1.0 / gpu_s_per_mp)
    outputs_h = SLIDES * (SLIDE_H * SLIDE_W / 1e9) * outputs_s_per_gpx / 3600
    read_tb = SLIDES * SLIDE_H * SLIDE_W * COMPUTED_SHARE * file_bytes_per_px / 1e12
    rows = []
    for n in (1, 4, 16, 64):
        hours = computed_mp / (n * overlapped) / 3600
        rows.append({
            "workers": n,
            "hours_one_thread": computed_mp / (n * serial) / 3600,
            "hours_overlapped": hours,
            "hours_with_outputs": max(hours, outputs_h),  # outputs overlap the next slide's blocks
            "read_gb_per_s_needed": read_tb * 1e3 / (hours * 3600),
        })
    return {"per_mp": per_mp, "gpu_s_per_mp": gpu_s_per_mp, "cpu_s_per_mp": cpu_s_per_mp,
            "computed_mp": computed_mp, "serial_mp_s": serial, "overlapped_mp_s": overlapped,
            "outputs_hours_serial": outputs_h, "read_tb": read_tb, "rows": rows}


# --- main ----------------------------------------------------------------------------------------
def central_region(size: int, block: int, n_blocks: int) -> tuple[int, int, int, int]:
    """``n_blocks`` whole blocks (2 rows) at the centre of the analysis level (level 1)."""
    side = math.ceil(size / 2)
    cols = max(1, n_blocks // 2)
    rows = max(1, n_blocks // cols)
    y = (side // 2 // block) * block
    x = (side // 2 // block - cols // 2) * block
    return (y, x, rows * block, cols * block)


def tissue_mp_per_s(summary: dict) -> tuple[float, float]:
    blocks_mp = summary["blocks"]["computed"] * summary["block"] ** 2 / 1e6
    tissue_mp = summary["tissue"]["pixels_in_planned_blocks"] / 1e6
    seconds = summary["seconds"]["blocks"]
    return tissue_mp / seconds, blocks_mp / seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[25_000, 50_000, 100_000])
    parser.add_argument("--blocks", type=int, default=4, help="blocks computed per run")
    parser.add_argument("--block", type=int, default=1024, help="block side (px of the analysis level)")
    parser.add_argument("--backbone", help="diffusion backbone (default: installed default, else random)")
    parser.add_argument("--markdown", type=Path, help="write the section into this Markdown file")
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--split", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:
        print(json.dumps(child_run(json.loads(args.run))))
        return 0
    if args.split:
        print(json.dumps(child_split(json.loads(args.split))))
        return 0

    from bench_slide_open import write_synthetic_slide

    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pathsegdiff-batch-bench-") as tmp:
        tmp = Path(tmp)
        heads = make_heads(tmp, args.backbone)
        slides = {}
        for size in sorted(args.sizes):
            path = tmp / f"synthetic-{size}.tif"
            t0 = time.perf_counter()
            write_synthetic_slide(path, size)
            slides[size] = path
            print(f"wrote {size:,} px slide ({path.stat().st_size / 2**30:.2f} GiB) in "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)

        def run(size, kind, workers, tag):
            config = {"slide": str(slides[size]), "head": str(heads[kind][0]), "workers": workers,
                      "block": args.block, "region": central_region(size, args.block, args.blocks),
                      "out": str(tmp / f"out-{tag}")}
            result = run_in_child("run", config)
            print(f"  {tag}: {json.dumps({k: v for k, v in result.items() if k != 'summary'})}", flush=True)
            return result

        memory = {size: run(size, "classic", 2, f"mem-{size}") for size in sorted(args.sizes)}
        smallest = min(args.sizes)
        speed = {}
        for kind in ("classic", "diffusion"):
            for workers in (1, 2):
                if kind == "classic" and workers == 2:
                    speed[kind, workers] = memory[smallest]
                else:
                    speed[kind, workers] = run(smallest, kind, workers, f"{kind}-{workers}w")
        region = central_region(smallest, args.block, args.blocks)
        split = {kind: run_in_child("split", {"slide": str(slides[smallest]), "head": str(heads[kind][0]),
                                              "block": args.block, "region": region, "n": 2,
                                              "out": str(tmp / f"split-{kind}")})
                 for kind in ("classic", "diffusion")}
        largest = max(args.sizes)
        big = memory[largest]["summary"]
        analysis_gpx = big["level_shape"][0] * big["level_shape"][1] / 1e9
        outputs_s_per_gpx = big["seconds"]["outputs"] / analysis_gpx
        file_bytes_per_px = slides[largest].stat().st_size / (largest * largest * 4 / 3)

    # --- report ------------------------------------------------------------------------------
    load = os.getloadavg()
    say(SECTION)
    say()
    say(f"Command: `python scripts/bench_slide_batch.py --sizes {' '.join(map(str, sorted(args.sizes)))} "
        f"--blocks {args.blocks} --block {args.block}"
        + (f" --backbone {args.backbone}" if args.backbone else "") + "`  ")
    say(f"Machine: {os.cpu_count()}-core CPU, no GPU ({platform.processor() or platform.machine()}; load "
        f"average {load[0]:.1f} at the end); date {date.today()}; "
        f"{(time.perf_counter() - started) / 60:.0f} min in all.")
    say()
    say("Synthetic slides: 0.25 µm/px pyramidal TIFFs of real H&E tiles (bench_slide_open.py); the "
        "analysis level is level 1 (0.5 µm/px, the heads' µm/px). Each run computes only "
        f"{args.blocks} blocks of {args.block} px at the centre of the tissue (`region`), with "
        "`--tissue-only`; tissue detection, the block plan, the label array and every output "
        "(OME-Zarr pyramid, GeoJSON) cover the whole slide.")
    say()
    say("### Peak memory as the slide grows (classic features, local cluster of 2 workers)")
    say()
    say("| slide (px) | analysis level (px) | blocks in plan | client peak RSS (MB) | worker peak RSS (MB) | outputs (s) |")
    say("|---|---|---|---|---|---|")
    for size in sorted(args.sizes):
        r = memory[size]
        s = r["summary"]
        say(f"| {size:,} x {size:,} | {s['level_shape'][0]:,} x {s['level_shape'][1]:,} | "
            f"{s['blocks']['total']:,} ({s['blocks']['computed']} computed) | {r['client_rss_mb']:.0f} | "
            f"{' / '.join(f'{v:.0f}' for v in r['worker_rss_mb'])} | {s['seconds']['outputs']:.1f} |")
    low, high = memory[min(args.sizes)], memory[max(args.sizes)]
    say()
    say(f"From the smallest to the largest slide ({(max(args.sizes) / min(args.sizes)) ** 2:.0f}x the "
        f"pixels) the client grows by {high['client_rss_mb'] - low['client_rss_mb']:+.0f} MB and the "
        f"workers by {max(high['worker_rss_mb']) - max(low['worker_rss_mb']):+.0f} MB. The client "
        "process also runs the local cluster's scheduler; it holds the block plan and the dask "
        "graphs of the outputs, which grow with the number of chunks, never the pixels.")
    say()
    say(f"### Throughput on the {smallest:,} px slide (tissue megapixels per second of the block phase)")
    say()
    say("| features | workers | tissue MP/s | block MP/s | block phase (s) | mean s per block |")
    say("|---|---|---|---|---|---|")
    for (kind, workers), r in speed.items():
        s = r["summary"]
        tissue, blocks = tissue_mp_per_s(s)
        say(f"| {kind} | {workers} | {tissue:.3f} | {blocks:.3f} | {s['seconds']['blocks']:.1f} | "
            f"{s['seconds'].get('per_block_mean', float('nan')):.1f} |")
    say()
    for kind, (_, label) in heads.items():
        say(f"- {kind}: {label}.")
    if load[0] > (os.cpu_count() or 1):
        say(f"- The CPU was shared with other jobs (load average {load[0]:.1f} on "
            f"{os.cpu_count()} cores): these figures are lower bounds, and a second worker "
            "process could not run in parallel with the first, so the 1 vs 2 worker figures "
            "do not show the scaling of an idle machine. Use the per-block CPU costs below.")
    say()
    say(f"### Per-block costs ({args.block} x {args.block} px block, one process, "
        f"{split['classic']['torch_threads']} torch threads)")
    say()
    say("| features | tiles per block | decode (s wall / CPU) | features (s) | head (s) | write (s wall / CPU) | features GFLOP per tile |")
    say("|---|---|---|---|---|---|---|")
    for kind, r in split.items():
        c, cpu = r["seconds_per_block"], r["cpu_seconds_per_block"]
        gflop = r["flops"].get("features_per_tile")
        say(f"| {kind} | {r['tiles_per_block']:.0f} ({r['outer']} px read each) | {c['decode']:.3f} / "
            f"{cpu['decode']:.3f} | {c['features']:.2f} | {c['head']:.3f} | {c['write']:.4f} / "
            f"{cpu['write']:.4f} | {f'{gflop / 1e9:.1f}' if gflop else '(CPU filter bank)'} |")
    say()
    est = estimate(split["diffusion"], outputs_s_per_gpx, file_bytes_per_px)
    say(f"### Paper estimate: {SLIDES:,} slides of {SLIDE_W:,} x {SLIDE_H:,} px at 20x, diffusion features on N GPU workers")
    say()
    say(f"Assumptions: {COMPUTED_SHARE:.0%} of blocks hold tissue ({est['computed_mp'] / 1e6:.1f} TP computed); "
        f"features + head at {GPU_SUSTAINED_FLOPS / 1e12:.0f} TFLOP/s sustained on one GPU (bf16, "
        f"batched; an assumption: FLOPs counted above with torch's FlopCounterMode); decode and "
        f"write cost per core the CPU time they take here ({est['per_mp']['decode']:.3f} + "
        f"{est['per_mp']['write']:.4f} s per MP, process time, so not inflated by the shared CPU); "
        f"in the overlapped case a GPU worker runs {CPU_THREADS_PER_GPU} block threads.")
    say()
    say("| GPU workers | hours, 1 thread per worker (decode, GPU, write in turn) | hours, decode overlapped | hours, with the client's outputs | slide reads needed (GB/s) |")
    say("|---|---|---|---|---|")
    for row in est["rows"]:
        say(f"| {row['workers']} | {row['hours_one_thread']:.1f} | {row['hours_overlapped']:.1f} | "
            f"{row['hours_with_outputs']:.1f} | {row['read_gb_per_s_needed']:.2f} |")
    say()
    cpu_ms, gpu_ms = est["cpu_s_per_mp"] * 1e3, est["gpu_s_per_mp"] * 1e3
    one = "CPU decode + write" if cpu_ms > gpu_ms else "the GPU (features + head)"
    many = ("the GPU (features + head)" if CPU_THREADS_PER_GPU / est["cpu_s_per_mp"] > 1 / est["gpu_s_per_mp"]
            else "CPU decode + write")
    say(f"Per computed MP: GPU {gpu_ms:.1f} ms, CPU decode + write {cpu_ms:.1f} ms per core. "
        f"What limits it: with one thread per worker, {one} ({max(cpu_ms, gpu_ms) / (cpu_ms + gpu_ms):.0%} "
        f"of a block's time), as decode and GPU take turns; with {CPU_THREADS_PER_GPU} threads per "
        f"worker (`dask worker --nthreads {CPU_THREADS_PER_GPU}`) decode overlaps the GPU and "
        f"{many} bounds a worker. Reading {est['read_tb']:.1f} TB of compressed tiles "
        f"({file_bytes_per_px:.2f} B/px here) needs the storage bandwidth of the last column. "
        f"The client writes each slide's OME-Zarr pyramid and GeoJSON in a background thread "
        f"while the next slide's blocks run: {outputs_s_per_gpx:.0f} s per gigapixel of labels "
        f"here (wall time on the shared CPU, labels mostly empty), {est['outputs_hours_serial']:.1f} h "
        "for the batch, hidden behind the "
        "blocks until the cluster computes a slide faster than the client writes one; beyond "
        "that (the fourth column) the client's outputs are the limit, and a batch is best split "
        "over several clients sharing the cluster.")
    if args.markdown:
        write_section(args.markdown, lines)
        print(f"wrote the section into {args.markdown}")
    return 0


def write_section(path: Path, lines: list[str]) -> None:
    """Replace this benchmark's section in ``path`` (or append it); other sections stay."""
    text = path.read_text() if path.exists() else ""
    section = "\n".join(lines).rstrip() + "\n"
    if SECTION in text:
        start = text.index(SECTION)
        end = text.find("\n## ", start + len(SECTION))
        text = text[:start] + section + (text[end + 1 :] if end != -1 else "")
    else:
        text = text.rstrip() + ("\n\n" if text.strip() else "") + section
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
