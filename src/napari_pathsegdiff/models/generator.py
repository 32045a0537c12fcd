"""The style generator: a latent diffusion model conditioned on a layout and on style tiles.

After Style-Extracting Diffusion Models (Öttl et al., ECCV 2024). Two conditionings:

- *content*: the layout (one class id per pixel) as one-hot channels, average-pooled to the
  latent resolution (so a latent pixel holds the share of each class under it) and
  concatenated with the noisy latent at the UNet's input;
- *style*: a trainable style encoder (a :class:`~.guide.GuideEncoder`, usually started from
  the backbone's guide) embeds each of ``K`` style tiles into tokens, an aggregation block
  merges the ``K`` sets of tokens into one context (``"mean"``, or ``"attention"``: learned
  queries attending to all tokens, a set pooling without positions), and the UNet
  cross-attends to it. During training the context is replaced by a learned null context now
  and then (style dropout), which gives classifier-free guidance at sampling time.

Latents are those of the backbone's autoencoder; a frozen copy of it lives inside the
generator, so a generator folder (``config.json`` + ``diffusion_pytorch_model.safetensors``)
decodes on its own. The folder records the classes (ids, names, colours), the identity of the
backbone whose autoencoder it uses, the tile size and the µm/px. Sampling is DDIM and is
deterministic for a given seed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .guide import GuideEncoder
from .heads import default_class_colors, default_class_names

from .strict_folder import CONFIG_FILE, WEIGHTS_FILE, load_strict  # noqa: F401 - re-exported
AGGREGATIONS = ("mean", "attention")

#: UNet architectures of the generator; channels and attention are filled from the backbone.
UNET_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {
        "block_out_channels": [16, 32],
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "attention_head_dim": 2,
    },
    "small": {
        "block_out_channels": [32, 64, 128],
        "down_block_types": ["DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
        "layers_per_block": 1,
        "norm_num_groups": 32,
        "attention_head_dim": 8,
    },
}


class GeneratorError(ValueError):
    """A generator folder, layout or style input that cannot be used; the message says why."""


class MeanAggregation(nn.Module):
    """Merge ``K`` sets of style tokens by their mean: ``(B, K, T, D) -> (B, T, D)``."""

    def __init__(self, dim: int, tokens_in: int):
        super().__init__()
        self.tokens_out = tokens_in

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.mean(dim=1)


class AttentionAggregation(nn.Module):
    """Learned attention pooling of ``K`` sets of style tokens: ``(B, K, T, D) -> (B, Q, D)``.

    ``Q`` learned queries attend to all ``K * T`` tokens (no positional encoding), followed by
    a residual MLP: the output does not depend on the order of the style tiles, and any
    ``K >= 1`` is accepted.
    """

    def __init__(self, dim: int, tokens_in: int, *, queries: int = 4, heads: int = 4):
        super().__init__()
        heads = max(1, min(heads, dim))
        while dim % heads:
            heads -= 1
        self.tokens_out = queries
        self.queries = nn.Parameter(torch.randn(1, queries, dim) * dim**-0.5)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_out = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b = tokens.shape[0]
        kv = self.norm_kv(tokens.flatten(1, 2))
        q = self.queries.expand(b, -1, -1)
        pooled, _ = self.attn(q, kv, kv, need_weights=False)
        pooled = pooled + q
        return pooled + self.mlp(self.norm_out(pooled))


class StyleGenerator(ModelMixin, ConfigMixin):
    """Layout- and style-conditioned latent diffusion model.

    Parameters
    ----------
    unet_config : dict
        ``UNet2DConditionModel`` config without its channels (see :data:`UNET_CONFIGS`); input
        channels (latent + classes), output channels and cross-attention width are set here.
    vae_config : dict
        Config of the backbone's ``AutoencoderKL`` (frozen copy, used to encode and decode).
    style_encoder_config : dict
        :class:`~.guide.GuideEncoder` config of the style encoder.
    scheduler_config : dict
        Noise schedule (a diffusers scheduler config with a beta schedule).
    class_ids : list of int
        Class ids of the layouts (0..255); layout channel ``k`` is ``class_ids[k]``.
    class_names, class_colors : list of str, optional
        One name and one ``#rrggbb`` colour per class id.
    aggregation : {"mean", "attention"}
        How the tokens of several style tiles are merged.
    style_queries : int
        Output tokens of the attention aggregation.
    context_dim : int, optional
        Width of the cross-attention context; default the style encoder's ``embed_dim``.
    backbone_identity : str
        Identity of the backbone whose autoencoder (and guide) it was built on.
    tile_size : int
        Side of the training tiles in pixels.
    mpp : float or None
        µm/px of the training tiles.
    style_size : int
        Side of the style tiles the encoder saw in training (pixels).
    """

    @register_to_config
    def __init__(
        self,
        unet_config: dict,
        vae_config: dict,
        style_encoder_config: dict,
        scheduler_config: dict,
        class_ids: list[int],
        class_names: list[str] | None = None,
        class_colors: list[str] | None = None,
        aggregation: str = "mean",
        style_queries: int = 4,
        context_dim: int | None = None,
        backbone_identity: str = "",
        tile_size: int = 256,
        mpp: float | None = None,
        style_size: int = 128,
    ):
        super().__init__()
        from diffusers import AutoencoderKL, UNet2DConditionModel

        ids = [int(c) for c in class_ids]
        if not ids or len(set(ids)) != len(ids) or not all(0 <= c <= 255 for c in ids):
            raise GeneratorError(f"Class ids must be distinct integers in 0..255, got {class_ids}.")
        for what, values in (("name", class_names), ("colour", class_colors)):
            if values is not None and len(values) != len(ids):
                raise GeneratorError(f"Need one class {what} per class id {ids}, got {values}.")
        if aggregation not in AGGREGATIONS:
            raise GeneratorError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}.")
        embed = int(style_encoder_config.get("embed_dim", 256))
        dim = int(context_dim or embed)
        self.vae = AutoencoderKL.from_config(_public(vae_config)).requires_grad_(False)
        latent = int(self.vae.config.latent_channels)
        unet_cfg = {**_public(unet_config), "in_channels": latent + len(ids), "out_channels": latent,
                    "cross_attention_dim": dim}
        self.unet = UNet2DConditionModel.from_config(unet_cfg)
        self.style_encoder = GuideEncoder.from_config(_public(style_encoder_config))
        self.style_proj = nn.Linear(embed, dim)
        tokens = self.style_encoder.num_tokens
        if aggregation == "mean":
            self.aggregator = MeanAggregation(dim, tokens)
        else:
            self.aggregator = AttentionAggregation(dim, tokens, queries=int(style_queries))
        self.null_context = nn.Parameter(torch.zeros(1, self.aggregator.tokens_out, dim))

    # --- description ---------------------------------------------------------------------
    @property
    def class_ids(self) -> list[int]:
        return [int(c) for c in self.config.class_ids]

    @property
    def class_names(self) -> list[str]:
        return list(self.config.class_names or default_class_names(self.class_ids))

    @property
    def class_colors(self) -> list[str]:
        return list(self.config.class_colors or default_class_colors(len(self.class_ids)))

    @property
    def num_classes(self) -> int:
        return len(self.config.class_ids)

    @property
    def latent_factor(self) -> int:
        """Pixels per latent pixel of the autoencoder."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        """Layout sides must be multiples of this (autoencoder and UNet downsampling)."""
        return self.latent_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Everything but the frozen autoencoder."""
        return [p for n, p in self.named_parameters() if not n.startswith("vae.")]

    def describe_classes(self) -> str:
        return ", ".join(f"{i} ({n})" for i, n in zip(self.class_ids, self.class_names))

    # --- conditions ----------------------------------------------------------------------
    def encode_layout(self, mask: np.ndarray, *, name: str = "layout") -> np.ndarray:
        """Class ids ``(H, W)`` → channel indices (int64).

        Raises
        ------
        GeneratorError
            When the mask holds ids the generator does not know (the message names ``name``
            and the ids) or its sides are not multiples of :attr:`size_multiple`.
        """
        mask = np.asarray(mask)
        if mask.ndim != 2:
            raise GeneratorError(f"{name}: a layout is a 2-D array of class ids, got shape {mask.shape}.")
        if mask.size and (mask.min() < 0 or mask.max() > 255):
            raise GeneratorError(f"{name} holds values {mask.min()}..{mask.max()}: class ids are 0..255.")
        lut = np.full(256, -1, dtype=np.int64)
        lut[self.class_ids] = np.arange(self.num_classes)
        out = lut[mask.astype(np.int64)]
        if (out < 0).any():
            unknown = sorted(np.unique(mask[out < 0]).tolist())
            raise GeneratorError(
                f"{name} holds class id(s) {unknown} that the generator does not know; its "
                f"classes are {self.describe_classes()}. Relabel the layout or train a generator "
                "with these classes."
            )
        m = self.size_multiple
        if mask.shape[0] % m or mask.shape[1] % m:
            raise GeneratorError(
                f"{name} is {mask.shape[0]}x{mask.shape[1]}: layout sides must be multiples of {m} px."
            )
        return out

    def layout_condition(self, indices: torch.Tensor, *, known: torch.Tensor | None = None) -> torch.Tensor:
        """One-hot layout at the latent resolution: ``(B, H, W)`` → ``(B, C, H/f, W/f)``.

        Each latent pixel holds the share of each class under it. Rows where ``known`` is
        false (unlabelled tiles) get all zeros.
        """
        one_hot = F.one_hot(indices.long(), self.num_classes).permute(0, 3, 1, 2).float()
        cond = F.avg_pool2d(one_hot, self.latent_factor)
        if known is not None:
            cond = cond * known.float().view(-1, 1, 1, 1).to(cond)
        return cond

    def style_context(self, styles: torch.Tensor) -> torch.Tensor:
        """Cross-attention context of ``K`` style tiles per sample.

        Parameters
        ----------
        styles : Tensor (B, K, 3, h, w)
            Style tiles in [-1, 1]; any ``K >= 1``.

        Returns
        -------
        Tensor (B, T, D)
        """
        if styles.ndim != 5 or styles.shape[1] < 1 or styles.shape[2] != 3:
            raise GeneratorError(
                f"Style tiles must be a (batch, K >= 1, 3, height, width) tensor, got {tuple(styles.shape)}."
            )
        b, k = styles.shape[:2]
        tokens = self.style_encoder.context(styles.flatten(0, 1))
        tokens = self.style_proj(tokens).view(b, k, tokens.shape[1], -1)
        return self.aggregator(tokens)

    def null(self, batch: int) -> torch.Tensor:
        """The learned null context (no style) for ``batch`` samples."""
        return self.null_context.expand(batch, -1, -1)

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, layout: torch.Tensor,
                context: torch.Tensor) -> torch.Tensor:
        """Predicted noise of ``noisy`` latents given the layout condition and the context."""
        x = torch.cat([noisy, layout.to(noisy.dtype)], dim=1)
        return self.unet(x, timesteps, encoder_hidden_states=context).sample

    # --- autoencoder ---------------------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled posterior mean and standard deviation of images in [-1, 1]."""
        post = self.vae.encode(images).latent_dist
        scale = float(self.vae.config.scaling_factor)
        return post.mean * scale, post.std * scale

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Scaled latents → uint8 RGB ``(B, H, W, 3)``."""
        x = self.vae.decode(latents / float(self.vae.config.scaling_factor)).sample
        x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return x.permute(0, 2, 3, 1).cpu().numpy()

    # --- sampling ------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        layouts: torch.Tensor,
        styles: torch.Tensor | None,
        *,
        steps: int = 25,
        guidance: float = 2.0,
        seed: int | Sequence[int] = 0,
        callback: Callable[[int, int], Any] | None = None,
    ) -> np.ndarray:
        """Generate RGB tiles for layouts in the style of style tiles (DDIM, deterministic).

        Parameters
        ----------
        layouts : Tensor (B, H, W) of int
            Channel indices (:meth:`encode_layout`); sides multiples of :attr:`size_multiple`.
        styles : Tensor (B, K, 3, h, w) or None
            Style tiles in [-1, 1]; ``None`` samples without style (the null context).
        steps : int
            DDIM steps.
        guidance : float
            Classifier-free guidance scale on the style (1: plain conditional sampling).
        seed : int or sequence of int
            One seed for all, or one per sample: the initial noise of sample ``i`` depends
            only on its seed (and ``i`` when a single seed is given), not on the batch.
        callback : callable, optional
            Called as ``callback(step, steps)`` after each step.

        Returns
        -------
        ndarray of uint8, shape (B, H, W, 3)
        """
        if steps < 1:
            raise GeneratorError(f"steps must be 1 or more, got {steps}.")
        b, h, w = layouts.shape
        m = self.size_multiple
        if h % m or w % m:
            raise GeneratorError(f"Layouts of {h}x{w} px: sides must be multiples of {m} px.")
        if styles is not None and styles.shape[0] != b:
            raise GeneratorError(f"{b} layouts but style tiles for {styles.shape[0]} samples.")
        device, dtype = self.device, self.unet.dtype
        seeds = [int(seed) + i for i in range(b)] if isinstance(seed, (int, np.integer)) else [int(s) for s in seed]
        if len(seeds) != b:
            raise GeneratorError(f"{b} layouts but {len(seeds)} seeds.")
        f = self.latent_factor
        shape = (self.vae.config.latent_channels, h // f, w // f)
        z = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
        z = z.to(device, dtype)
        cond = self.layout_condition(layouts.to(device)).to(dtype)
        uncond_ctx = self.null(b).to(dtype)
        ctx = self.style_context(styles.to(device, dtype)) if styles is not None else uncond_ctx
        guided = styles is not None and guidance != 1.0
        scheduler = ddim_scheduler(self.config.scheduler_config)
        scheduler.set_timesteps(steps, device=device)
        z = z * scheduler.init_noise_sigma
        for i, t in enumerate(scheduler.timesteps):
            tt = torch.full((b,), int(t), device=device, dtype=torch.long)
            if guided:
                eps_u, eps_c = self.forward(
                    torch.cat([z, z]), torch.cat([tt, tt]), torch.cat([cond, cond]), torch.cat([uncond_ctx, ctx])
                ).chunk(2)
                eps = eps_u + guidance * (eps_c - eps_u)
            else:
                eps = self.forward(z, tt, cond, ctx)
            z = scheduler.step(eps, t, z, eta=0.0).prev_sample
            if callback is not None:
                callback(i + 1, steps)
        return self.decode(z)


# --- building, saving, loading -------------------------------------------------------------


def build_generator(
    backbone,
    *,
    class_ids: list[int],
    class_names: list[str] | None = None,
    class_colors: list[str] | None = None,
    config: str | dict = "small",
    aggregation: str = "mean",
    style_queries: int = 4,
    init_style_from_guide: bool = True,
    style_encoder: dict | None = None,
    style_size: int = 128,
    seed: int = 0,
) -> StyleGenerator:
    """A new generator on a backbone's autoencoder, its style encoder started from the guide.

    Parameters
    ----------
    backbone : Backbone
        Gives the autoencoder (copied, frozen), the noise schedule, the guide (whose
        architecture and, with ``init_style_from_guide``, weights start the style encoder), the
        tile size, the µm/px and the identity recorded in the generator.
    class_ids, class_names, class_colors
        Classes of the layouts.
    config : {"tiny", "small"} or dict
        UNet architecture (:data:`UNET_CONFIGS`).
    aggregation : {"mean", "attention"}
    style_queries : int
    init_style_from_guide : bool
        Copy the guide's weights into the style encoder (else random).
    style_encoder : dict, optional
        GuideEncoder config when the backbone has no guide.
    style_size : int
        Side of the style tiles (pixels).
    seed : int
        Seed of the new weights (the global torch RNG is left untouched).
    """
    unet = dict(UNET_CONFIGS[config]) if isinstance(config, str) else dict(config)
    guide = getattr(backbone, "guide", None)
    if guide is not None:
        enc_cfg = _public(dict(guide.config))
    elif style_encoder is not None:
        enc_cfg = dict(style_encoder)
        init_style_from_guide = False
    else:
        raise GeneratorError(
            f"Backbone {backbone.name} has no guide to start the style encoder from: pass a "
            "style_encoder config."
        )
    enc_cfg.setdefault("_class_name", "GuideEncoder")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = StyleGenerator(
            unet_config=unet,
            vae_config=_public(backbone.vae.config),
            style_encoder_config=enc_cfg,
            scheduler_config=_public(backbone.scheduler.config),
            class_ids=[int(c) for c in class_ids],
            class_names=list(class_names) if class_names else None,
            class_colors=list(class_colors) if class_colors else None,
            aggregation=aggregation,
            style_queries=style_queries,
            backbone_identity=backbone.identity,
            tile_size=int(backbone.tile_size),
            mpp=backbone.mpp,
            style_size=int(style_size),
        )
    gen.vae.load_state_dict(backbone.vae.state_dict())
    if init_style_from_guide:
        gen.style_encoder.load_state_dict(guide.state_dict())
    return gen.float()


def save_generator(gen: StyleGenerator, folder: str | Path) -> Path:
    """Write ``config.json`` and ``diffusion_pytorch_model.safetensors`` to ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    gen.save_pretrained(folder, safe_serialization=True)
    return folder


