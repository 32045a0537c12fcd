"""Segmentation heads: interchangeable per-pixel classifiers over feature maps.

- ``fcn`` (:class:`SegmentationHead`): a small fully convolutional network;
- ``forest`` (:class:`ForestHead`): a tree ensemble on per-pixel vectors (ilastik's kind).

Every head has classes, colours, µm/px, the feature config and identity it needs, and
``predict_proba(maps)``; ``load_head`` picks the class from the folder's ``config.json``.
"""

from __future__ import annotations

from .base import (
    PALETTE,
    HeadError,
    HeadMixin,
    default_class_colors,
    default_class_names,
    describe_feature_config,
)
from ..strict_folder import CONFIG_FILE, WEIGHTS_FILE
from .fcn import SegmentationHead, new_head
from .forest import ForestHead, new_forest_head
from .registry import (
    head_class,
    head_kinds,
    load_head,
    load_head_and_extractor,
    register_head,
    save_head,
)

register_head(SegmentationHead)
register_head(ForestHead)

__all__ = [
    "CONFIG_FILE", "WEIGHTS_FILE", "PALETTE", "ForestHead", "HeadError", "HeadMixin", "SegmentationHead", "default_class_colors",
    "default_class_names", "describe_feature_config", "head_class", "head_kinds", "load_head",
    "load_head_and_extractor", "new_forest_head", "new_head", "register_head", "save_head",
]
