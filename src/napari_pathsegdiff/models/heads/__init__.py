"""Segmentation heads: interchangeable per-pixel classifiers over feature maps.

- ``fcn`` (:class:`SegmentationHead`): a small fully convolutional network;
- ``forest`` (:class:`ForestHead`): a tree ensemble on per-pixel vectors (ilastik's kind).

Every head has classes, colours, µm/px, the feature config and identity it needs, and
``predict_proba(maps)``; ``load_head`` picks the class from the folder's ``config.json``.
The head classes are imported on first use, so listing the kinds imports no torch.
"""

from __future__ import annotations

from ..strict_folder import CONFIG_FILE, WEIGHTS_FILE
from .base import (
    PALETTE,
    HeadError,
    HeadMixin,
    default_class_colors,
    default_class_names,
    describe_feature_config,
)
from .registry import (
    head_class,
    head_kinds,
    load_head,
    load_head_and_extractor,
    register_head,
    save_head,
)

__all__ = [
    "CONFIG_FILE", "WEIGHTS_FILE", "PALETTE", "ForestHead", "HeadError", "HeadMixin", "SegmentationHead",
    "default_class_colors", "default_class_names", "describe_feature_config", "head_class", "head_kinds",
    "load_head", "load_head_and_extractor", "new_forest_head", "new_head", "register_head", "save_head",
]


#: Names imported on first use (they import torch and diffusers).
_LAZY = {
    "SegmentationHead": ".fcn", "new_head": ".fcn", "ForestHead": ".forest", "new_forest_head": ".forest",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
