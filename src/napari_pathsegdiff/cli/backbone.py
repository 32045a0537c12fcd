"""``pathsegdiff backbone``: train a backbone on unlabelled H&E, export a run's backbone, or
convert a CompVis checkpoint of the pathology LDM of Graikos et al.

Examples
--------
::

    pathsegdiff backbone train --data slides/ tiles/ --out runs/my-backbone
    pathsegdiff backbone train --data slides/ tiles/ --out runs/my-backbone --resume
    pathsegdiff backbone export --run runs/my-backbone --out my-backbone
    pathsegdiff backbone convert --checkpoint crc20x.ckpt --config only_patch_20x.yaml --out ldm-crc20x
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    """Add the ``backbone`` subcommand with its ``train``, ``export`` and ``convert`` actions."""
    parser = subparsers.add_parser(
        "backbone",
        help="train a backbone (guide, autoencoder, UNet) on unlabelled H&E, or export one",
        description="Train a latent diffusion backbone on unlabelled H&E images and slides, or "
        "export the backbone folder of a (possibly unfinished) training run.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    train = actions.add_parser(
        "train",
        help="train or resume a backbone run",
        description="Train in three stages (guide, vae, unet), checkpointing into --out. Every "
        "step is reproducible, so --resume continues exactly where the run stopped. "
        "Ctrl-C or SIGTERM checkpoints and stops.",
    )
    train.add_argument("--data", nargs="+", required=True, metavar="DIR_OR_SLIDE",
                       help="images (PNG/JPEG/TIFF), slides, or folders searched recursively")
    train.add_argument("--out", required=True, metavar="DIR", help="run folder (checkpoints, log, backbone/)")
    train.add_argument("--config", default="small", choices=("small", "tiny"),
                       help="architecture and default budgets (default: small)")
    train.add_argument("--steps", type=int, metavar="N",
                       help="steps of every stage (a stage that later stages were built on keeps its count)")
    for stage in ("guide", "vae", "unet"):
        train.add_argument(f"--steps-{stage}", type=int, metavar="N", help=f"steps of the {stage} stage")
    train.add_argument("--resume", action="store_true", help="continue the run in --out (starts one if there is none)")
    train.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    train.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch")
    train.add_argument("--seed", type=int, help="seed of the whole run (default 0)")
    train.add_argument("--checkpoint-every", type=int, metavar="N", help="steps between checkpoints")
    train.add_argument("--pool-tiles", type=int, metavar="N", help="tiles pre-extracted for training")
    train.add_argument("--exclude", nargs="+", default=[], metavar="PATTERN",
                       help="leave out files whose path or name matches (e.g. held-out validation images)")
    train.add_argument("--mpp-map", nargs="+", default=[], metavar="PATTERN=MPP",
                       help="µm/px of files matching PATTERN (before slide metadata), e.g. '*monuseg*=0.25'")
    train.add_argument("--default-mpp", type=float, default=0.5,
                       help="µm/px assumed for sources without metadata or --mpp-map (default 0.5)")
    train.add_argument("--no-export", action="store_true", help="do not write --out/backbone at the end")
    train.set_defaults(func=_train)

    export = actions.add_parser(
        "export",
        help="write the backbone folder of a run from its latest checkpoints",
        description="Write a backbone folder (diffusers layout, safetensors, MODEL_CARD.md) from "
        "the latest checkpoints of a run, even one still training.",
    )
    export.add_argument("--run", required=True, metavar="DIR", help="the run folder given to train --out")
    export.add_argument("--out", required=True, metavar="DIR", help="destination backbone folder")
    export.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    export.add_argument("--timesteps", type=int, nargs="+", metavar="T",
                        help="default timesteps of its diffusion features (default: the architecture's)")
    export.add_argument("--blocks", type=int, nargs="+", metavar="B",
                        help="default UNet up blocks of its diffusion features (default: the architecture's)")
    export.set_defaults(func=_export)

    convert = actions.add_parser(
        "convert",
        help="convert a CompVis checkpoint of the pathology LDM (Graikos et al.) into a backbone folder",
        description="Convert a CompVis latent-diffusion checkpoint of the pathology LDM of Graikos "
        "et al. (BRCA 20x, CRC 20x, ...) and its yaml into a backbone folder (diffusers UNet and "
        "VQModel, DDIM scheduler, conditioning embedder; safetensors). Runs offline, once.",
    )
    convert.add_argument("--checkpoint", required=True, metavar="FILE", help="the .ckpt (or .safetensors) file")
    convert.add_argument("--config", required=True, metavar="YAML", help="its project yaml (e.g. only_patch_20x.yaml)")
    convert.add_argument("--out", required=True, metavar="DIR", help="the backbone folder to write (must not exist)")
    convert.add_argument("--mpp", type=float, default=0.5,
                         help="µm/px of the training tiles (default 0.5, the 20x models; 2.0 for 5x)")
    convert.add_argument("--name", help="backbone name (default: the checkpoint's file name)")
    convert.add_argument("--ssl-encoder", metavar="FOLDER_OR_CACHED_ID",
                         help="the model's self-supervised encoder as a transformers folder or a cached "
                         "hub id (copied into the backbone); without it the features use the "
                         "unconditional tokens")
    convert.add_argument("--trust-checkpoint", action="store_true",
                         help="read a checkpoint the safe loader refuses, with inert stand-ins for its non-tensor objects (only for a file you trust)")
    convert.add_argument("--dtype", default="float32", choices=("float32", "float16"),
                         help="precision of the written weights (default float32)")
    convert.set_defaults(func=_convert)


def _train(args: argparse.Namespace) -> int:
    import sys

    from ..core.progress import drive
    from ..engine.runs.backbone_data import parse_mpp_map
    from ..engine.runs.run_folder import stop_on_signals
    from ..engine.runs.backbone_training import make_settings, train_backbone
    from . import set_threads

    set_threads(args.threads)
    steps = {f"steps_{s}": getattr(args, f"steps_{s}") for s in ("guide", "vae", "unet")}
    if args.steps is not None:
        steps = {k: (v if v is not None else args.steps) for k, v in steps.items()}
    settings = make_settings(
        args.config, seed=args.seed, checkpoint_every=args.checkpoint_every, pool_tiles=args.pool_tiles, **steps
    )
    with stop_on_signals("pathsegdiff backbone") as stop_asked:
        work = train_backbone(
            args.data, args.out, config=args.config, settings=settings, resume=args.resume,
            device=args.device, exclude=args.exclude, mpp_map=parse_mpp_map(args.mpp_map),
            default_mpp=args.default_mpp, export=not args.no_export, should_stop=stop_asked,
        )
        folder = drive(work, show=sys.stderr.isatty(), callback=_log_line)
    if folder is not None:
        print(f"backbone written to {folder}")
    elif stop_asked():
        print("stopped; continue with --resume")
        return 130
    return 0


_last_print: dict[str, float] = {}


def _log_line(rec) -> None:
    """Print one line per stage change and at most one a minute (for logs of detached runs)."""
    import time

    now = time.time()
    key = rec.stage
    if key in _last_print and now - _last_print[key] < 60 and rec.done != rec.total:
        return
    _last_print[key] = now
    metrics = " ".join(f"{k}={v:.4g}" for k, v in rec.metrics.items())
    print(f"[{time.strftime('%H:%M:%S')}] {rec.stage} {rec.done}/{rec.total} {rec.message} {metrics}".rstrip(), flush=True)


def _export(args: argparse.Namespace) -> int:
    from ..engine.runs.backbone_training import export_backbone

    folder = export_backbone(args.run, args.out, dtype=args.dtype, timesteps=args.timesteps, blocks=args.blocks)
    print(f"backbone written to {folder}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    import torch

    from ..models.compvis_convert import convert_compvis_checkpoint

    folder = convert_compvis_checkpoint(
        args.checkpoint, args.config, args.out, mpp=args.mpp, name=args.name,
        ssl_encoder=args.ssl_encoder, trust_checkpoint=args.trust_checkpoint,
        dtype=getattr(torch, args.dtype), log=lambda line: print(line, flush=True),
    )
    print(f"backbone written to {folder}")
    if args.ssl_encoder is None:
        print("note: no --ssl-encoder: the features use the model's unconditional tokens (zero "
              "SSL embeddings); heads trained on them refuse a backbone converted with an encoder")
    return 0
