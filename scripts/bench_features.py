"""Throughput of diffusion features on the CPU for random backbones of two sizes.

Prints, per configuration, the parameter counts, milliseconds per 256x256 tile and megapixels
per second of :class:`DiffusionFeatures` (batches of ``--batch`` tiles, after one warm-up
batch). Random weights run as fast as trained ones, so this measures the architecture only.

    python scripts/bench_features.py [--configs tiny small large] [--batch 4] [--batches 3]

``small`` is the architecture of the shipped default backbone (random weights here).
"""

from __future__ import annotations

import argparse
import copy
import platform
import time

import numpy as np
import torch

from napari_pathsegdiff.models.backbone import build_random_backbone, random_config
from napari_pathsegdiff.models.diffusion_features import DiffusionFeatures

# A realistic small pathology LDM: KL autoencoder with factor 8 (no mid attention), a
# cross-attention UNet on 32x32 latents of 256-pixel tiles, attention only at the lowest level.
LARGE = {
    "vae": {
        "_class_name": "AutoencoderKL",
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [64, 128, 256, 256],
        "layers_per_block": 2,
        "latent_channels": 4,
        "norm_num_groups": 32,
        "mid_block_add_attention": False,
        "sample_size": 256,
    },
    "unet": {
        "_class_name": "UNet2DConditionModel",
        "sample_size": 32,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": [64, 128, 256],
        "down_block_types": ["DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
        "layers_per_block": 2,
        "cross_attention_dim": 256,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    },
    "guide": {"widths": [32, 64, 128, 256], "embed_dim": 256, "norm_groups": 8},
    "scheduler": {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000},
    "meta": {
        "name": "random-large",
        "mpp": 0.5,
        "tile_size": 256,
        "default_timesteps": [50, 150],
        "default_blocks": [1, 2],
    },
}


def params(module: torch.nn.Module | None) -> float:
    """Millions of parameters."""
    return 0.0 if module is None else sum(p.numel() for p in module.parameters()) / 1e6


def bench(
    name: str, *, batch: int, batches: int, timesteps: list[int] | None, blocks: list[int] | None
) -> None:
    """Print the throughput of one configuration."""
    if name == "small":  # the architecture of the shipped default backbone
        from napari_pathsegdiff.models.backbone_configs import get_config

        config = get_config("small")
    else:
        config = random_config("tiny") if name == "tiny" else copy.deepcopy(LARGE)
    backbone = build_random_backbone(config, seed=0)
    fx = DiffusionFeatures(backbone, timesteps=timesteps, blocks=blocks, batch_size=batch)
    tiles = np.random.default_rng(0).integers(0, 256, size=(batch, 256, 256, 3), dtype=np.uint8)
    fx.extract(tiles)  # warm-up
    start = time.perf_counter()
    for _ in range(batches):
        feats = fx.extract(tiles)
    seconds = (time.perf_counter() - start) / (batches * batch)
    print(
        f"{name:6s} vae {params(backbone.vae):5.2f} M  unet {params(backbone.unet):5.2f} M  "
        f"guide {params(backbone.guide):4.2f} M | t={fx.timesteps} blocks={fx.blocks} "
        f"channels={sum(fx.channels)} | {seconds * 1e3:8.1f} ms per 256x256 tile  "
        f"{256 * 256 / seconds / 1e6:6.3f} MP/s  (maps {[f.shape[1:] for f in feats]})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = ["tiny", "small", "large"]
    parser.add_argument("--configs", nargs="+", default=names, choices=names)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--batches", type=int, default=3, help="timed batches after the warm-up")
    parser.add_argument("--timesteps", type=int, nargs="+")
    parser.add_argument("--blocks", type=int, nargs="+")
    args = parser.parse_args()
    machine = platform.processor() or platform.machine()
    print(f"{machine}, torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    for name in args.configs:
        bench(name, batch=args.batch, batches=args.batches, timesteps=args.timesteps, blocks=args.blocks)


if __name__ == "__main__":
    main()
