"""Self-supervised conditioning of the pathology LDM of Graikos et al. (CVPR 2024).

The released UNets cross-attend to tokens made from self-supervised embeddings of the tile:
L2-normalise each embedding, then one Linear layer per embedding (``PatchEmbedder``: one
token from a patch embedding; ``SSLEmbedder``: two tokens, patch then region). Zero
embeddings stay zero after normalisation, so the unconditional tokens are the Linear biases:
that is what training with condition dropout taught the UNet as "no condition".

:class:`ConditioningEmbedder` is that embedder, saved like any diffusers model. The
self-supervised encoder itself (iBOT ViT-B/16, HIPT ViT-S/16) is optional: a transformers
model folder that :func:`load_ssl_encoder` reads from disk or the local hub cache, never
downloading. :class:`SSLConditioning` puts the two together for the feature extractor.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

#: ImageNet statistics, used when an encoder folder has no ``preprocessor_config.json``.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SSLEncoderError(ValueError):
    """An SSL encoder folder or hub id that cannot be used; the message says which and why."""


class ConditioningEmbedder(ModelMixin, ConfigMixin):
    """L2-normalise self-supervised embeddings, then one Linear layer each: one token per input.

    Parameters
    ----------
    feature_dims : sequence of int
        Width of each input embedding, in token order (``[768]`` for the CRC 20x
        ``PatchEmbedder``; ``[384, 768]`` for the BRCA 20x ``SSLEmbedder``, patch then region).
    context_dim : int
        Width of the tokens (the UNet's ``cross_attention_dim``).
    normalize : bool
        L2-normalise each embedding first (``F.normalize``, eps 1e-12), as ``normalize_ssl``.
    source_class : str
        Name of the original embedder class, for the record.
    feature_names : sequence of str
        Names of the inputs (``"patch"``, ``"region"``), for messages and the record.

    Examples
    --------
    >>> emb = ConditioningEmbedder(feature_dims=[4, 6], context_dim=8)
    >>> emb([torch.ones(2, 4), None]).shape
    torch.Size([2, 2, 8])
    """

    @register_to_config
    def __init__(
        self,
        feature_dims: Sequence[int] = (768,),
        context_dim: int = 512,
        normalize: bool = True,
        source_class: str = "PatchEmbedder",
        feature_names: Sequence[str] = ("patch",),
    ):
        super().__init__()
        if len(feature_names) != len(feature_dims):
            raise ValueError(f"feature_names {list(feature_names)} and feature_dims {list(feature_dims)} differ in length.")
        self.fcs = nn.ModuleList(nn.Linear(int(d), int(context_dim)) for d in feature_dims)

    @property
    def num_tokens(self) -> int:
        """Number of context tokens (one per input embedding)."""
        return len(self.fcs)

    def forward(self, features: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """Tokens ``(B, num_tokens, context_dim)`` of one embedding per input.

        Parameters
        ----------
        features : sequence of Tensor or None
            One ``(B, feature_dims[i])`` tensor per input; ``None`` is a missing embedding,
            replaced by zeros as in the original code (its token is then the layer's bias).
            At least one entry must be a tensor (it gives the batch size).
        """
        if len(features) != self.num_tokens:
            raise ValueError(f"expected {self.num_tokens} embeddings ({list(self.config.feature_names)}), got {len(features)}.")
        given = [f for f in features if f is not None]
        if not given:
            raise ValueError("at least one embedding must be given; use unconditional() for none.")
        batch, ref = len(given[0]), given[0]
        tokens = []
        for fc, feat, dim in zip(self.fcs, features, self.config.feature_dims):
            if feat is None:
                feat = torch.zeros((batch, dim), device=ref.device, dtype=fc.weight.dtype)
            elif feat.shape != (batch, dim):
                raise ValueError(f"embedding of shape {tuple(feat.shape)}, expected ({batch}, {dim}).")
            feat = feat.to(fc.weight.dtype)
            if self.config.normalize:
                feat = torch.nn.functional.normalize(feat, dim=-1)
            tokens.append(fc(feat))
        return torch.stack(tokens, dim=1)

    def unconditional(self, batch: int) -> torch.Tensor:
        """The unconditional tokens (zero embeddings, i.e. the biases), ``(batch, T, D)``."""
        bias = torch.stack([fc.bias for fc in self.fcs])
        return bias.unsqueeze(0).expand(batch, -1, -1)


class SSLEncoder(nn.Module):
    """A transformers vision model that embeds RGB tiles into its class-token embedding.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A ViT-like model whose output has ``last_hidden_state`` (``(B, 1 + N, width)``).
    image_size : int
        Side the tiles are resized to before the encoder.
    mean, std : sequence of float
        Per-channel normalisation of RGB in [0, 1].
    """

    def __init__(self, model: nn.Module, image_size: int, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.model = model
        self.image_size = int(image_size)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    @property
    def width(self) -> int:
        """Width of the embedding (``hidden_size`` of the model)."""
        return int(self.model.config.hidden_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Embed RGB images in [-1, 1] of shape (B, 3, H, W) into (B, width)."""
        x = (images.float() + 1.0) / 2.0
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = torch.nn.functional.interpolate(
                x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True, align_corners=False
            )
        x = (x - self.mean) / self.std
        dtype = next(self.model.parameters()).dtype
        out = self.model(pixel_values=x.to(dtype))
        return out.last_hidden_state[:, 0]


class SSLConditioning(nn.Module):
    """The embedder and, when there is one, the encoder that feeds its first input.

    Parameters
    ----------
    embedder : ConditioningEmbedder
    encoder : SSLEncoder or None
        Without an encoder every tile gets the unconditional tokens. The encoder feeds the
        first (patch) input; the others (the BRCA region embedding) are always missing, as in
        the released BRCA notebook, so their tokens are the biases.
    """

    def __init__(self, embedder: ConditioningEmbedder, encoder: SSLEncoder | None = None):
        super().__init__()
        self.embedder = embedder
        self.encoder = encoder
        if encoder is not None and encoder.width != embedder.config.feature_dims[0]:
            raise SSLEncoderError(
                f"the SSL encoder embeds into {encoder.width} values but the conditioning embedder "
                f"({embedder.config.source_class}) takes {embedder.config.feature_dims[0]} for its "
                f"{embedder.config.feature_names[0]} input: it is not the encoder this model was trained with."
            )

    @property
    def num_tokens(self) -> int:
        """Number of context tokens."""
        return self.embedder.num_tokens

    @property
    def conditioned(self) -> bool:
        """Whether tiles are embedded (``True``) or all get the unconditional tokens."""
        return self.encoder is not None

    def context(self, images: torch.Tensor) -> torch.Tensor:
        """Cross-attention context ``(B, T, D)`` for RGB images in [-1, 1]."""
        if self.encoder is None:
            return self.unconditional(len(images))
        feats = self.encoder(images)
        return self.embedder([feats] + [None] * (self.num_tokens - 1))

    def unconditional(self, batch: int) -> torch.Tensor:
        """The unconditional tokens, ``(batch, T, D)``."""
        return self.embedder.unconditional(batch)


def load_ssl_encoder(spec: str | Path, *, dtype: torch.dtype = torch.float32) -> SSLEncoder:
    """Load a transformers vision encoder from a folder or the local hub cache (no download).

    Parameters
    ----------
    spec : str or Path
        A folder saved by transformers ``save_pretrained`` (``config.json`` and safetensors
        weights; optional ``preprocessor_config.json`` for the input size and normalisation),
        or a hub id ``"org/name"`` already in the local cache.
    dtype : torch.dtype
        Precision of the weights.

    Raises
    ------
    SSLEncoderError
        transformers is not installed, the folder or id is missing, or the model cannot be
        loaded from safetensors weights.
    """
    folder = _encoder_folder(spec)
    try:
        import transformers
    except ImportError as exc:
        raise SSLEncoderError(
            f"SSL encoder {spec}: reading it needs the transformers package, which is not "
            "installed: `pip install transformers` (or leave out the encoder: the features then "
            "use the unconditional tokens)."
        ) from exc
    try:
        model = transformers.AutoModel.from_pretrained(
            folder, local_files_only=True, use_safetensors=True, dtype=dtype
        )
    except Exception as exc:  # noqa: BLE001 - every failure means this folder is not usable
        raise SSLEncoderError(
            f"SSL encoder {folder}: cannot load it as a transformers model from safetensors "
            f"weights ({type(exc).__name__}: {' '.join(str(exc).split())[:300]}). Pass a folder "
            "written by transformers `save_pretrained` (config.json + model.safetensors)."
        ) from exc
    if not hasattr(model.config, "hidden_size"):
        raise SSLEncoderError(f"SSL encoder {folder}: {type(model).__name__} has no hidden_size; expected a ViT-like model.")
    size, mean, std = _preprocessing(folder, model.config)
    return SSLEncoder(model.eval().requires_grad_(False), size, mean, std)


def save_ssl_encoder(encoder: SSLEncoder, folder: str | Path) -> None:
    """Write an encoder as a transformers folder with its preprocessing, loadable by :func:`load_ssl_encoder`."""
    folder = Path(folder)
    encoder.model.save_pretrained(folder, safe_serialization=True)
    pre = {
        "size": {"height": encoder.image_size, "width": encoder.image_size},
        "image_mean": [float(v) for v in encoder.mean.flatten()],
        "image_std": [float(v) for v in encoder.std.flatten()],
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")


def _encoder_folder(spec: str | Path) -> Path:
    path = Path(str(spec)).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists():
        raise SSLEncoderError(f"SSL encoder {path} is a file: pass the model folder (config.json + model.safetensors).")
    if isinstance(spec, str) and spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(spec, local_files_only=True))
        except Exception as exc:  # noqa: BLE001 - every failure means "not usable offline"
            raise SSLEncoderError(
                f"SSL encoder {spec!r}: no such folder, and as a hub id it is not in the local hub "
                "cache; nothing is downloaded. Download it on a machine with internet "
                f"(`huggingface-cli download {spec}`) and copy the cache, or pass the folder itself."
            ) from exc
    raise SSLEncoderError(f"SSL encoder {spec}: no such folder.")


def _preprocessing(folder: Path, config) -> tuple[int, list[float], list[float]]:
    """Input side and normalisation: ``preprocessor_config.json`` if any, else the model config and ImageNet's."""
    size = int(getattr(config, "image_size", 224) or 224)
    mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
    pre_file = folder / "preprocessor_config.json"
    if pre_file.is_file():
        try:
            pre = json.loads(pre_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SSLEncoderError(f"{pre_file}: not readable JSON ({exc}).") from exc
        given = pre.get("size")
        if isinstance(given, dict):
            given = given.get("height") or given.get("shortest_edge")
        size = int(given or size)
        mean = [float(v) for v in pre.get("image_mean", mean)]
        std = [float(v) for v in pre.get("image_std", std)]
    return size, mean, std
