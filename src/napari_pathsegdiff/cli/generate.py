"""``pathsegdiff generate``: synthetic image/mask pairs from layouts in the style of given tiles.

Examples
--------
::

    pathsegdiff generate --generator runs/gen/generator --layouts masks/ --style slides/ --n 64 --out synth
    pathsegdiff generate --generator G --layouts sample --shapes masks/ --style other_slides/ --n 64 --out synth
"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    """Add the ``generate`` subcommand."""
    parser = subparsers.add_parser(
        "generate",
        help="generate H&E tiles with known masks from layouts, in the style of given images",
        description="Generate N tiles, one per layout (masks of class ids, cut to the generator's "
        "tile size, or sampled from class shapes of real masks), each in the style of K random "
        "tissue tiles of the --style sources. Writes OUT/images/*.png, OUT/masks/*.png (the "
        "layouts) and OUT/generation.json; OUT is a training set for `pathsegdiff train --synthetic`.",
    )
    parser.add_argument("--generator", required=True, metavar="DIR", help="generator folder")
    parser.add_argument("--layouts", required=True, metavar="DIR|sample",
                        help="folder of layout masks, or 'sample' for random layouts made of the shapes in --shapes")
    parser.add_argument("--shapes", metavar="DIR", help="masks to take class shapes from (with --layouts sample)")
    parser.add_argument("--style", nargs="+", required=True, metavar="DIR_OR_SLIDE",
                        help="images, slides or folders whose style the tiles take")
    parser.add_argument("--n", type=int, required=True, metavar="N", help="number of tiles")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps (default 25)")
    parser.add_argument("--guidance", type=float, default=2.0, help="style guidance scale (default 2.0)")
    parser.add_argument("--style-k", type=int, default=3, metavar="K", help="style tiles per generated tile (default 3)")
    parser.add_argument("--batch-size", type=int, default=4, metavar="N", help="tiles generated together (default 4)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    parser.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    import numpy as np

    from ..core.progress import drive
    from ..engine.runs.generation import generate_pairs, style_pool
    from ..engine.runs.layouts import LayoutSampler, layout_tiles, read_layout_masks
    from ..models.generator import generator_identity, load_generator
    from . import UserError
    from . import set_threads

    set_threads(args.threads)
    if args.n < 1:
        raise UserError(f"--n must be 1 or more, got {args.n}.")
    gen = load_generator(args.generator, device=args.device)
    tile = int(gen.config.tile_size)
    if args.layouts == "sample":
        if not args.shapes:
            raise UserError("--layouts sample needs --shapes DIR: real masks to take class shapes from.")
        sampler = LayoutSampler.from_masks([m for _, m in read_layout_masks(args.shapes)], tile_size=tile, seed=args.seed)
        rng = np.random.default_rng([args.seed, 0x5A3])
        layouts = [(f"sampled {i}", sampler.sample(rng)) for i in range(args.n)]
    else:
        layouts = layout_tiles(read_layout_masks(args.layouts), n=args.n, tile_size=tile,
                               multiple=gen.size_multiple, seed=args.seed)
    for desc, mask in layouts:  # refuse unknown classes before reading any style source
        gen.encode_layout(mask, name=f"Layout {desc}")
    show = sys.stderr.isatty()
    pool = drive(style_pool(args.style, tile_size=int(gen.config.style_size), mpp=gen.config.mpp,
                            n_tiles=max(16, min(1024, args.n * args.style_k)), seed=args.seed), show=show)
    out = drive(generate_pairs(
        gen, layouts, pool, args.out, style_k=args.style_k, steps=args.steps, guidance=args.guidance,
        seed=args.seed, batch_size=args.batch_size, identity=generator_identity(args.generator),
    ), show=show)
    print(f"{args.n} image/mask pairs written to {out}")
    return 0
