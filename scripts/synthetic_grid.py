"""A grid picture of generated tiles next to their layouts and style sources, from data that
may be shown: layouts from masks of the CC0 sample slide, styles from open-access slides.

Usage::

    python scripts/synthetic_grid.py --generator DIR --masks DIR --style SLIDE_OR_DIR...
        --out docs/images/synthetic_grid.png [--rows 4] [--tile 128] [--n 32]
        [--steps 25] [--guidance 2.0] [--seed 0] [--threads 1]

Rows: layout | one of the style tiles | generated with the style | generated without style
(null style). Also prints the Fréchet distance, on the guide's features, between tissue tiles
of the style sources and the generated tiles with and without style (two disjoint sets of
real tiles as the reference), and the seconds to generate one 256x256 tile. The generator's
backbone is the default one (the generator records which; another is refused).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generator import fd_and_grid, save_grid  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--generator", type=Path, required=True)
    p.add_argument("--masks", type=Path, required=True, help="folder of layout masks (class ids of the generator)")
    p.add_argument("--style", nargs="+", required=True, help="slides, images or folders of style sources")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--rows", type=int, default=4)
    p.add_argument("--tile", type=int, default=128)
    p.add_argument("--n", type=int, default=32, help="generated tiles for the Fréchet distance")
    p.add_argument("--style-sources", type=int, default=8, help="tissue regions of 512 px drawn from --style")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from napari_pathsegdiff.core.images import IMAGE_SUFFIXES, read_mask
    from napari_pathsegdiff.core.progress import drive
    from napari_pathsegdiff.engine.runs.generation import style_pool
    from napari_pathsegdiff.models.backbone import load_backbone
    from napari_pathsegdiff.models.generator import load_generator

    gen = load_generator(args.generator).eval()
    backbone = load_backbone("default")
    if gen.config.backbone_identity and gen.config.backbone_identity != backbone.identity:
        p.error(f"{args.generator} was built on {gen.config.backbone_identity}, not the default "
                f"backbone {backbone.identity}")
    masks = [read_mask(f) for f in sorted(args.masks.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not masks:
        p.error(f"--masks {args.masks}: no mask images")
    unknown = sorted({int(v) for m in masks for v in np.unique(m)} - set(gen.class_ids))
    if unknown:
        p.error(f"--masks hold class ids {unknown} that the generator does not know ({gen.class_ids})")
    # style sources: tissue regions of the slides, at the generator's µm/px
    pool = drive(style_pool(args.style, tile_size=512, mpp=gen.config.mpp, n_tiles=args.style_sources,
                            seed=args.seed), show=False)
    val = [(f"{Path(pool.sources[s]['path']).name}#{i}", tile, None)
           for i, (tile, s) in enumerate(zip(pool.tiles, pool.source_index))]
    t0 = time.perf_counter()
    with torch.inference_mode():
        fd, rows = fd_and_grid(gen, backbone, val, masks, tile=args.tile, n=args.n, steps=args.steps,
                               guidance=args.guidance, seed=args.seed, grid_rows=args.rows)
    grid_s = time.perf_counter() - t0
    save_grid(rows, gen.class_colors, gen.class_ids, args.out, args.tile)

    # seconds per 256x256 tile, with guidance (two UNet passes per step)
    layout = torch.as_tensor(gen.encode_layout(masks[0][:256, :256]))[None]
    styles = torch.as_tensor(np.moveaxis(pool.tiles[:3, :128, :128], -1, 1)[None]).float() / 127.5 - 1.0
    with torch.inference_mode():
        gen.sample(layout, styles, steps=1, guidance=args.guidance, seed=args.seed)
        t0 = time.perf_counter()
        gen.sample(layout, styles, steps=args.steps, guidance=args.guidance, seed=args.seed)
        per_tile = time.perf_counter() - t0
    print(f"# synthetic grid {date.today()} | {platform.machine()} | torch threads {args.threads}")
    print(f"generator {gen.config.backbone_identity} classes {gen.class_names}; style sources: "
          + ", ".join(sorted({Path(s['path']).name for s in pool.sources if s.get('tiles')})))
    print(f"grid written to {args.out} ({args.rows} rows, {args.tile} px tiles)")
    print(f"Fréchet distance on guide features, {args.n} tiles of {args.tile} px: "
          + ", ".join(f"{k} {v:.2f}" for k, v in fd.items()) + f" ({grid_s:.0f} s)")
    print(f"one 256x256 tile, {args.steps} DDIM steps, guidance {args.guidance}: {per_tile:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
