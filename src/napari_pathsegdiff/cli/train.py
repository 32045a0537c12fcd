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
            "single-channel masks whose values are class ids, or on whole slides (--slides) "
            "with their QuPath GeoJSON annotations (--annotations, one per slide in the same "
            "order) or the edits painted on them in napari. The head is written to --out "
            "(config.json, safetensors weights, training.json)."
        ),
    )
    parser.add_argument("--images", metavar="DIR", help="folder of RGB images")
    parser.add_argument("--masks", metavar="DIR", help="folder of same-named masks")
    parser.add_argument("--slides", nargs="+", metavar="SLIDE",
                        help="whole slides to train on (instead of --images/--masks)")
    parser.add_argument("--annotations", nargs="+", metavar="GEOJSON",
                        help="QuPath GeoJSON of each slide, in the order of --slides (default: the "
                             "edits painted on each slide in napari)")
    parser.add_argument("--sample-pixels", type=int, default=1_000_000, metavar="N",
                        help="with --slides: labelled pixels trained on at most, shared between slides "
                             "(default 1000000)")
    parser.add_argument("--sample-windows", type=int, default=400, metavar="N",
                        help="with --slides: 512-px chunks of labels trained on at most (default 400)")
    parser.add_argument("--out", required=True, metavar="HEAD_DIR", help="folder to write the head to")
    add_feature_options(parser, auto=True)
    parser.add_argument("--head", dest="head_kind", type=_head_kind, metavar="KIND",
                        help=f"{'|'.join(('auto',) + _head_kinds())}: the head (default auto: chosen with "
                             "the features by cross-validation on your images)")
    parser.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                        help="time for auto's cross-validation (default 900)")
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


def add_feature_options(parser: argparse.ArgumentParser, *, auto: bool = False) -> None:
    """``--features``, ``--backbone``, ``--device``, ``--threads`` (shared by train and predict).

    The feature choices are the registry's (:func:`~napari_pathsegdiff.models.features.registered_kinds`).
    """
    from ..models.features import registered_kinds

    kinds = ("auto",) * auto + registered_kinds()
    parser.add_argument("--features", type=_feature_kind_or_auto if auto else _feature_kind, metavar="KIND",
                        help=f"{'|'.join(kinds)}, or kinds joined with '+' such as diffusion+classic "
                             + ("(default auto, or the --init head's)" if auto else "(default: the head's)"))
    parser.add_argument("--backbone", metavar="default|PATH|HUB_ID",
                        help="diffusion backbone: 'default', a folder or a cached hub id")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads for torch's feature extraction (default: torch's; 1 on a busy machine)")


def _feature_kind_or_auto(text: str) -> str:
    return "auto" if text == "auto" else _feature_kind(text)


def _head_kinds() -> tuple[str, ...]:
    from ..models.heads import head_kinds

    return head_kinds()


def _head_kind(text: str) -> str:
    if text != "auto" and text not in _head_kinds():
        raise argparse.ArgumentTypeError(f"Unknown head {text!r}: use one of {', '.join(('auto',) + _head_kinds())}.")
    return text


