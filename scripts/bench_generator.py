"""Benchmark of the style generator: semi-supervised head training, Fréchet distance, speed, grid.

For each dataset (GlaS, Gleason, MoNuSeg; fixed train / validation split of
``core.splits``) and each number of labelled images L (1 and 3):

1. a generator is trained on the L labelled train images (layouts from their masks) with the
   *other* train images (other patients, unlabelled) as style sources (where no other train
   image is left, Gleason with L = 3, the generator trains on nearby patches of the labelled
   images as styles and the labelled images are the style sources of the generated tiles);
2. ``--n-synthetic`` tiles are generated from layouts cut from the labelled masks, in the
   styles of the unlabelled images;
3. two heads are trained on the same features (``--features``, default ``classic``): on the L
   real images only, and on the real images plus the generated pairs (weight
   ``--synthetic-weight``); both are scored on every validation image: mean Dice per image,
   then the mean and the standard deviation across the validation images (the paper's claim
   is a higher mean and a lower spread).

Also, per dataset (the generator of the largest L): the Fréchet distance between the guide
embeddings of real validation tiles and of generated tiles made from the same layouts, with
style tiles taken from the validation images (style conditioning) and without (null context);
the time to generate one 256x256 tile (25 DDIM steps, guidance 2, so 50 UNet passes) with the
``small`` architecture on this machine; and a grid picture (layout | style tile | generated
with style | generated without style) written to ``--grid``.

Everything is printed, with the scale it ran at, and written as JSON to ``--json``. Images
are used at their own pixel size (no resampling), for the generator and for the heads alike.

    python scripts/bench_generator.py --backbone BACKBONE_DIR [--steps 2000] [--tile 128]
    python scripts/bench_generator.py --backbone-run RUN_DIR ...   # a backbone run's guide and vae
    python scripts/bench_generator.py --random-backbone --datasets glas --labelled 1 --steps 2  # smoke test
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from napari_pathsegdiff.core.images import read_mask, read_rgb
from napari_pathsegdiff.core.metrics import evaluate
from napari_pathsegdiff.core.progress import drive
from napari_pathsegdiff.core.splits import VALIDATION_SIZES, holdout_split
from napari_pathsegdiff.engine.runs.backbone_data import TilePool
from napari_pathsegdiff.engine.runs.generation import generate_pairs, style_pool
from napari_pathsegdiff.engine.runs.generator_training import make_settings, train_generator
from napari_pathsegdiff.engine.inference.predict import predict_image
from napari_pathsegdiff.engine.training.train_head import TrainSample, train_head
from napari_pathsegdiff.models.features import make_extractor
from napari_pathsegdiff.models.generator import build_generator, load_generator

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FOLDERS = {"glas": "glas/train", "gleason": "gleason", "monuseg": "monuseg/train"}


def say(*args) -> None:
    print(*args, flush=True)


# --- backbone -------------------------------------------------------------------------------


def get_backbone(args):
    from napari_pathsegdiff.models.backbone import build_random_backbone, load_backbone

    if args.random_backbone:
        return build_random_backbone("tiny"), "random tiny backbone (smoke test: figures meaningless)"
    if args.backbone:
        bb = load_backbone(args.backbone)
        return bb, f"backbone {bb.identity}"
    return backbone_from_run(Path(args.backbone_run)), f"guide + vae checkpoints of the backbone run {Path(args.backbone_run).name}"


def backbone_from_run(run: Path):
    """A Backbone made of a backbone run's latest guide and vae checkpoints (the generator
    uses only those two and the schedule; the UNet is left random)."""
    import tempfile

    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from safetensors.torch import load_file

    from napari_pathsegdiff.models.backbone import Backbone, backbone_identity
    from napari_pathsegdiff.models.guide import GuideEncoder

    record = json.loads((run / "run.json").read_text())
    arch = record["architecture"]
    models = {}
    for stage, cls in (("guide", GuideEncoder), ("vae", AutoencoderKL)):
        folder = run / "checkpoints" / stage / "model"
        cfg = json.loads((folder / "config.json").read_text())
        model = cls.from_config(cfg)
        model.load_state_dict(load_file(str(folder / "diffusion_pytorch_model.safetensors")))
        models[stage] = model.eval().requires_grad_(False)
    meta = dict(arch["meta"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same (unused) UNet every time, so the identity is stable
        unet = UNet2DConditionModel.from_config(arch["unet"])
    bb = Backbone(vae=models["vae"], unet=unet,
                  scheduler=DDPMScheduler.from_config(arch["scheduler"]), guide=models["guide"],
                  name=meta["name"] + "-partial", mpp=meta["mpp"], tile_size=meta["tile_size"],
                  conditioning="guide", default_timesteps=meta["default_timesteps"],
                  default_blocks=meta["default_blocks"], identity="", source=str(run))
    with tempfile.TemporaryDirectory() as tmp:
        bb.save(tmp)
        bb.identity = backbone_identity(tmp)
    states = {s: json.loads((run / "checkpoints" / s / "state.json").read_text()) for s in ("guide", "vae")}
    if not states["vae"]["finished"] and float(bb.vae.config.scaling_factor) == 1.0:
        # an unfinished vae stage has no latent scale yet: one over the std of pool latents, as at its end
        from napari_pathsegdiff.engine.runs.backbone_data import load_pool

        tiles = load_pool(sorted(run.glob("pool-*.npz"))[0]).tiles[:64]
        with torch.no_grad():
            x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 127.5 - 1
            post = torch.cat([bb.vae.encode(x[i : i + 8]).latent_dist.sample() for i in range(0, 64, 8)])
        bb.vae.register_to_config(scaling_factor=float(1.0 / post.std()))
    say(f"backbone from run checkpoints: guide step {states['guide']['step']}, vae step {states['vae']['step']} "
        f"(latent scale {float(bb.vae.config.scaling_factor):.3f})")
    return bb


# --- data -----------------------------------------------------------------------------------


def dataset(name: str, data: Path, seed: int):
    root = data / FOLDERS[name]
    names = sorted(p.name for p in (root / "images").iterdir() if p.suffix.lower() == ".png")
    train, val = holdout_split(names, n_val=VALIDATION_SIZES[name])
    order = list(np.random.default_rng(seed).permutation(train))
    return root, order, val


def write_subset(root: Path, names, dst: Path) -> tuple[Path, Path]:
    for sub in ("images", "masks"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
        for n in names:
            target = dst / sub / n
            if not target.exists():
                shutil.copy(root / sub / n, target)
    return dst / "images", dst / "masks"


# --- heads ----------------------------------------------------------------------------------


def head_scores(real, synthetic, val, *, features, steps, seeds):
    """Per-image mean Dice on the validation images of heads trained on real (+ synthetic),
    one head per seed; a validation image's score is its mean over the seeds."""
    extractor = make_extractor(features, device="cpu")
    samples = [TrainSample(img, mask, name=n) for n, img, mask in real]
    samples += [TrainSample(img, mask, name=n, weight=w) for n, img, mask, w in synthetic]
    per_seed, pooled = [], []
    for seed in seeds:
        result = drive(train_head(samples, extractor=extractor, steps=steps, seed=seed), show=False)
        pairs = []
        for n, img, truth in val:
            pred = predict_image(img, head=result.head, extractor=extractor).labels
            pairs.append((n, pred, truth))
        ev = evaluate(pairs)
        per_seed.append([ev["per_image"][n]["mean_dice"] for n, _, _ in val])
        pooled.append(ev["mean_dice"])
    scores = np.array([[np.nan if v is None else v for v in row] for row in per_seed], dtype=float)
    per = np.nanmean(scores, axis=0)
    per = per[~np.isnan(per)]
    return {"mean": float(np.mean(per)), "std": float(np.std(per)), "per_image": per.tolist(),
            "seeds": list(seeds), "per_seed_mean": [float(np.nanmean(r)) for r in scores],
            "pooled_mean_dice": float(np.mean(pooled)), "windows": result.windows}


