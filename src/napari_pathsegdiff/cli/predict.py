"""``pathsegdiff predict``: segment image files, or a region of a slide, with a trained head."""

from __future__ import annotations

import argparse
from pathlib import Path

from .train import add_feature_options


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="segment images (or a region of a slide) with a trained head",
        description=(
            "Write OUT/<name>.png for every INPUT: uint8 class ids in the id space of the "
            "training masks. INPUTs are image files (PNG, JPEG, TIFF), or slides with --region."
        ),
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, or slides with --region")
    parser.add_argument("--head", required=True, metavar="HEAD_DIR", help="a head folder written by train")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--mpp", type=float, metavar="X",
                        help="µm/px of the inputs (of level 0 for slides) when the files do not say")
    parser.add_argument("--region", nargs=4, type=int, metavar=("Y", "X", "H", "W"),
                        help="predict this region of each slide (pixels of --level)")
    parser.add_argument("--level", type=int, default=None, metavar="L",
                        help="pyramid level of --region (default 0)")
    parser.add_argument("--batch-size", type=int, default=4, metavar="N", help="tiles per batch")
    parser.add_argument("--tta", default="auto", choices=("auto", "1", "2", "4", "8"),
                        help="test-time augmentation: mean over 1, 2, 4 or 8 flips/rotations of every tile, "
                             "each costing one more feature extraction (default auto: 8 for a forest head, "
                             "whose trees never saw rotated tiles; 1 for an FCN, trained on them)")
    add_feature_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..core.images import IMAGE_SUFFIXES, file_stem, read_rgb, write_labels
    from ..core.progress import drive
    from ..core.region import Region
    from ..engine.inference.predict import predict_region
    from ..models.features import feature_kind
    from ..models.heads import load_head, load_head_and_extractor
    from . import UserError
    from . import set_threads

    set_threads(args.threads)

    if args.level is not None and args.region is None:
        raise UserError("--level needs --region Y X H W.")
    head = load_head(args.head)
    kind = feature_kind(head.feature_config)
    if args.features and args.features != kind:
        raise UserError(f"Head {args.head} needs {kind} features, not {args.features}.")
    try:
        head, extractor = load_head_and_extractor(args.head, backbone=args.backbone, device=args.device)
    except ValueError as exc:
        if not args.backbone:
            raise
        raise UserError(f"--backbone: head {args.head}: {exc}") from None

    tta = head.default_tta if args.tta == "auto" else int(args.tta)
    paths = [Path(p) for p in args.inputs]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"Input {p} does not exist.")
        if args.region is None and p.suffix.lower() not in IMAGE_SUFFIXES:
            raise UserError(
                f"{p} is not an image file (PNG, JPEG, TIFF): for a slide give --region Y X H W "
                f"[--level L]."
            )
    out = Path(args.out)
    for p in paths:
        if args.region is not None:
            from ..core.slide import open_slide

            slide = open_slide(p)
            y, x, h, w = args.region
            region = Region(args.level or 0, y, x, h, w)
            level_shape = slide.levels[region.level].shape[:2] if region.level < len(slide.levels) else None
            if level_shape is None:
                raise UserError(f"{p} has levels 0..{len(slide.levels) - 1}; --level {region.level} does not exist.")
            if region.y < 0 or region.x < 0 or region.y1 > level_shape[0] or region.x1 > level_shape[1]:
                raise UserError(
                    f"--region {y} {x} {h} {w} extends outside level {region.level} of {p}, which is "
                    f"{level_shape[0]}x{level_shape[1]} pixels (height x width)."
                )
            source = slide
        else:
            source, region = read_rgb(p), None
        try:
            pred = drive(predict_region(source, region, head=head, extractor=extractor,
                                        mpp=args.mpp, batch_size=args.batch_size, tta=tta))
        finally:
            if region is not None:
                source.close()
        target = write_labels(out / f"{file_stem(p)}.png", pred.labels)
        notes = pred.notes + ([f"mean of {tta} flips/rotations of every tile"] if tta > 1 else [])
        notes = f" ({'; '.join(notes)})" if notes else ""
        print(f"{p.name}: {pred.labels.shape[0]}x{pred.labels.shape[1]} -> {target}{notes}")
    return 0
