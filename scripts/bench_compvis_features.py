"""Cost of diffusion features of the full-size pathology LDM (Graikos et al.) per 1024² region.

Builds the released CRC 20x architecture (UNet 400.9 M parameters, VQ-f4 55.3 M, PatchEmbedder
768 → 512) with random weights, exactly as ``pathsegdiff backbone convert`` lays it out, and
times :class:`DiffusionFeatures` with the converted backbone's defaults (t = 50, 150; up blocks
2, 3; unconditional tokens) on the tiles the engine cuts from a 1024 × 1024 region at
0.5 µm/px: 16 tiles of 256 px plus a 32-px halo (320 × 320). Random weights cost the same as
trained ones. Prints seconds per region (wall clock, and the process's CPU time, which a busy
machine inflates less), per tile, and the peak resident memory.

    python scripts/bench_compvis_features.py --threads 1 [--batch 4] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time

import numpy as np
import torch

from napari_pathsegdiff.models.backbone import _assemble
from napari_pathsegdiff.models.compvis_convert import scheduler_config, unet_config, vq_config
from napari_pathsegdiff.models.diffusion_features import DiffusionFeatures
from napari_pathsegdiff.models.ssl_conditioning import ConditioningEmbedder, SSLConditioning

RELEASED_CRC20X = {
    "model": {
        "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
        "params": {
            "linear_start": 0.0015, "linear_end": 0.0195, "timesteps": 1000, "image_size": 64,
            "conditioning_key": "crossattn",
            "unet_config": {"params": {
                "image_size": 64, "in_channels": 3, "out_channels": 3, "model_channels": 192,
                "attention_resolutions": [8, 4, 2], "num_res_blocks": 2, "channel_mult": [1, 2, 3, 5],
                "num_heads": 1, "use_spatial_transformer": True, "transformer_depth": 1, "context_dim": 512}},
            "first_stage_config": {"target": "ldm.models.autoencoder.VQModelInterface", "params": {
                "embed_dim": 3, "n_embed": 8192, "ddconfig": {
                    "double_z": False, "z_channels": 3, "resolution": 256, "in_channels": 3, "out_ch": 3,
                    "ch": 128, "ch_mult": [1, 2, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}}},
            "cond_stage_config": {"target": "ldm.modules.encoders.modules.PatchEmbedder",
                                  "params": {"patch_embed_dim": 768, "target_dim": 512}},
        },
    }
}  # fmt: skip


def build_backbone(device: str):
    """The full-size architecture with random weights, as the converter assembles it."""
    from diffusers import DDIMScheduler, UNet2DConditionModel, VQModel

    probe = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(192, 3, 3, 3)}
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**unet_config(RELEASED_CRC20X, probe))
    vq = VQModel(**vq_config(RELEASED_CRC20X))
    ssl = SSLConditioning(ConditioningEmbedder(feature_dims=[768], context_dim=512))
    meta = {"name": "random-crc20x", "mpp": 0.5, "tile_size": 256, "default_timesteps": [50, 150], "default_blocks": [2, 3]}
    scheduler = DDIMScheduler.from_config(scheduler_config(RELEASED_CRC20X))
    return _assemble(vq, unet, scheduler, None, meta, source="random", where="benchmark", ssl=ssl).to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=4, help="tiles per forward pass")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bb = build_backbone(args.device)
    n_unet = sum(p.numel() for p in bb.unet.parameters())
    n_vq = sum(p.numel() for p in bb.vae.parameters())
    fx = DiffusionFeatures(bb, device=args.device, batch_size=args.batch)
    side = fx.tile_size + 2 * fx.halo
    tiles = np.random.default_rng(0).integers(0, 256, (16, side, side, 3), dtype=np.uint8)
    fx.extract(tiles[:1])  # warm-up (and the channel probe)
    start, cpu_start = time.perf_counter(), time.process_time()
    feats = fx.extract(tiles)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    channels = sum(f.shape[1] for f in feats)
    print(f"machine: {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, "
          f"device {args.device}, threads {torch.get_num_threads()}, batch {args.batch}")  # fmt: skip
    print(f"UNet {n_unet:,} parameters, VQ {n_vq:,}; timesteps {fx.timesteps}, blocks {fx.blocks}; "
          f"16 tiles of {side}x{side}; {channels} channels at stride {fx.strides[0]}")  # fmt: skip
    print(f"features of a 1024x1024 region: {seconds:.1f} s wall ({seconds / 16:.2f} s per tile), "
          f"{cpu:.1f} s CPU; peak resident memory {peak_mb:,.0f} MB; load average {os.getloadavg()[0]:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
