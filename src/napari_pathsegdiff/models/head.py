"""The segmentation head: a small fully convolutional network over feature maps, savable as a folder.

Architecture (the paper's "simple FCN", kept light so that retraining after an edit is quick):
each feature map is standardised per channel (statistics of the training features, stored with
the weights), reduced to ``hidden`` channels by a 1x1 convolution at its own resolution,
upsampled bilinearly to the resolution of the finest map (the *trunk*), and the maps are
summed; then ``depth`` 3x3 convolutions and a 1x1 classifier give class scores, upsampled
bilinearly to the tile's pixels. Running the convolutions at the finest feature stride rather
than at full resolution costs 16 times less for stride-4 diffusion features, and loses
nothing: full-resolution convolutions would only see bilinearly interpolated features. The per-map reduction keeps wide
diffusion features from overfitting a head trained on few images. No layer normalises over
space, so a pixel's prediction depends only on its neighbourhood and tiles stitch without
seams.

A head is one folder: ``config.json`` (diffusers :class:`ConfigMixin`: channels, strides, class
ids, names, colours, µm/px, the feature config and identity it needs) and
``diffusion_pytorch_model.safetensors``. Weights are read with safetensors only, and strictly:
a missing, corrupt or mismatched file is an error, never a silently random head.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .strict_folder import CONFIG_FILE, WEIGHTS_FILE, load_strict  # noqa: F401 - re-exported

#: Colours given to classes that come without one (index = position in the class list).
PALETTE = (
    "#000000", "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4",
    "#46f0f0", "#f032e6", "#bcf60c", "#fabebe", "#008080", "#e6beff",
)


class HeadError(ValueError):
    """A head folder, file or combination that cannot be used; the message says which and why."""


class SegmentationHead(ModelMixin, ConfigMixin):
    """Per-pixel classifier over the feature maps of one feature extractor.

    Parameters
    ----------
    in_channels, strides : list of int
        Channels and stride of each feature map (``FeatureExtractor.channels`` / ``strides``).
    class_ids : list of int
        The user's class ids (0..255), e.g. ``[0, 1]`` or ``[1, 2, 4, 5]``; output ``k`` of the
        network scores ``class_ids[k]``.
    class_names : list of str
        One name per class id.
    class_colors : list of str
        One ``#rrggbb`` colour per class id.
    mpp : float or None
        µm/px of the analysis (the extractor's, or of the training images); ``None`` for any.
    feature_config : dict
        ``FeatureExtractor.config()`` of the features it was trained on.
    feature_identity : str
        ``FeatureExtractor.identity`` it needs; other extractors are refused.
    hidden : int
        Channels after the per-map reduction and in the 3x3 convolutions.
    depth : int
        Number of 3x3 convolutions.
    dropout : float
        Channel dropout on the fused features while training.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: list[int],
        strides: list[int],
        class_ids: list[int],
        class_names: list[str] | None = None,
        class_colors: list[str] | None = None,
        mpp: float | None = None,
        feature_config: dict | None = None,
        feature_identity: str = "",
        hidden: int = 16,
        depth: int = 2,
        dropout: float = 0.1,
    ):
        super().__init__()
        _check_lists(in_channels, strides, class_ids, class_names, class_colors)
        self.reduce = nn.ModuleList(nn.Conv2d(int(c), hidden, 1) for c in in_channels)
        for i, c in enumerate(in_channels):
            self.register_buffer(f"mean_{i}", torch.zeros(int(c)))
            self.register_buffer(f"std_{i}", torch.ones(int(c)))
        self.drop = nn.Dropout2d(dropout)
        self.convs = nn.ModuleList(nn.Conv2d(hidden, hidden, 3, padding=1) for _ in range(depth))
        self.classifier = nn.Conv2d(hidden, len(class_ids), 1)

    # --- classes ---------------------------------------------------------------------------
    @property
    def class_ids(self) -> list[int]:
        return list(self.config.class_ids)

    @property
    def class_names(self) -> list[str]:
        return list(self.config.class_names or default_class_names(self.class_ids))

    @property
    def class_colors(self) -> list[str]:
        return list(self.config.class_colors or default_class_colors(len(self.class_ids)))

    @property
    def trunk_stride(self) -> int:
        """Stride of the finest feature map: the resolution the convolutions run at."""
        return int(min(self.config.strides))

    @property
    def margin(self) -> int:
        """Context (in trunk pixels) that the convolutions and the final upsampling read."""
        return int(self.config.depth) + (1 if self.trunk_stride > 1 else 0)

    def encode_labels(self, mask: np.ndarray, *, unlabelled: int | None = None, name: str = "mask") -> np.ndarray:
        """Class ids → output indices (int64), ``-1`` where ``mask == unlabelled``.

        Raises :class:`HeadError` naming the mask and the unknown ids.
        """
        mask = np.asarray(mask)
        lut = np.full(256, -2, dtype=np.int64)
        lut[self.class_ids] = np.arange(len(self.class_ids))
        if unlabelled is not None:
            lut[int(unlabelled)] = -1
        if mask.size and (mask.min() < 0 or mask.max() > 255):
            raise HeadError(f"{name} holds values {mask.min()}..{mask.max()}: class ids must be 0..255.")
        out = lut[mask.astype(np.int64)]
        if (out == -2).any():
            unknown = sorted(set(np.unique(mask[out == -2]).tolist()))
            raise HeadError(
                f"{name} holds class id(s) {unknown} that the head does not know; its classes "
                f"are {self.describe_classes()}. Relabel the mask or train a new head."
            )
        return out

    def decode_indices(self, indices: np.ndarray) -> np.ndarray:
        """Output indices → the user's class ids, uint8."""
        return np.asarray(self.class_ids, dtype=np.uint8)[np.asarray(indices)]

    def describe_classes(self) -> str:
        return ", ".join(f"{i} ({n})" for i, n in zip(self.class_ids, self.class_names))

    # --- features ---------------------------------------------------------------------------
    def check_compatible(self, extractor) -> None:
        """Raise :class:`HeadError` unless ``extractor`` gives the features this head needs."""
        need, got = self.config.feature_identity, extractor.identity
        if need != got:
            raise HeadError(
                f"This head was trained on features {need!r} but the extractor gives {got!r}. "
                f"Use the features it needs ({describe_feature_config(self.config.feature_config)}) "
                f"or train a head for these features."
            )
        if list(extractor.channels) != list(self.config.in_channels) or list(extractor.strides) != list(
            self.config.strides
        ):
            raise HeadError(
                f"The extractor's feature maps (channels {extractor.channels}, strides "
                f"{extractor.strides}) differ from the head's ({self.config.in_channels}, "
                f"{self.config.strides})."
            )

    def set_normalization(self, means: list[np.ndarray], stds: list[np.ndarray]) -> None:
        """Per-channel statistics of the training features, one pair per map."""
        for i, (m, s) in enumerate(zip(means, stds)):
            getattr(self, f"mean_{i}").copy_(torch.as_tensor(np.asarray(m), dtype=torch.float32))
            s = np.maximum(np.asarray(s, dtype=np.float64), 1e-6)
            getattr(self, f"std_{i}").copy_(torch.as_tensor(s, dtype=torch.float32))

    # --- network -----------------------------------------------------------------------------
    def reduce_map(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Standardise and reduce map ``i`` to ``hidden`` channels, at its own resolution.

        The standardisation is folded into the 1x1 convolution (same result, no pass over
        the wide input).
        """
        conv = self.reduce[i]
        scale = 1.0 / getattr(self, f"std_{i}")
        weight = conv.weight * scale[None, :, None, None]
        bias = conv.bias - (weight[:, :, 0, 0] * getattr(self, f"mean_{i}")[None, :]).sum(1)
        return F.conv2d(x, weight, bias)

    def classify(self, fused: torch.Tensor) -> torch.Tensor:
        """Class scores ``(B, K, h, w)`` at the trunk's resolution from fused features."""
        h = self.drop(F.silu(fused))
        for conv in self.convs:
            h = F.silu(conv(h))
        return self.classifier(h)

    def upsample_scores(self, scores: torch.Tensor) -> torch.Tensor:
        """Scores at the trunk's resolution brought to the tile's pixels (bilinear)."""
        t = self.trunk_stride
        if t == 1:
            return scores
        return F.interpolate(scores, scale_factor=t, mode="bilinear", align_corners=False)

    def fuse(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Reduced maps upsampled to the trunk's resolution and summed: ``(B, hidden, h, w)``."""
        if len(features) != len(self.reduce):
            raise ValueError(f"The head takes {len(self.reduce)} feature maps, got {len(features)}.")
        t = self.trunk_stride
        fused = None
        for i, (x, s) in enumerate(zip(features, self.config.strides)):
            r = self.reduce_map(i, x.float())
            if s > t:
                r = F.interpolate(r, scale_factor=s // t, mode="bilinear", align_corners=False)
            fused = r if fused is None else fused + r
        return fused

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Logits ``(B, K, H, W)`` at the tile's resolution from maps ``(B, C_i, H/s_i, W/s_i)``."""
        return self.upsample_scores(self.classify(self.fuse(features)))


def new_head(
    extractor,
    class_ids: list[int],
    *,
    class_names: list[str] | None = None,
    class_colors: list[str] | None = None,
    mpp: float | None = None,
    hidden: int = 16,
    depth: int = 2,
    dropout: float = 0.1,
) -> SegmentationHead:
    """An untrained head for the features of ``extractor`` (``mpp`` default: the extractor's)."""
    class_ids = [int(c) for c in class_ids]
    return SegmentationHead(
        in_channels=list(extractor.channels),
        strides=list(extractor.strides),
        class_ids=class_ids,
        class_names=list(class_names) if class_names else default_class_names(class_ids),
        class_colors=list(class_colors) if class_colors else default_class_colors(len(class_ids)),
        mpp=extractor.mpp if mpp is None else float(mpp),
        feature_config=extractor.config(),
        feature_identity=extractor.identity,
        hidden=hidden,
        depth=depth,
        dropout=dropout,
    )


# --- folders ---------------------------------------------------------------------------------
def save_head(head: SegmentationHead, folder: str | Path, *, extra: dict[str, Any] | None = None) -> Path:
    """Write ``head`` (and JSON files ``extra``: {file name: object}) to ``folder`` atomically.

    Everything is written to a temporary folder beside it, then swapped in, so an interrupted
    save never leaves a half-written head. An existing ``folder`` is replaced only when it is
    empty or a head folder.
    """
    folder = Path(folder)
    if folder.exists():
        if not folder.is_dir():
            raise HeadError(f"{folder} is a file: give a folder for the head.")
        if any(folder.iterdir()) and not (folder / CONFIG_FILE).is_file():
            raise HeadError(f"{folder} exists and is not a head folder: choose another folder.")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        head.save_pretrained(tmp, safe_serialization=True)
        for name, obj in (extra or {}).items():
            (tmp / name).write_text(json.dumps(obj, indent=2, default=_json_default))
        old = None
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{tmp.name.rsplit('.', 1)[-1]}")
            folder.rename(old)
        tmp.rename(folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_head(folder: str | Path, *, extractor=None) -> SegmentationHead:
    """Load a head folder (safetensors only, strict), in eval mode.

    Parameters
    ----------
    folder : str or Path
        Folder written by :func:`save_head` (or ``save_pretrained``).
    extractor : FeatureExtractor, optional
        When given, the head must be compatible with it (:meth:`SegmentationHead.check_compatible`).

    Raises
    ------
    FileNotFoundError
        The folder does not exist.
    HeadError
        The config or the weights are missing, unreadable, or do not match each other.
    """
    head = load_strict(folder, SegmentationHead, error=HeadError, what="Head")
    if extractor is not None:
        head.check_compatible(extractor)
    return head


# --- helpers -----------------------------------------------------------------------------------
def default_class_names(class_ids: list[int]) -> list[str]:
    return ["background" if c == 0 else f"class {c}" for c in class_ids]


def default_class_colors(n: int) -> list[str]:
    return [PALETTE[i % len(PALETTE)] for i in range(n)]


def describe_feature_config(config: dict | None) -> str:
    """A short human phrase for a feature config, e.g. ``--features diffusion --backbone X``."""
    if not config:
        return "unknown features"
    kind = config.get("kind", "?")
    if kind == "fused":
        parts = config.get("parts") or []
        text = "--features " + "+".join(str(p.get("kind")) for p in parts)
        diffusion = next((p for p in parts if p.get("kind") == "diffusion"), None)
        return text + (_describe_diffusion(diffusion) if diffusion else "")
    text = f"--features {kind}"
    if kind == "diffusion":
        text += _describe_diffusion(config)
    return text


def _describe_diffusion(config: dict) -> str:
    text = f" --backbone {config.get('backbone')}"
    extra = {k: v for k, v in config.items() if k not in ("kind", "backbone")}
    return text + (f" with {extra}" if extra else "")


def _check_lists(in_channels, strides, class_ids, class_names, class_colors) -> None:
    if len(in_channels) == 0 or len(in_channels) != len(strides):
        raise ValueError(f"Need one stride per feature map: channels {in_channels}, strides {strides}.")
    if any(int(s) < 1 for s in strides) or any(int(s) % min(strides) for s in strides):
        raise ValueError(f"Strides must be >= 1 and multiples of the smallest, got {strides}.")
    ids = [int(c) for c in class_ids]
    if len(ids) < 1 or len(set(ids)) != len(ids) or not all(0 <= c <= 255 for c in ids):
        raise ValueError(f"Class ids must be distinct integers in 0..255, got {class_ids}.")
    for what, values in (("names", class_names), ("colors", class_colors)):
        if values is not None and len(values) != len(ids):
            raise ValueError(f"Need one class {what[:-1]} per class id {ids}, got {values}.")
    for color in class_colors or []:
        if not (isinstance(color, str) and len(color) == 7 and color[0] == "#"):
            raise ValueError(f"Class colours are '#rrggbb' strings, got {color!r}.")
        int(color[1:], 16)


def _json_default(obj):
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"Not JSON serialisable: {type(obj).__name__}")