def load_generator(folder: str | Path, *, device: str | torch.device = "cpu") -> StyleGenerator:
    """Load a generator folder strictly (safetensors only), in eval mode.

    Raises
    ------
    FileNotFoundError
        The folder does not exist.
    GeneratorError
        The config or the weights are missing, unreadable, or do not match.
    """
    from .device import resolve_device

    gen = load_strict(folder, StyleGenerator, error=GeneratorError, what="Generator")
    return gen.to(resolve_device(device)).eval()


def generator_identity(folder: str | Path) -> str:
    """``generator@<12 hex>``: SHA-256 of the folder's weights file."""
    digest = hashlib.sha256()
    with open(Path(folder) / WEIGHTS_FILE, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return f"generator@{digest.hexdigest()[:12]}"


def ddim_scheduler(config: dict):
    """A DDIM scheduler with the beta schedule of ``config`` (keys DDIM does not take are left out)."""
    import inspect

    from diffusers import DDIMScheduler

    accepted = set(inspect.signature(DDIMScheduler.__init__).parameters)
    return DDIMScheduler.from_config({k: v for k, v in _public(config).items() if k in accepted})


def _public(config) -> dict:
    """A JSON-ready config dict without diffusers' private keys (``_class_name``, ...)."""
    public = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    return json.loads(json.dumps(public, default=str))