def _feature_kind(text: str) -> str:
    from ..models.features import parse_feature_kind

    try:
        return parse_feature_kind(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    from ..core.images import check_same_shape, pair_images_and_masks, read_mask, read_rgb
    from ..core.progress import drive
    from ..engine.training.train_head import TrainSample, train_head
    from ..models.features import feature_kind
    from ..models.heads import save_head
    from . import UserError
    from . import set_threads

    set_threads(args.threads)
    if args.slides:
        from ._train_slides import run_slides

        return run_slides(args)
    if args.annotations:
        raise UserError("--annotations goes with --slides (one GeoJSON per slide).")
    if not (args.images and args.masks):
        raise UserError("Give --images and --masks (a folder of images and one of same-named masks), "
                        "or --slides.")

    pairs = pair_images_and_masks(args.images, args.masks)
    samples = []
    for image_path, mask_path in pairs:
        image, mask = read_rgb(image_path), read_mask(mask_path)
        check_same_shape(image, mask, image_path, mask_path)
        samples.append(TrainSample(image, mask, name=str(mask_path), mpp=args.mpp))
    synthetic = _synthetic_samples(args.synthetic, args.synthetic_weight) if args.synthetic else []
    samples += synthetic

    class_ids = None
    if args.class_names and not args.init:
        ids = sorted({int(v) for s in samples for v in _unique(s.mask)} - {args.unlabelled})
        if len(ids) != len(args.class_names):
            raise UserError(
                f"--class-names gives {len(args.class_names)} names but the masks hold "
                f"{len(ids)} class ids {ids}."
            )
        class_ids = ids
    start = time.time()
    common = {"class_ids": class_ids, "class_names": args.class_names if not args.init else None,
              "unlabelled": args.unlabelled, "seed": args.seed}
    if args.init:
        (result, extractor), auto = _fine_tune(args, samples, common), None
    elif "auto" in (args.features or "auto", args.head_kind or "auto"):
        auto = _auto(args, samples, common)
        result, extractor = auto.result, auto.extractor
    else:
        extractor = _extractor(args, args.features)
        options = _head_options(args.head_kind, _fcn_options(args))
        result, auto = drive(train_head(samples, extractor=extractor, head_kind=args.head_kind, **common, **options)), None
    record = {
        "images": [p.name for p, _ in pairs],
        "synthetic": {"folder": str(args.synthetic), "pairs": len(synthetic), "weight": args.synthetic_weight}
        if synthetic else None,
        "masks": [m.name for _, m in pairs],
        "head": result.head.head_kind,
        "features": extractor.config(),
        "feature_identity": extractor.identity,
        "init": str(args.init) if args.init else None,
        "unlabelled": args.unlabelled,
        "mpp": args.mpp,
        "seed": args.seed,
        "options": _head_options(result.head.head_kind, _fcn_options(args)),
        "auto": auto.record() if auto is not None else None,
        "result": result.summary(),
        "wall_seconds": round(time.time() - start, 2),
    }
    out = save_head(result.head, args.out, extra={"training.json": record})
    pixels = sum(result.class_pixels.values())
    if auto is not None:
        for c in auto.candidates:
            score = "  –  " if c["cv_dice"] is None else f"{c['cv_dice']:.3f}"
            print(f"  {c['name']:32s} CV Dice {score}  {c['seconds']:7.1f} s  {c['status']}")
        print(auto.note)
    steps = f", {result.steps} steps" + (" (stopped early)" if result.stopped_early else "") if result.steps else ""
    print(
        f"Trained a {result.head.head_kind} head on {feature_kind(extractor.config())} features for classes "
        f"{result.head.describe_classes()} on {len(pairs)} image(s), "
        + (f"{len(synthetic)} generated pair(s) (weight {args.synthetic_weight:g}), " if synthetic else "")
        + f"{pixels} labelled pixels{steps}; saved to {out}"
    )
    return 0


def _head_options(kind: str, fcn: dict) -> dict:
    """The fit settings of a ``kind`` head from the command line's FCN options (imported lazily)."""
    from ..engine.training.train_head import fcn_settings_for

    return fcn_settings_for(kind, fcn)


def _fcn_options(args) -> dict:
    return {k: getattr(args, k) for k in ("steps", "lr", "batch_size", "val_fraction", "patience", "hidden", "depth")}


def _changed_fcn_options(args) -> dict:
    """The FCN settings given on the command line that differ from the fit's defaults."""
    import inspect

    from ..engine.training.fit_fcn import fit_fcn

    defaults = {k: p.default for k, p in inspect.signature(fit_fcn).parameters.items()}
    return {k: v for k, v in _fcn_options(args).items() if v != defaults.get(k)}


def _extractor(args, features: str):
    from ..models.features import make_extractor, uses_backbone, feature_config
    from . import UserError

    if args.backbone and not uses_backbone(feature_config(features)):
        raise UserError(f"--backbone applies to diffusion features, not --features {features}.")
    return make_extractor(features, backbone=args.backbone or "default", device=args.device)


def _fine_tune(args, samples, common):
    """Fine-tune the --init head (its features; --backbone may move them)."""
    from ..core.progress import drive
    from ..engine.training.train_head import train_head
    from ..models.features import feature_kind
    from ..models.heads import load_head, load_head_and_extractor
    from . import UserError

    head = load_head(args.init)
    kind = feature_kind(head.feature_config)
    if args.features not in (None, "auto", kind):
        raise UserError(f"--init head {args.init} was trained on {kind} features, not {args.features}.")
    if args.head_kind not in (None, "auto", head.head_kind):
        raise UserError(f"--init head {args.init} is a {head.head_kind} head, not {args.head_kind}.")
    try:
        head, extractor = load_head_and_extractor(args.init, backbone=args.backbone, device=args.device)
    except ValueError as exc:
        raise UserError(f"--backbone: head {args.init}: {exc}") from None
    options = _head_options(head.head_kind, _fcn_options(args))
    common = {k: v for k, v in common.items() if k not in ("class_ids", "class_names")}
    return drive(train_head(samples, extractor=extractor, head=head, **common, **options)), extractor


def _auto(args, samples, common):
    """Candidates from --features/--head (auto where not given), scored and trained."""
    from ..core.progress import drive
    from ..engine.training.auto_select import CLI_BUDGET_S, auto_train

    return drive(auto_train(samples, make_extractor=lambda f: _extractor(args, f), candidates=_auto_candidates(args),
                            budget_s=CLI_BUDGET_S if args.budget is None else args.budget, **common))


def _auto_candidates(args):
    """``auto``'s candidates from --features/--head (auto where not given) and the FCN settings."""
    from ..engine.training.auto_select import DEFAULT_CANDIDATES, Candidate
    from ..models.features import FUSE
    from ..models.heads import head_kinds

    features, head = args.features or "auto", args.head_kind or "auto"
    if features == "auto" and head == "auto":
        candidates = list(DEFAULT_CANDIDATES)
    elif features == "auto":
        candidates = [c for c in DEFAULT_CANDIDATES if c.head == head] or [Candidate("classic", head)]
    else:
        fused = FUSE in features  # an ensemble needs one part per member
        candidates = [Candidate(features, h) for h in head_kinds() if fused or h != "ensemble"]
    fcn = _changed_fcn_options(args)
    return [Candidate(c.features, c.head, tuple(sorted(_head_options(c.head, fcn).items())) or c.settings)
            for c in candidates]


def _synthetic_samples(folder, weight: float) -> list:
    """Generated pairs of ``folder`` (``images/``, ``masks/``, ``generation.json``) as weighted samples."""
    from pathlib import Path

    from ..core.images import check_same_shape, pair_images_and_masks, read_mask, read_rgb
    from ..engine.runs.generation import read_record
    from ..engine.training.train_head import TrainSample

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
