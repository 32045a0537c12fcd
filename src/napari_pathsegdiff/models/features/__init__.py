"""Feature extractors, one module per kind, and the registry every caller reads.

Built-in kinds:

- ``diffusion``: decoder activations of a pathology latent diffusion model
  (:mod:`~napari_pathsegdiff.models.diffusion_features`, imported only when asked for);
- ``classic``: the multiscale filter bank of ilastik, QuPath and napari-apoc (:mod:`.classic`);
- ``rgb``: the pixels (:mod:`.rgb`);
- ``cnn``: an ImageNet CNN's early layers, convpaint's kind of features
  (:mod:`~napari_pathsegdiff.models.cnn_features`, imported only when asked for).

Kinds joined with ``+`` (``diffusion+classic``) read every part on the same tile
(:class:`~napari_pathsegdiff.models.fused_features.FusedFeatures`); a head reduces each
part's maps on its own. A new extractor is one module plus one :func:`register_extractor` call.
"""

from __future__ import annotations

from .classic import ClassicFeatures
from .registry import (
    FUSE,
    build_extractor,
    extractor_entry,
    feature_config,
    feature_kind,
    make_extractor,
    parse_feature_kind,
    register_extractor,
    registered_kinds,
    unregister_extractor,
    uses_backbone,
    with_backbone,
)
from .rgb import RGBFeatures

__all__ = [
    "FUSE", "ClassicFeatures", "RGBFeatures", "build_extractor", "extractor_entry", "feature_config",
    "feature_kind", "make_extractor", "parse_feature_kind", "register_extractor", "registered_kinds",
    "unregister_extractor", "uses_backbone", "with_backbone",
]


def _diffusion(settings, device):
    from .. import diffusion_features

    return diffusion_features.from_config({"kind": "diffusion", **settings}, device=device)


register_extractor("diffusion", _diffusion, uses_backbone=True,
                   summary="decoder features of a pathology latent diffusion model (--backbone)")
register_extractor("classic", lambda settings, device: ClassicFeatures(**settings),
                   summary="filter bank: Gaussian, gradient, Hessian at sigma 1-16 (ilastik, QuPath)")
register_extractor("rgb", lambda settings, device: RGBFeatures(**settings), summary="the pixels")


def _cnn(settings, device):
    from .. import cnn_features

    return cnn_features.build(settings, device)


register_extractor("cnn", _cnn, summary="early stages of an ImageNet CNN (EfficientNet-Lite0; convpaint's kind)")
