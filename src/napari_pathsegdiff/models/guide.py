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
    context_grid : int
        When above 0, :meth:`context` adds ``context_grid**2`` local tokens (the last feature
        map average-pooled to a ``context_grid`` × ``context_grid`` grid, through the same
        projection) after the global token, so the UNet's cross-attention can vary in space.

    Notes
    -----
    Input: float tensor ``(B, 3, H, W)`` scaled to [-1, 1]. Output: ``(B, embed_dim)``.
    :meth:`context` returns the UNet's cross-attention context
    ``(B, 1 + context_grid**2, embed_dim)``.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        widths: tuple[int, ...] = (32, 64, 128, 256),
        embed_dim: int = 256,
        norm_groups: int = 8,
        context_grid: int = 0,
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

    @property
    def num_tokens(self) -> int:
        """Number of context tokens :meth:`context` returns."""
        return 1 + self.config.context_grid**2

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.silu(self.norm(self.body(images)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Embed images in [-1, 1] of shape (B, 3, H, W) into (B, embed_dim)."""
        return self.proj(self._features(images).mean(dim=(2, 3)))

    def context(self, images: torch.Tensor) -> torch.Tensor:
        """Cross-attention context (B, 1 + context_grid**2, embed_dim) for the UNet."""
        h = self._features(images)
        tokens = [h.mean(dim=(2, 3)).unsqueeze(1)]
        g = self.config.context_grid
        if g > 0:
            local = torch.nn.functional.adaptive_avg_pool2d(h, g).flatten(2).transpose(1, 2)
            tokens.append(local)
        return self.proj(torch.cat(tokens, dim=1))


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
