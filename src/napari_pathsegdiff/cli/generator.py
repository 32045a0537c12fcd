"""``pathsegdiff generator``: train a style generator (layout + style → H&E tile), or export one.

Examples
--------
::

    pathsegdiff generator train --images imgs/ --masks masks/ --style slides/ --out runs/gen
    pathsegdiff generator train --images imgs/ --masks masks/ --style slides/ --out runs/gen --resume
    pathsegdiff generator export --run runs/gen --out my-generator
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    """Add the ``generator`` subcommand with its ``train`` and ``export`` actions."""
    parser = subparsers.add_parser(
        "generator",
        help="train a style generator that makes H&E tiles for given masks, or export one",
        description="Train a latent diffusion generator conditioned on a layout (a mask) and on "
        "the style of unlabelled tiles, for synthetic training pairs (`pathsegdiff generate`).",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    train = actions.add_parser(
        "train",
        help="train or resume a generator run",
        description="Train on labelled images with same-named masks, and on the styles of "
        "unlabelled images or slides (--style). Every step is reproducible, so --resume "
        "continues exactly where the run stopped; Ctrl-C or SIGTERM checkpoints and stops. "
        "The generator is written to OUT/generator when the steps are done.",
    )
    train.add_argument("--images", required=True, metavar="DIR", help="folder of labelled RGB images")
    train.add_argument("--masks", required=True, metavar="DIR", help="folder of same-named masks (class ids)")
    train.add_argument("--style", nargs="+", default=[], metavar="DIR_OR_SLIDE",
                       help="unlabelled images, slides or folders whose styles to learn")
    train.add_argument("--out", required=True, metavar="DIR", help="run folder (checkpoints, log, generator/)")
    train.add_argument("--init-from", default="default", metavar="default|BACKBONE_DIR",
                       help="backbone whose autoencoder and guide the generator is built on (default: default)")
    train.add_argument("--config", default="small", choices=("small", "tiny"), help="UNet size (default small)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument("--steps", type=int, metavar="N", help="training steps (default 20000; tiny: 4)")
    train.add_argument("--batch", type=int, metavar="N", help="tiles per step (default 8)")
    train.add_argument("--lr", type=float, help="learning rate (default 2e-4)")
    train.add_argument("--aggregation", choices=("mean", "attention"), help="merging of style tiles (default mean)")
    train.add_argument("--style-mode", choices=("nearby", "same", "augment", "other"),
                       help="where training style tiles come from (default nearby: the same image or slide)")
    train.add_argument("--style-k", type=int, metavar="K", help="at most K style tiles per training tile (default 3)")
    train.add_argument("--style-size", type=int, metavar="PX", help="side of style tiles (default 128)")
    train.add_argument("--tile-size", type=int, metavar="PX", help="side of training tiles (default: the backbone's)")
    train.add_argument("--mpp", type=float, metavar="X", help="µm/px of the labelled images (resampled to the backbone's)")
    train.add_argument("--class-names", nargs="+", metavar="NAME", help="class names by increasing class id")
    train.add_argument("--seed", type=int, help="seed of the whole run (default 0)")
    train.add_argument("--checkpoint-every", type=int, metavar="N", help="steps between checkpoints (default 200)")
    train.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    train.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch")
    train.set_defaults(func=_train)

    export = actions.add_parser("export", help="write the generator folder of a run from its latest checkpoint")
    export.add_argument("--run", required=True, metavar="DIR", help="the run folder given to train --out")
    export.add_argument("--out", required=True, metavar="DIR", help="destination generator folder")
    export.set_defaults(func=_export)


def _train(args: argparse.Namespace) -> int:
    import sys

    from ..core.progress import drive
    from ..engine.runs.generator_training import make_settings, train_generator
    from ..engine.runs.run_folder import stop_on_signals
    from ..models.backbone import load_backbone
    from . import UserError, set_threads

    set_threads(args.threads)
    settings = make_settings(
        args.config, steps=args.steps, batch=args.batch, lr=args.lr, aggregation=args.aggregation,
        style_mode=args.style_mode, style_k=args.style_k, style_size=args.style_size, tile_size=args.tile_size,
        images_mpp=args.mpp, seed=args.seed, checkpoint_every=args.checkpoint_every,
    )
    try:
        backbone = load_backbone(args.init_from)
    except ValueError as exc:
        raise UserError(f"--init-from {args.init_from}: {exc}") from exc
    if backbone.mpp is None and args.mpp is not None:
        raise UserError(f"--init-from {args.init_from} records no µm/px, so --mpp cannot be resampled to it.")
    class_ids = None
    if args.class_names:
        from ..core.images import pair_images_and_masks, read_mask

        import numpy as np

        ids = sorted({int(v) for _, m in pair_images_and_masks(args.images, args.masks) for v in np.unique(read_mask(m))})
        if len(ids) != len(args.class_names):
            raise UserError(f"--class-names gives {len(args.class_names)} names but the masks hold class ids {ids}.")
        class_ids = ids
    with stop_on_signals("pathsegdiff generator") as stop_asked:
        work = train_generator(
            args.images, args.masks, args.out, backbone=backbone, style=args.style, settings=settings,
            class_ids=class_ids, class_names=args.class_names, resume=args.resume, device=args.device,
            should_stop=stop_asked,
        )
        folder = drive(work, show=sys.stderr.isatty())
    if folder is None:
        print("stopped; continue with --resume")
        return 130
    print(f"generator written to {folder}")
    return 0




def _export(args: argparse.Namespace) -> int:
    from ..engine.runs.generator_training import export_generator

    print(f"generator written to {export_generator(args.run, args.out)}")
    return 0
