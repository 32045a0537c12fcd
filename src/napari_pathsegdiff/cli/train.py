"""``pathsegdiff train``: train a segmentation head on images and same-named masks."""

from __future__ import annotations

import argparse
import time


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a segmentation head on images and masks",
        description=(
            "Train a segmentation head on RGB images (PNG, JPEG, TIFF) and same-named "
            "single-channel masks whose values are class ids. The head is written to --out "
            "(config.json, safetensors weights, training.json)."
        ),
    )
    parser.add_argument("--images", required=True, metavar="DIR", help="folder of RGB images")
    parser.add_argument("--masks", required=True, metavar="DIR", help="folder of same-named masks")
    parser.add_argument("--out", required=True, metavar="HEAD_DIR", help="folder to write the head to")
    add_feature_options(parser)
    parser.add_argument("--init", metavar="HEAD_DIR",
                        help="fine-tune this head (its classes and features) instead of a new one")
    parser.add_argument("--unlabelled", type=int, metavar="V",
                        help="mask value of pixels that are not labelled (ignored in training)")
    parser.add_argument("--mpp", type=float, metavar="X", help="µm/px of the images")
    parser.add_argument("--class-names", nargs="+", metavar="NAME",
                        help="class names in the order of increasing class id")
    parser.add_argument("--synthetic", metavar="DIR",
                        help="also train on generated pairs (DIR/images, DIR/masks from `pathsegdiff generate`)")
    parser.add_argument("--synthetic-weight", type=float, default=0.5, metavar="W",
                        help="loss weight of the generated pairs' pixels (default 0.5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of everything random (default 0)")
    parser.add_argument("--steps", type=int, metavar="N", help="optimisation steps (default: automatic)")
    parser.add_argument("--lr", type=float, default=1e-2, help="learning rate (default 0.01)")
    parser.add_argument("--batch-size", type=int, default=32, metavar="N", help="windows per step")
    parser.add_argument("--val-fraction", type=float, default=0.1, metavar="F",
                        help="share of labelled windows held out for early stopping (default 0.1)")
    parser.add_argument("--patience", type=int, default=5, metavar="N",
                        help="validations without improvement before stopping (default 5)")
    parser.add_argument("--hidden", type=int, default=16, metavar="N", help="head width (default 16)")
    parser.add_argument("--depth", type=int, default=2, metavar="N",
                        help="3x3 convolutions of the head (default 2)")
    parser.set_defaults(func=run)


def add_feature_options(parser: argparse.ArgumentParser) -> None:
    """``--features``, ``--backbone``, ``--device`` (shared by train and predict)."""
    parser.add_argument("--features", type=_feature_kind, metavar="KIND",
                        help="diffusion, classic, rgb, or kinds fused with '+' such as diffusion+classic "
                             "(default: diffusion, or the --init head's)")
    parser.add_argument("--backbone", metavar="default|PATH|HUB_ID",
                        help="diffusion backbone: 'default', a folder or a cached hub id")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads for torch's feature extraction (default: torch's; 1 on a busy machine)")


