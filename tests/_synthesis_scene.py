"""A segmented and corrected annotation session of the test scene, and tiny generator folders,
for the Synthesize tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from _annotation_scene import CLASSES, paint_strokes, write_scene

from napari_pathsegdiff.core.progress import drive
from napari_pathsegdiff.core.region import Region
from napari_pathsegdiff.core.slide import open_slide
from napari_pathsegdiff.engine.session.annotation import AnnotationSession
from napari_pathsegdiff.models.backbone import build_random_backbone
from napari_pathsegdiff.models.features import RGBFeatures
from napari_pathsegdiff.models.generator import build_generator, save_generator

TILE = 32
"""Generator tile side in the tests (level 1 of the scene is at the generator's 0.5 µm/px)."""


def rgb_features() -> RGBFeatures:
    return RGBFeatures(tile_size=64, halo=4)


def corrected_session(scene: Path, folder: Path | None = None) -> Path:
    """Strokes painted, a head trained on them, the whole analysis level segmented, and one
    correction painted: the session folder (beside the scene unless ``folder``)."""
    with open_slide(scene) as slide:
        session = AnnotationSession.open(slide, extractor=rgb_features(), classes=CLASSES, folder=folder)
        paint_strokes(session.store)
        drive(session.train_on_edits(steps=30), show=False)
        h, w = session.level_shape
        drive(session.segment(Region(session.level, 0, 0, h, w), uncertainty=False), show=False)
        session.store.write_edits(200, 100, np.full((10, 20), 3, np.uint8))  # a correction
        return session.folder


def tiny_backbone_folder(root: Path) -> Path:
    folder = root / "backbone"
    if not folder.is_dir():
        build_random_backbone("tiny").save(folder)
    return folder


def tiny_generator(root: Path, *, class_ids=(1, 2, 3), class_names=None, name="generator") -> Path:
    """A tiny generator with random weights for ``class_ids`` (named as the scene's classes)."""
    names = list(class_names) if class_names else [c.name for c in CLASSES if c.id in class_ids]
    backbone = build_random_backbone("tiny")
    gen = build_generator(backbone, class_ids=list(class_ids), class_names=names, config="tiny",
                          style_size=16)
    gen.register_to_config(tile_size=TILE)
    return save_generator(gen, root / name)


__all__ = ["CLASSES", "TILE", "corrected_session", "rgb_features", "tiny_backbone_folder", "tiny_generator",
           "write_scene"]
