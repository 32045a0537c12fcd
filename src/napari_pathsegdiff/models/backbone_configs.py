"""Architectures of the project's backbones, as plain configuration dictionaries.

Each configuration has the shape ``{"vae": {...}, "unet": {...}, "guide": {...} | None,
"scheduler": {...}, "meta": {...}}``: the first four are diffusers-style ``config.json``
contents (their ``_class_name`` says which class builds them), ``meta`` is the content of
``pathsegdiff_backbone.json`` (see ``docs/backbone-format.md``).

``SMALL`` is the shipped default, sized for a 2-core CPU (7.6 M parameters, 15 MB in fp16):

- an ``AutoencoderKL`` of factor 4, channels 16/32/64, no attention (0.65 M): a 256-px tile
  becomes a 4×64×64 latent, 2 µm per latent pixel at 0.5 µm/px, so nuclei of 6–10 µm span
  several latent pixels. With the same training time a factor-8 autoencoder reconstructed
  no high-frequency (nuclear) detail at all while factor 4 recovered part of it, and the
  factor-8 latents would give the head features of stride 8 at best. Channels 16/32/64 encode
  a tile about 4× faster than 32/64/128 (25 vs 96 ms on one CPU thread), which the speed goal
  needs (the encoder runs on every tile);
- a 4-level ``UNet2DConditionModel`` (channels 32/64/128/128, 5.7 M) whose only attention
  (self-attention and cross-attention to the guide's tokens) is at the 8×8 level: 0.44 s for
  sixteen 64×64 latents on one CPU thread, against 0.72 s for channels 32/64/128/256;
- the residual CNN guide (1.3 M) with one global and 2×2 local context tokens of 256 values.

``TINY`` builds and runs in milliseconds, for tests.
"""

from __future__ import annotations

import copy
from typing import Any

BackboneConfig = dict[str, Any]

_SCHEDULER: dict[str, Any] = {
    "_class_name": "DDPMScheduler",
    "num_train_timesteps": 1000,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "prediction_type": "epsilon",
    "clip_sample": False,
}

SMALL: BackboneConfig = {
    "vae": {
        "_class_name": "AutoencoderKL",
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 3,
        "up_block_types": ["UpDecoderBlock2D"] * 3,
        "block_out_channels": [16, 32, 64],
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 8,
        "sample_size": 256,
        "scaling_factor": 1.0,
        "mid_block_add_attention": False,
    },
    "unet": {
        "_class_name": "UNet2DConditionModel",
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"],
        "block_out_channels": [32, 64, 128, 128],
        "layers_per_block": 1,
        "norm_num_groups": 32,
        "cross_attention_dim": 256,
        "attention_head_dim": 4,
    },
    "guide": {
        "_class_name": "GuideEncoder",
        "in_channels": 3,
        "widths": [32, 64, 128, 256],
        "embed_dim": 256,
        "norm_groups": 8,
        "context_grid": 2,
    },
    "scheduler": dict(_SCHEDULER),
    "meta": {
        "format": 1,
        "name": "pathsegdiff-small",
        "mpp": 0.5,
        "tile_size": 256,
        "conditioning": "guide",
        "default_timesteps": [50, 150],
        "default_blocks": [1, 2, 3],
    },
}

TINY: BackboneConfig = {
    "vae": {
        "_class_name": "AutoencoderKL",
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 2,
        "up_block_types": ["UpDecoderBlock2D"] * 2,
        "block_out_channels": [8, 16],
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 4,
        "sample_size": 32,
        "scaling_factor": 1.0,
        "mid_block_add_attention": False,
    },
    "unet": {
        "_class_name": "UNet2DConditionModel",
        "sample_size": 16,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        "block_out_channels": [16, 32],
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "cross_attention_dim": 16,
        "attention_head_dim": 2,
    },
    "guide": {
        "_class_name": "GuideEncoder",
        "in_channels": 3,
        "widths": [8, 16],
        "embed_dim": 16,
        "norm_groups": 4,
        "context_grid": 0,
    },
    "scheduler": dict(_SCHEDULER),
    "meta": {
        "format": 1,
        "name": "pathsegdiff-tiny",
        "mpp": 0.5,
        "tile_size": 32,
        "conditioning": "guide",
        "default_timesteps": [50],
        "default_blocks": [0, 1],
    },
}

CONFIGS: dict[str, BackboneConfig] = {"small": SMALL, "tiny": TINY}


def get_config(name: str) -> BackboneConfig:
    """A deep copy of the named configuration (``"small"`` or ``"tiny"``).

    Raises
    ------
    ValueError
        For an unknown name; the message lists the known ones.
    """
    try:
        return copy.deepcopy(CONFIGS[name])
    except KeyError:
        raise ValueError(
            f"Unknown backbone configuration {name!r}: choose one of {', '.join(sorted(CONFIGS))}."
        ) from None
