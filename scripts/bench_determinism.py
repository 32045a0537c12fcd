"""Benchmark: what identical results whatever the layout cost (``pathsegdiff segment-slide``).

Every block is predicted with one torch thread (``BLOCK_TORCH_THREADS``), so a block gives the
same labels on dask threads and on a cluster. Before, a block ran with the process's torch
thread count (every core in a threads run, one in a cluster worker), and floating-point sums
split differently flipped near-tied pixels. This script segments the same box of the bundled
sample slide with the shipped demo head (default backbone) three ways and prints the seconds
of the block phase and the pixels that differ from the deterministic threads run:

1. threads, ``--threads T``, each block with ``T`` torch threads (the former behaviour);
2. threads, ``--threads T``, each block with one torch thread (now);
3. a local cluster of ``T`` workers of one thread (``--workers T``).

The models are loaded before timing (a warm-up run of one block per thread or worker), so the
figures are the block phase of ``--blocks`` blocks of ``--block`` px.

Usage::

    python scripts/bench_determinism.py [--threads 2] [--block 512] [--blocks 4]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np


def _run(sample, head, out, *, block, region, threads=None, workers=None, scheduler=None):
    from napari_pathsegdiff.engine.batch.slide_batch import segment_slides

    result = segment_slides([sample], head=head, out=out, block=block, region=region,
                            threads=threads, workers=workers, scheduler=scheduler)
    summary = result.summaries[0]
    if summary["status"] != "ok":
        raise SystemExit(f"run failed: {summary['reason']}")
    from napari_pathsegdiff.core.ome_writer import read_labels_ome_zarr

    labels, _ = read_labels_ome_zarr(Path(out) / summary["name"] / "labels.ome.zarr")
    return np.asarray(labels), summary["seconds"]["blocks"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--block", type=int, default=512)
    parser.add_argument("--blocks", type=int, default=4, help="blocks in a row of the box")
    args = parser.parse_args()

    from napari_pathsegdiff._sample_data import sample_slide_path
    from napari_pathsegdiff.engine.batch import block_worker
    from napari_pathsegdiff.engine.batch.dask_runner import BlockRunner
    from napari_pathsegdiff.engine.shipped_models import demo_head_folder

    sample, head = sample_slide_path(), demo_head_folder()
    region = (512, 0, args.block, args.block * args.blocks)
    warm = (0, 0, args.block, args.block * args.threads)  # one block per worker loads its model
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, per_block in (("threads, torch threads per block = T (before)", args.threads),
                                ("threads, one torch thread per block (now)", 1)):
            block_worker.BLOCK_TORCH_THREADS = per_block
            _run(sample, head, tmp / f"warm-{per_block}", block=args.block, region=warm, threads=args.threads)
            labels, seconds = _run(sample, head, tmp / f"run-{per_block}", block=args.block, region=region,
                                   threads=args.threads)
            rows.append((name, labels, seconds))
        block_worker.BLOCK_TORCH_THREADS = 1
        with BlockRunner(workers=args.threads) as cluster:
            address = cluster.client.scheduler.address
            _run(sample, head, tmp / "warm-cluster", block=args.block, region=warm, scheduler=address)
            labels, seconds = _run(sample, head, tmp / "cluster", block=args.block, region=region,
                                   scheduler=address)
            rows.append((f"local cluster, {args.threads} workers of one thread", labels, seconds))
    reference = rows[1][1]
    box = reference[region[0]:region[0] + region[2], region[1]:region[1] + region[3]]
    print(f"{date.today()}  {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f}), "
          f"T = {args.threads}, {args.blocks} blocks of {args.block} px ({box.size:,} px), demo "
          "head, default backbone")
    print("| layout | block phase (s) | pixels differing from 'now' |")
    print("|---|---|---|")
    for name, labels, seconds in rows:
        print(f"| {name} | {seconds:.1f} | {int((labels != reference).sum()):,} |")
    print(json.dumps({"per_block_seconds": {name: round(s / args.blocks, 2) for name, _, s in rows}}))


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - t0:.0f} s")
