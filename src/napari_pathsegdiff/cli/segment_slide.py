"""``pathsegdiff segment-slide``: segment whole slides in batch, on this machine or a dask cluster."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "segment-slide",
        help="segment whole slides with a trained head (dask threads, or a dask cluster)",
        description=(
            "Segment every SLIDE with the head in HEAD_DIR at the pyramid level matching the "
            "head's µm/px. Per slide, OUT/<name>/ gets labels.ome.zarr (multiscale labels with "
            "class names and colours), classes.geojson (polygons in level-0 pixels), "
            "summary.json (class areas in mm², tissue area, blocks, time) and with --ome-tiff "
            "labels.ome.tif; OUT/batch_summary.json lists every slide's status. Runs on dask "
            "threads by default, on a local cluster with --workers N, or on an existing dask "
            "cluster with --scheduler ADDRESS (slides, head and OUT must then be on storage the "
            "workers see under the same paths). Exit status 1 when a slide failed."
        ),
    )
    parser.add_argument("slides", nargs="+", metavar="SLIDE",
                        help="slide files (.svs, .tif, ...), or a project (its project.json or folder): "
                             "all its slides")
    parser.add_argument("--head", metavar="HEAD_DIR",
                        help="a head folder written by train (default with a project: the project's head)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="address of a running dask scheduler, e.g. tcp://host:8786")
    where.add_argument("--workers", type=int, metavar="N",
                       help="start a local dask cluster of N worker processes")
    where.add_argument("--threads", type=int, metavar="N",
                       help="blocks computed at once on this machine (default: one per core); "
                            "each block uses one torch thread, so results are the same for any N")
    parser.add_argument("--tissue-only", action="store_true",
                        help="compute only blocks with tissue (found on a low-resolution level)")
    parser.add_argument("--level", default="auto", metavar="auto|N",
                        help="analysis level (default auto: the level matching the head's µm/px)")
    parser.add_argument("--mpp", type=float, metavar="X",
                        help="level-0 µm/px of the slides, when the files do not say")
    parser.add_argument("--resume", action="store_true",
                        help="keep the blocks an interrupted run with the same settings finished")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--block", type=int, default=2048, metavar="PX",
                        help="block side in pixels of the analysis level (default 2048; smaller "
                             "blocks resume at a finer grain but compute more tiles twice)")
    parser.add_argument("--batch-size", type=int, default=4, metavar="N", help="tiles per batch (default 4)")
    parser.add_argument("--ome-tiff", action="store_true", help="also write labels.ome.tif")
    parser.add_argument("--backbone", metavar="default|PATH",
                        help="diffusion backbone replacing the one recorded in the head")
    parser.add_argument("--region", nargs=4, type=int, metavar=("Y", "X", "H", "W"),
                        help="only the blocks overlapping this box of the analysis level")
    parser.add_argument("--max-pixels", type=float, default=None, metavar="N",
                        help="refuse slides whose level 0 claims more pixels (default 2**36, about "
                             "6.9e10: damaged files and decompression bombs); raise it for a "
                             "genuine giant, e.g. 2e11")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..engine.batch.slide_batch import segment_slides
    from . import UserError

    level = None
    if str(args.level).lower() != "auto":
        try:
            level = int(args.level)
        except ValueError:
            raise UserError(f"--level must be 'auto' or a level number, got {args.level!r}.") from None

    max_pixels = {}
    if args.max_pixels is not None:
        if not args.max_pixels >= 1:
            raise UserError(f"--max-pixels must be a positive number of pixels, got {args.max_pixels:g}.")
        max_pixels["max_pixels"] = int(args.max_pixels)

    def show(record) -> None:
        if not args.quiet and record.message:
            print(record.message, flush=True)

    slides, head = expand_projects(args.slides, args.head)
    result = segment_slides(
        slides, head=head, out=args.out, level=level, mpp=args.mpp,
        tissue_only=args.tissue_only, resume=args.resume, device=args.device, block=args.block,
        batch_size=args.batch_size, ome_tiff=args.ome_tiff, backbone=args.backbone,
        region=args.region, scheduler=args.scheduler, workers=args.workers, threads=args.threads,
        show_progress=not args.quiet, callback=show, **max_pixels,
    )
    n = len(result.summaries)
    print(f"{n - len(result.failed)} of {n} slides segmented in {result.seconds:.1f} s; "
          f"summary: {result.path}")
    for s in result.failed:
        print(f"FAILED {s['slide']}: {s['reason']}")
    return 0 if result.ok else 1


def expand_projects(items, head):
    """Slide files of ``items`` (a project stands for its slides) and the head to use (``head``,
    else the one project's head)."""
    from pathlib import Path

    from ..engine.session.project import PROJECT_FILE, read_project
    from . import UserError

    slides, project_heads = [], []
    for item in items:
        path = Path(item)
        if path.name == PROJECT_FILE or (path.is_dir() and (path / PROJECT_FILE).is_file()):
            project = read_project(path)
            slides += [str(p) for p in project.slides]
            project_heads.append(project.head)
        else:
            slides.append(str(item))
    if head is None:
        if len(project_heads) != 1:
            raise UserError("Give --head HEAD_DIR (a head folder written by train, or a project's head).")
        head = project_heads[0]
        if not Path(head).is_dir():
            raise UserError(f"The project's head {head} does not exist yet: train it first "
                            "(Train on my edits, or pathsegdiff train --slides), or give --head.")
    duplicates = sorted({s for s in slides if slides.count(s) > 1})
    if duplicates:
        raise UserError(f"These slides are given twice: {duplicates}.")
    return slides, str(head)
