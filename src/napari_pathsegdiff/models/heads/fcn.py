"""The ``fcn`` head: a small fully convolutional network over feature maps.

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

An FCN head is one folder: ``config.json`` (diffusers :class:`ConfigMixin`: channels, strides, class
ids, names, colours, µm/px, the feature config and identity it needs) and
``diffusion_pytorch_model.safetensors``. Weights are read with safetensors only, and strictly:
a missing, corrupt or mismatched file is an error, never a silently random head.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..strict_folder import load_strict
from .base import HeadError, HeadMixin, check_classes, check_maps, default_class_colors, default_class_names


class SegmentationHead(HeadMixin, ModelMixin, ConfigMixin):
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

    head_kind = "fcn"

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
        check_maps(in_channels, strides)
        check_classes(class_ids, class_names, class_colors)
        self.reduce = nn.ModuleList(nn.Conv2d(int(c), hidden, 1) for c in in_channels)
        for i, c in enumerate(in_channels):
            self.register_buffer(f"mean_{i}", torch.zeros(int(c)))
            self.register_buffer(f"std_{i}", torch.ones(int(c)))
        self.drop = nn.Dropout2d(dropout)
        self.convs = nn.ModuleList(nn.Conv2d(hidden, hidden, 3, padding=1) for _ in range(depth))
        self.classifier = nn.Conv2d(hidden, len(class_ids), 1)

    @property
    def trunk_stride(self) -> int:
        """Stride of the finest feature map: the resolution the convolutions run at."""
        return int(min(self.config.strides))

    @property
    def margin(self) -> int:
        """Context (in trunk pixels) that the convolutions and the final upsampling read."""
        return int(self.config.depth) + (1 if self.trunk_stride > 1 else 0)

    # --- network -----------------------------------------------------------------------------
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

    # --- the head interface ------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def predict_proba(self, maps: list[torch.Tensor], *, margin: int = 0) -> torch.Tensor:
        """Softmax of :meth:`forward`: ``(B, K, H, W)`` float32 probabilities (``margin`` unused)."""
        self.eval()
        with torch.inference_mode():
            return torch.softmax(self(maps).float(), dim=1)

    def write_folder(self, folder: Path) -> None:
        """``config.json`` and ``diffusion_pytorch_model.safetensors`` (diffusers layout)."""
        self.save_pretrained(folder, safe_serialization=True)

    @classmethod
    def read_folder(cls, folder: Path) -> "SegmentationHead":
        """The head saved in ``folder`` (safetensors only, strict), in eval mode."""
        return load_strict(folder, cls, error=HeadError, what="Head")


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
