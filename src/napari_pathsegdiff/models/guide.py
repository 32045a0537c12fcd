"""The guide: a small self-supervised tile encoder whose embedding conditions the UNet.

After the pathology LDM of Graikos et al. (CVPR 2024), the denoising UNet of the backbone is
conditioned through cross-attention on a self-supervised embedding of the tile. The guide is
a plain CNN saved like any diffusers model (``config.json`` + safetensors).
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class GuideEncoder(ModelMixin, ConfigMixin):
    """A small residual CNN that embeds an RGB tile into one vector.

    Parameters
    ----------
    in_channels : int
        Image channels (3 for RGB).
    widths : tuple of int
        Channels of each stage; every stage halves the resolution.
    embed_dim : int
        Size of the embedding (the UNet's ``cross_attention_dim``).
    norm_groups : int
        Groups of the GroupNorm layers.

    Notes
    -----
    Input: float tensor ``(B, 3, H, W)`` scaled to [-1, 1]. Output: ``(B, embed_dim)``.
    :meth:`context` returns the UNet's cross-attention context ``(B, 1, embed_dim)``.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        widths: tuple[int, ...] = (32, 64, 128, 256),
        embed_dim: int = 256,
        norm_groups: int = 8,
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, stride=2, padding=1)]
        prev = widths[0]
        for w in widths:
            layers += [_Block(prev, w, norm_groups)]
            prev = w
        self.body = nn.Sequential(*layers)
        self.norm = nn.GroupNorm(min(norm_groups, prev), prev)
        self.proj = nn.Linear(prev, embed_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Embed images in [-1, 1] of shape (B, 3, H, W) into (B, embed_dim)."""
        h = self.body(images)
        h = torch.nn.functional.silu(self.norm(h)).mean(dim=(2, 3))
        return self.proj(h)

    def context(self, images: torch.Tensor) -> torch.Tensor:
        """Cross-attention context (B, 1, embed_dim) for the UNet."""
        return self.forward(images).unsqueeze(1)


class _Block(nn.Module):
    """Residual block that halves the resolution."""

    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.n1 = nn.GroupNorm(min(groups, cin), cin)
        self.c1 = nn.Conv2d(cin, cout, 3, stride=2, padding=1)
        self.n2 = nn.GroupNorm(min(groups, cout), cout)
        self.c2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c1(torch.nn.functional.silu(self.n1(x)))
        h = self.c2(torch.nn.functional.silu(self.n2(h)))
        return h + self.skip(x)
