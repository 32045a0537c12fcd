"""Diffusion features: decoder activations of a frozen latent diffusion UNet (DESIGN.md §4).

For a batch of RGB tiles: scale to [-1, 1] → encode with the autoencoder to ``z0`` → for each
timestep ``t`` noise it, ``zt = sqrt(a_t) z0 + sqrt(1 - a_t) eps``, with ``eps`` drawn from a
generator seeded with ``seed`` (the same noise for every tile, whatever batch or position it
comes in) → one UNet pass with the guide's context (or the null context) → the outputs of the
chosen ``unet.up_blocks`` are read by forward hooks, and the pass stops after the last of them.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .backbone import Backbone, context_dim, load_backbone
from .device import autocast, resolve_device
from .features_base import FeatureExtractor

_FLOAT16_MAX = float(np.finfo(np.float16).max)

# Hooks live on the (shared) UNet modules: one hooked forward pass at a time in this process.
_HOOKED_FORWARD = threading.Lock()


class _StopForward(Exception):
    """Raised by the hook of the last needed block to end the UNet pass early."""


class DiffusionFeatures(FeatureExtractor):
    """Features of a diffusion backbone: UNet decoder blocks at one or more timesteps.

    Parameters
    ----------
    backbone : Backbone or str or Path
        A loaded backbone, or a spec for :func:`~napari_pathsegdiff.models.backbone.load_backbone`.
    timesteps : sequence of int, optional
        Diffusion timesteps; default ``backbone.default_timesteps``.
    blocks : sequence of int, optional
        Indices of ``unet.up_blocks`` whose outputs are features; default
        ``backbone.default_blocks``.
    seed : int
        Seed of the noise added to the latents.
    conditioned : bool
        Give the UNet the guide's embedding of the tile (when the backbone has a guide), or the
        SSL encoder's (a converted pathology LDM with an encoder); ``False`` gives the
        unconditional context: zeros, or the SSL embedder's unconditional tokens.
    device : str or torch.device
        ``"cpu"`` (default), ``"cuda"`` or ``"auto"``; CUDA runs under bf16/fp16 autocast.
    batch_size : int
        Tiles per forward pass.
    tile_size : int, optional
        Preferred tile side; default the backbone's training tile size.
    halo : int, optional
        Context around each tile; default ``tile_size // 8`` rounded up to :attr:`multiple`.

    Notes
    -----
    :meth:`extract` returns one map per ``(timestep, block)`` pair, timestep-major, in the
    order of :attr:`maps`.
    """

    kind = "diffusion"

    def __init__(
        self,
        backbone: Backbone | str | Path,
        *,
        timesteps: Sequence[int] | None = None,
        blocks: Sequence[int] | None = None,
        seed: int = 0,
        conditioned: bool = True,
        device: str | torch.device = "cpu",
        batch_size: int = 8,
        tile_size: int | None = None,
        halo: int | None = None,
    ):
        self.device = resolve_device(device)
        if not isinstance(backbone, Backbone):
            backbone = load_backbone(backbone, device=self.device)
        self.backbone = backbone.to(self.device)
        unet = backbone.unet
        n_up = len(unet.up_blocks)
        n_t = int(backbone.scheduler.config.num_train_timesteps)
        self.timesteps = _unique_ints(
            backbone.default_timesteps if timesteps is None else timesteps, "timesteps", 0, n_t
        )
        self.blocks = _unique_ints(backbone.default_blocks if blocks is None else blocks, "blocks", 0, n_up)
        self.seed = int(seed)
        self.conditioned = bool(conditioned)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        self.batch_size = int(batch_size)
        n_down = sum(getattr(b, "downsamplers", None) is not None for b in unet.down_blocks)
        self.multiple = backbone.latent_factor * 2**n_down
        self.mpp = backbone.mpp
        self.tile_size = int(backbone.tile_size if tile_size is None else tile_size)
        if self.tile_size < 1 or self.tile_size % self.multiple:
            raise ValueError(
                f"tile_size must be a positive multiple of {self.multiple} for backbone "
                f"{backbone.name}, got {self.tile_size}."
            )
        if halo is None:
            halo = max(1, -(-(self.tile_size // 8) // self.multiple)) * self.multiple
        if halo < 0 or (2 * halo) % self.multiple:
            raise ValueError(f"halo must be >= 0 with 2 * halo a multiple of {self.multiple}, got {halo}.")
        self.halo = int(halo)
        self.maps = [(t, b) for t in self.timesteps for b in self.blocks]
        self._noise: dict[tuple[int, ...], torch.Tensor] = {}

    # --- interface ---------------------------------------------------------------------------

    @property
    def identity(self) -> str:
        t = ",".join(map(str, self.timesteps))
        b = ",".join(map(str, self.blocks))
        cond = self._context_kind() in ("guide", "ssl-encoder")
        return f"diffusion:{self.backbone.identity}:t={t}:blocks={b}:seed={self.seed}:cond={int(cond)}"

    @property
    def channels(self) -> list[int]:
        return self._probe[0]

    @property
    def strides(self) -> list[int]:
        return self._probe[1]

    def config(self) -> dict[str, Any]:
        config = {
            "kind": "diffusion",
            "backbone": self.backbone.source,
            "timesteps": list(self.timesteps),
            "blocks": list(self.blocks),
            "seed": self.seed,
            "conditioned": self.conditioned,
        }
        if self.backbone.ssl is not None:  # recorded in a head: SSL encoder or unconditional tokens
            config["context"] = self._context_kind()
        return config

    def _context_kind(self) -> str:
        """What the UNet cross-attends to, for the record: ``guide``, ``ssl-encoder``,
        ``ssl-unconditional``, ``null`` or ``none``."""
        bb = self.backbone
        if context_dim(bb.unet) is None:
            return "none"
        if bb.ssl is not None:
            return "ssl-encoder" if self.conditioned and bb.ssl.conditioned else "ssl-unconditional"
        return "guide" if self.conditioned and bb.guide is not None else "null"

    def extract(self, tiles: np.ndarray) -> list[np.ndarray]:
        """Feature maps of a batch of RGB tiles.

        Parameters
        ----------
        tiles : ndarray of uint8, shape (B, H, W, 3)
            ``H`` and ``W`` multiples of :attr:`multiple`.

        Returns
        -------
        list of ndarray of float16
            One ``(B, C, H // stride, W // stride)`` array per entry of :attr:`maps`.
        """
        tiles = self.check_tiles(tiles)
        step = self.batch_size
        chunks = [self._extract_batch(tiles[i : i + step]) for i in range(0, len(tiles), step)]
        if not chunks:
            h, w = tiles.shape[1:3]
            return [
                np.zeros((0, c, h // s, w // s), np.float16) for c, s in zip(self.channels, self.strides)
            ]
        return [np.concatenate(parts) for parts in zip(*chunks)]

    # --- internals ---------------------------------------------------------------------------

    @cached_property
    def _probe(self) -> tuple[list[int], list[int]]:
        """Channels and strides, from one pass over a small blank tile."""
        side = self.multiple
        feats = self._extract_batch(np.zeros((1, side, side, 3), np.uint8))
        return [f.shape[1] for f in feats], [side // f.shape[2] for f in feats]

    @torch.inference_mode()
    def _extract_batch(self, tiles: np.ndarray) -> list[np.ndarray]:
        bb = self.backbone
        dtype = next(bb.unet.parameters()).dtype
        x = torch.from_numpy(tiles).to(self.device).permute(0, 3, 1, 2).to(dtype) / 127.5 - 1.0
        out: list[np.ndarray] = []
        with autocast(self.device):
            z0 = self._encode(x)
            kwargs = self._context(x, dtype)
            eps = self._noise_like(z0)
            alphas = bb.scheduler.alphas_cumprod
            for t in self.timesteps:
                a = float(alphas[t])
                zt = (a**0.5) * z0 + ((1.0 - a) ** 0.5) * eps
                timestep = torch.full((len(x),), t, device=self.device, dtype=torch.long)
                with _HOOKED_FORWARD, _capture(bb.unet.up_blocks, self.blocks) as captured:
                    try:
                        bb.unet(zt, timestep, **kwargs)
                    except _StopForward:
                        pass
                for b in self.blocks:
                    feat = captured[b].float().clamp_(-_FLOAT16_MAX, _FLOAT16_MAX)
                    out.append(feat.to(torch.float16).cpu().numpy())
        return out

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled latents, as the diffusers pipelines give them to the UNet.

        AutoencoderKL: the mean of the posterior (deterministic); VQModel: the latents before
        quantisation. Both times ``scaling_factor`` (and minus ``shift_factor`` when set).
        """
        vae = self.backbone.vae
        if type(vae).__name__ == "VQModel":
            z = vae.encode(x).latents
        else:
            z = vae.encode(x).latent_dist.mean
        shift = vae.config.get("shift_factor")
        if shift is not None:
            z = z - shift
        return z * vae.config.scaling_factor

    def _context(self, x: torch.Tensor, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        bb = self.backbone
        dim = context_dim(bb.unet)
        if dim is None:
            return {}
        if bb.ssl is not None:  # a converted pathology LDM: its unconditional tokens are the biases
            context = bb.ssl.context(x) if self.conditioned else bb.ssl.unconditional(len(x))
            context = context.to(dtype)
        elif self.conditioned and bb.guide is not None:
            context = bb.guide.context(x)
        else:  # the null condition: zeros, as in training with condition dropout
            tokens = getattr(bb.guide, "num_tokens", 1)
            context = torch.zeros((len(x), tokens, dim), device=self.device, dtype=dtype)
        return {"encoder_hidden_states": context}

    def _noise_like(self, z: torch.Tensor) -> torch.Tensor:
        """The noise of one latent of this shape, the same for every tile, broadcast over the batch."""
        shape = tuple(z.shape[1:])
        if shape not in self._noise:
            generator = torch.Generator().manual_seed(self.seed)
            self._noise[shape] = torch.randn(shape, generator=generator, dtype=torch.float32)
        return self._noise[shape].to(device=z.device, dtype=z.dtype).unsqueeze(0).expand_as(z)


@contextlib.contextmanager
def _capture(up_blocks: torch.nn.ModuleList, blocks: Sequence[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Forward hooks storing the outputs of ``up_blocks[i]`` for ``i`` in ``blocks``.

    The hook of the last block raises :class:`_StopForward` to end the pass. The handles are
    removed on exit, also when the forward pass raised.
    """
    captured: dict[int, torch.Tensor] = {}
    last = max(blocks)
    handles = []

    def make_hook(index: int):
        def hook(module, args, output):
            captured[index] = output[0] if isinstance(output, tuple) else output
            if index == last:
                raise _StopForward

        return hook

    try:
        for i in blocks:
            handles.append(up_blocks[i].register_forward_hook(make_hook(i)))
        yield captured
    finally:
        for handle in handles:
            handle.remove()
    missing = [i for i in blocks if i not in captured]
    if missing:
        raise RuntimeError(f"UNet up blocks {missing} did not run during the forward pass.")


def _unique_ints(values: Sequence[int], what: str, low: int, high: int) -> list[int]:
    """Sorted unique integers in ``[low, high)``; a ValueError naming ``what`` otherwise."""
    values = list(values)
    if not values or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{what} must be a non-empty list of integers, got {values!r}.")
    bad = [int(v) for v in values if not low <= v < high]
    if bad:
        raise ValueError(f"{what} {bad} out of range: they must lie in [{low}, {high}).")
    return sorted({int(v) for v in values})


def from_config(config: dict[str, Any], *, device: str | torch.device = "cpu") -> DiffusionFeatures:
    """Rebuild a :class:`DiffusionFeatures` from :meth:`DiffusionFeatures.config` (loads the backbone)."""
    if config.get("kind", "diffusion") != "diffusion":
        raise ValueError(f"Not a diffusion feature config: kind {config.get('kind')!r}.")
    if "backbone" not in config:
        raise ValueError("Diffusion feature config lacks 'backbone'.")
    return DiffusionFeatures(
        load_backbone(config["backbone"], device=device),
        timesteps=config.get("timesteps"),
        blocks=config.get("blocks"),
        seed=config.get("seed", 0),
        conditioned=config.get("conditioned", True),
        device=device,
    )