def _feature_kind(text: str) -> str:
    from ..models.features import parse_feature_kind

    try:
        return parse_feature_kind(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    from ..core.images import check_same_shape, pair_images_and_masks, read_mask, read_rgb
    from ..core.progress import drive
    from ..engine.train_head import TrainSample, train_head
    from ..models.features import build_extractor, feature_kind, make_extractor, with_backbone
    from ..models.heads import load_head, save_head
    from . import UserError
    from . import set_threads

    set_threads(args.threads)

    pairs = pair_images_and_masks(args.images, args.masks)
    samples = []
    for image_path, mask_path in pairs:
        image, mask = read_rgb(image_path), read_mask(mask_path)
        check_same_shape(image, mask, image_path, mask_path)
        samples.append(TrainSample(image, mask, name=str(mask_path), mpp=args.mpp))
    synthetic = _synthetic_samples(args.synthetic, args.synthetic_weight) if args.synthetic else []
    samples += synthetic

    head = None
    if args.init:
        head = load_head(args.init)
        config = dict(head.config.feature_config)
        if args.features and args.features != feature_kind(config):
            raise UserError(
                f"--init head {args.init} was trained on {feature_kind(config)} features, "
                f"not {args.features}."
            )
        if args.backbone:
            try:
                config = with_backbone(config, args.backbone)
            except ValueError as exc:
                raise UserError(f"--backbone: head {args.init}: {exc}") from None
        extractor = build_extractor(config, device=args.device)
    else:
        if args.backbone and "diffusion" not in (args.features or "diffusion").split("+"):
            raise UserError(f"--backbone applies to diffusion features, not --features {args.features}.")
        extractor = make_extractor(args.features or "diffusion", backbone=args.backbone or "default",
                                   device=args.device)

    class_ids = None
    if args.class_names and head is None:
        ids = sorted({int(v) for s in samples for v in _unique(s.mask)} - {args.unlabelled})
        if len(ids) != len(args.class_names):
            raise UserError(
                f"--class-names gives {len(args.class_names)} names but the masks hold "
                f"{len(ids)} class ids {ids}."
            )
        class_ids = ids
    start = time.time()
    result = drive(train_head(
        samples,
        extractor=extractor,
        head=head,
        class_ids=class_ids,
        class_names=args.class_names if head is None else None,
        unlabelled=args.unlabelled,
        steps=args.steps,
        lr=args.lr,
        seed=args.seed,
        val_fraction=args.val_fraction,
        patience=args.patience,
        batch_size=args.batch_size,
        hidden=args.hidden,
        depth=args.depth,
    ))
    record = {
        "images": [p.name for p, _ in pairs],
        "synthetic": {"folder": str(args.synthetic), "pairs": len(synthetic), "weight": args.synthetic_weight}
        if synthetic else None,
        "masks": [m.name for _, m in pairs],
        "features": extractor.config(),
        "feature_identity": extractor.identity,
        "init": str(args.init) if args.init else None,
        "unlabelled": args.unlabelled,
        "mpp": args.mpp,
        "seed": args.seed,
        "options": {k: getattr(args, k) for k in ("steps", "lr", "batch_size", "val_fraction",
                                                  "patience", "hidden", "depth")},
        "result": result.summary(),
        "wall_seconds": round(time.time() - start, 2),
    }
    out = save_head(result.head, args.out, extra={"training.json": record})
    pixels = sum(result.class_pixels.values())
    print(
        f"Trained a head for classes {result.head.describe_classes()} on {len(pairs)} image(s), "
        + (f"{len(synthetic)} generated pair(s) (weight {args.synthetic_weight:g}), " if synthetic else "")
        + f"{pixels} labelled pixels, {result.steps} steps"
        + (" (stopped early)" if result.stopped_early else "")
        + f"; saved to {out}"
    )
    return 0


def _synthetic_samples(folder, weight: float) -> list:
    """Generated pairs of ``folder`` (``images/``, ``masks/``, ``generation.json``) as weighted samples."""
    from pathlib import Path

    from ..core.images import check_same_shape, pair_images_and_masks, read_mask, read_rgb
    from ..engine.generation import read_record
    from ..engine.train_head import TrainSample

    folder = Path(folder)
    if not (folder / "images").is_dir() or not (folder / "masks").is_dir():
        raise FileNotFoundError(
            f"--synthetic {folder}: expected the folders images/ and masks/ written by `pathsegdiff generate`."
        )
    if not weight >= 0:
        raise ValueError(f"--synthetic-weight must be 0 or more, got {weight}.")
    mpp = read_record(folder).get("mpp")
    out = []
    for image_path, mask_path in pair_images_and_masks(folder / "images", folder / "masks"):
        image, mask = read_rgb(image_path), read_mask(mask_path)
        check_same_shape(image, mask, image_path, mask_path)
        out.append(TrainSample(image, mask, name=str(mask_path), mpp=mpp, weight=float(weight)))
    return out


def _unique(mask):
    import numpy as np

    return np.unique(mask).tolist()