def load_pairs(root: Path, names):
    return [(n, read_rgb(root / "images" / n), read_mask(root / "masks" / n)) for n in names]


def read_synthetic(folder: Path, weight: float):
    out = []
    for p in sorted((folder / "images").iterdir()):
        out.append((p.name, read_rgb(p), read_mask(folder / "masks" / p.name), weight))
    return out


# --- Fréchet distance -------------------------------------------------------------------------


@torch.no_grad()
def guide_features(guide, tiles: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 127.5 - 1
    return torch.cat([guide(x[i : i + 16]) for i in range(0, len(x), 16)]).double().numpy()


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    from scipy import linalg

    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = np.real(linalg.sqrtm(s1 @ s2))
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def random_crops(images, size: int, n: int, seed: int) -> tuple[np.ndarray, list]:
    rng = np.random.default_rng(seed)
    crops, where = [], []
    for i in range(n):
        k = i % len(images)
        arr = images[k]
        y, x = rng.integers(0, arr.shape[0] - size + 1), rng.integers(0, arr.shape[1] - size + 1)
        crops.append(arr[y : y + size, x : x + size])
        where.append((k, int(y), int(x)))
    return np.stack(crops), where


def fd_and_grid(gen, backbone, val, lab_masks, *, tile, n, steps, guidance, seed, grid_rows):
    """FD of guide features, real validation tiles vs generated with / without style."""
    real_imgs = [img for _, img, _ in val]
    real_tiles, _ = random_crops(real_imgs, tile, n, seed)
    masks = [m for m in lab_masks]
    layouts = []
    rng = np.random.default_rng([seed, 1])
    m_mult = gen.size_multiple
    for i in range(n):
        m = masks[i % len(masks)]
        y, x = rng.integers(0, m.shape[0] - tile + 1), rng.integers(0, m.shape[1] - tile + 1)
        layouts.append(m[y : y + tile, x : x + tile])
    assert tile % m_mult == 0
    style_size = int(gen.config.style_size)
    style_tiles, where = random_crops(real_imgs, style_size, n * 3, seed + 7)
    pool = TilePool(style_tiles, np.array([w[0] for w in where]), np.array([[w[1], w[2]] for w in where]),
                    [{"path": n_} for n_, _, _ in val], [], float(gen.config.mpp or 0.5), "val")
    import tempfile

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, p in (("style", pool), ("no_style", None)):
            folder = drive(generate_pairs(gen, [(f"l{i}", lay) for i, lay in enumerate(layouts)], p, Path(tmp) / label,
                                          steps=steps, guidance=guidance, seed=seed), show=False)
            out[label] = np.stack([read_rgb(folder / "images" / f"{i:05d}.png") for i in range(n)])
        rec = json.loads((Path(tmp) / "style" / "generation.json").read_text())
    guide = backbone.guide.float().eval()
    f_real = guide_features(guide, real_tiles)
    fd = {label: frechet(f_real, guide_features(guide, imgs)) for label, imgs in out.items()}
    # a reference: two disjoint sets of real validation tiles
    other_real, _ = random_crops(real_imgs, tile, n, seed + 99)
    fd["real_vs_real"] = frechet(f_real, guide_features(guide, other_real))
    rows = []
    for i in range(min(grid_rows, n)):
        first = rec["tiles"][i]["style"][0]
        k = [w for w in range(len(pool.sources)) if Path(pool.sources[w]["path"]).name == first["source"]][0]
        style = real_imgs[k][first["y"] : first["y"] + style_size, first["x"] : first["x"] + style_size]
        rows.append((layouts[i], style, out["style"][i], out["no_style"][i]))
    return fd, rows


def save_grid(rows, colors, class_ids, path: Path, tile: int) -> None:
    """Rows of (layout, style tile, generated with style, generated without style), shown at
    ``max(tile, 128)`` px each (nearest-neighbour upscaling)."""
    from PIL import Image, ImageDraw
    from skimage.transform import resize

    lut = np.zeros((256, 3), np.uint8)
    for cid, c in zip(class_ids, colors):
        lut[cid] = [int(c[i : i + 2], 16) for i in (1, 3, 5)]
    side = max(tile, 128)
    pad, head = 4, 18
    cols = ["layout", "style tile", "with style", "no style"]
    w = len(cols) * (side + pad) + pad
    h = head + len(rows) * (side + pad) + pad
    canvas = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(canvas)
    for j, name in enumerate(cols):
        draw.text((pad + j * (side + pad), 3), name, fill="black")
    for i, (layout, style, styled, plain) in enumerate(rows):
        for j, img in enumerate((lut[layout], style, styled, plain)):
            img = np.clip(resize(img, (side, side), order=0, preserve_range=True), 0, 255).astype(np.uint8)
            canvas.paste(Image.fromarray(img), (pad + j * (side + pad), head + i * (side + pad)))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


# --- speed ----------------------------------------------------------------------------------


@torch.no_grad()
def generation_time(backbone, *, size: int = 256, steps: int = 25, guidance: float = 2.0, repeat: int = 2) -> float:
    """Seconds per generated tile of ``size`` px for the small architecture (random weights)."""
    gen = build_generator(backbone, class_ids=[0, 1], config="small").eval()
    layouts = torch.zeros((1, size, size), dtype=torch.long)
    styles = torch.zeros((1, 3, 3, 128, 128))
    gen.sample(layouts, styles, steps=1, guidance=guidance)  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        gen.sample(layouts, styles, steps=steps, guidance=guidance)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


# --- main -----------------------------------------------------------------------------------


def save_json(path: Path | None, figures: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(figures, indent=1, default=str) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--backbone", help="backbone folder")
    src.add_argument("--backbone-run", help="backbone training run folder (its guide and vae checkpoints)")
    src.add_argument("--random-backbone", action="store_true", help="tiny random backbone (smoke test)")
    p.add_argument("--data", type=Path, default=SHARED)
    p.add_argument("--datasets", nargs="+", default=["glas", "gleason", "monuseg"], choices=list(FOLDERS))
    p.add_argument("--labelled", nargs="+", type=int, default=[1, 3])
    p.add_argument("--work", type=Path, default=Path.home() / ".cache" / "napari-pathsegdiff" / "bench-generator")
    p.add_argument("--config", default="small", choices=("small", "tiny"))
    p.add_argument("--steps", type=int, default=2000, help="generator training steps per (dataset, L)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tile", type=int, default=128, help="generator tile size (px)")
    p.add_argument("--style-size", type=int, default=64)
    p.add_argument("--aggregation", default="mean", choices=("mean", "attention"))
    p.add_argument("--n-synthetic", type=int, default=32)
    p.add_argument("--gen-steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--synthetic-weight", type=float, default=0.5)
    p.add_argument("--features", default="classic", choices=("classic", "rgb", "diffusion"))
    p.add_argument("--head-steps", type=int, default=200)
    p.add_argument("--head-seeds", type=int, default=3, help="heads trained per comparison (seeds); scores are averaged")
    p.add_argument("--fd-tiles", type=int, default=48)
    p.add_argument("--grid", type=Path, help="write the grid picture here (e.g. docs/images/synthetic_grid.png)")
    p.add_argument("--grid-dataset", default="monuseg", choices=list(FOLDERS))
    p.add_argument("--time-tiles", type=int, default=2, help="repeats of the 256-px generation timing (0: skip)")
    p.add_argument("--time-steps", type=int, default=25, help="DDIM steps of the 256-px generation timing")
    p.add_argument("--threads", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.data.is_dir():
        raise SystemExit(f"data folder {args.data} is absent")
    backbone, bb_desc = get_backbone(args)
    say(f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    say(f"Scale: {bb_desc}; generator '{args.config}' trained {args.steps} steps per (dataset, L) at batch "
        f"{args.batch} on {args.tile}-px tiles (style tiles {args.style_size} px, {args.aggregation}); "
        f"{args.n_synthetic} generated pairs per head (weight {args.synthetic_weight}), {args.gen_steps} DDIM "
        f"steps, guidance {args.guidance}; heads on {args.features} features, {args.head_steps} steps, "
        f"{args.head_seeds} seed(s) averaged per validation image.")
    figures = {"scale": vars(args) | {"backbone": bb_desc}, "datasets": {}}
    figures["scale"] = {k: str(v) if isinstance(v, Path) else v for k, v in figures["scale"].items()}
    if args.time_tiles:
        secs = generation_time(backbone, steps=args.time_steps, guidance=args.guidance, repeat=args.time_tiles)
        figures["seconds_per_256px_tile"] = secs
        say(f"Generation time, small architecture, one 256x256 tile, {args.time_steps} DDIM steps with guidance "
            f"(2 UNet passes a step): {secs:.2f} s on this CPU")
    for ds in args.datasets:
        save_json(args.json, figures)  # figures so far, in case the run is stopped
        root, order, val_names = dataset(ds, args.data, args.seed)
        val = load_pairs(root, val_names)
        res = figures["datasets"][ds] = {"validation": val_names, "runs": {}}
        last_gen = None
        for L in args.labelled:
            lab, unl = order[:L], order[L:]
            style_names = unl or lab  # no other train image (Gleason, L = 3): styles of the labelled images
            work = args.work / ds / f"L{L}"
            images, masks = write_subset(root, lab, work / "labelled")
            settings = make_settings(
                args.config, steps=args.steps, batch=args.batch, tile_size=args.tile, style_size=args.style_size,
                aggregation=args.aggregation, pair_tiles=256, style_tiles=256, checkpoint_every=100,
                nearby=args.tile, seed=args.seed,
            )
            t0 = time.perf_counter()
            folder = drive(train_generator(images, masks, work / "run", backbone=backbone,
                                           style=[root / "images" / n for n in unl], settings=settings,
                                           resume=True, device="cpu"), show=False)
            train_s = time.perf_counter() - t0
            losses = [json.loads(x)["loss"] for x in (work / "run" / "losses.jsonl").read_text().splitlines()]
            gen = load_generator(folder)
            last_gen = (gen, [read_mask(masks / n) for n in lab])
            pool = drive(style_pool([root / "images" / n for n in style_names], tile_size=args.style_size, mpp=gen.config.mpp,
                                    n_tiles=max(16, args.n_synthetic * 3), seed=args.seed), show=False)
            from napari_pathsegdiff.engine.runs.layouts import layout_tiles

            lay = layout_tiles([(masks / n, read_mask(masks / n)) for n in lab], n=args.n_synthetic,
                               tile_size=args.tile, multiple=gen.size_multiple, seed=args.seed)
            t0 = time.perf_counter()
            synth_dir = drive(generate_pairs(gen, lay, pool, work / "synthetic", steps=args.gen_steps,
                                             guidance=args.guidance, seed=args.seed), show=False)
            gen_s = (time.perf_counter() - t0) / args.n_synthetic
            real = load_pairs(root, lab)
            synthetic = read_synthetic(synth_dir, args.synthetic_weight)
            seeds = [args.seed + k for k in range(args.head_seeds)]
            r_only = head_scores(real, [], val, features=args.features, steps=args.head_steps, seeds=seeds)
            r_syn = head_scores(real, synthetic, val, features=args.features, steps=args.head_steps, seeds=seeds)
            res["runs"][f"L{L}"] = {
                "labelled": lab, "style_sources": len(unl) if unl else "the labelled images (no other train image)", "generator_steps": len(losses),
                "generator_train_s": round(train_s, 1), "first_loss": losses[0], "last_loss_mean": float(np.mean(losses[-50:])),
                "s_per_generated_tile": round(gen_s, 3), "real_only": r_only, "real_plus_synthetic": r_syn,
            }
            say(f"{ds} L={L}: generator {len(losses)} steps ({train_s / 60:.1f} min this call), loss "
                f"{losses[0]:.3f} -> {np.mean(losses[-50:]):.3f}; {gen_s:.2f} s per {args.tile}-px tile")
            say(f"  Dice per validation image, mean ± std: real only {r_only['mean']:.3f} ± {r_only['std']:.3f}; "
                f"real + synthetic {r_syn['mean']:.3f} ± {r_syn['std']:.3f} (means per head seed: "
                f"{', '.join(f'{v:.3f}' for v in r_only['per_seed_mean'])} vs "
                f"{', '.join(f'{v:.3f}' for v in r_syn['per_seed_mean'])})")
        gen, lab_masks = last_gen
        fd, rows = fd_and_grid(gen, backbone, val, lab_masks, tile=args.tile, n=args.fd_tiles, steps=args.gen_steps,
                               guidance=args.guidance, seed=args.seed, grid_rows=4)
        res["frechet_guide"] = fd
        say(f"  Fréchet distance on guide embeddings vs real validation tiles ({args.fd_tiles} tiles): "
            f"with style {fd['style']:.3f}, without style {fd['no_style']:.3f} (real vs other real {fd['real_vs_real']:.3f})")
        if args.grid and ds == args.grid_dataset:
            save_grid(rows, gen.class_colors, gen.class_ids, args.grid, args.tile)
            say(f"  grid written to {args.grid}")
    save_json(args.json, figures)


if __name__ == "__main__":
    main()
