"""A small slide with three clearly different areas, for the annotate-and-retrain tests.

Level 0 is 512 x 768 px at 0.25 µm/px; level 1 (0.5 µm/px, the default analysis level) is
256 x 384. At level 1: rows 0..63 are white glass (class 1, background), below it the left
half is pale pink (class 2, stroma) and the right half dark purple (class 3, nuclei-rich).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from _synthetic_slides import write_pyramid

from napari_pathsegdiff.core.label_store import ClassInfo

CLASSES = [
    ClassInfo(1, "background", "#a0a0a0"),
    ClassInfo(2, "stroma", "#3cb44b"),
    ClassInfo(3, "nuclei-rich", "#911eb4"),
]
LEVEL1_SHAPE = (256, 384)
COLOURS = {1: (242, 242, 242), 2: (235, 165, 200), 3: (120, 40, 130)}


def truth_level1() -> np.ndarray:
    """Class ids of the scene at level 1."""
    t = np.full(LEVEL1_SHAPE, 2, np.uint8)
    t[:, LEVEL1_SHAPE[1] // 2 :] = 3
    t[:64] = 1
    return t


def write_scene(path: Path, *, seed: int = 0) -> Path:
    """The scene as a 2-level pyramidal TIFF (zlib, so colours are exact up to the noise)."""
    truth = np.kron(truth_level1(), np.ones((2, 2), np.uint8))
    rgb = np.zeros(truth.shape + (3,), np.float32)
    for k, colour in COLOURS.items():
        rgb[truth == k] = colour
    rng = np.random.default_rng(seed)
    rgb = np.clip(rgb + rng.normal(0, 6, rgb.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_pyramid(path, rgb, levels=2, mpp=0.25, compression="zlib")


def strokes_level1() -> dict[int, tuple[slice, slice]]:
    """One short thick stroke inside each class (level-1 pixels)."""
    return {
        1: (slice(20, 26), slice(40, 140)),
        2: (slice(150, 156), slice(40, 140)),
        3: (slice(150, 156), slice(240, 340)),
    }


def paint_strokes(store, classes=(1, 2, 3)) -> None:
    """Write the strokes of ``classes`` into a label store's edits."""
    for k in classes:
        ys, xs = strokes_level1()[k]
        store.write_edits(ys.start, xs.start, np.full((ys.stop - ys.start, xs.stop - xs.start), k, np.uint8))
