"""Fit a ``forest`` head on labelled tiles: sample labelled pixels, build their vectors, grow the trees.

The labelled pixels are drawn class by class (at most ``max_pixels`` in all, the same number
per class where a class has enough), so that a few large strokes of one class do not decide
the forest alone. Their vectors are those the head computes at prediction
(:meth:`~napari_pathsegdiff.models.heads.forest.ForestHead.pixel_features`) on the whole tile,
so training and prediction see exactly the same numbers.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ...core.progress import Progress, Work
from ...models.heads import ForestHead, new_forest_head
from .train_head import LabelledTiles, TrainResult


def fit_forest(
    labelled: LabelledTiles,
    *,
    head: ForestHead | None = None,
    seed: int = 0,
    threads: int | None = 1,
    max_pixels: int = 50_000,
    **settings,
) -> Work[TrainResult]:
    """Grow a forest head on labelled tiles; yields ``Progress("train", ...)``.

    Parameters
    ----------
    labelled : LabelledTiles
        From :func:`~napari_pathsegdiff.engine.training.train_head.gather_labelled_tiles`.
    head : ForestHead, optional
        Keep this head's classes and settings (a forest is grown anew, never changed in place).
    seed : int
        Seed of the pixel draw, the projections and the trees.
    threads : int or None
        Threads of the tree fit (``None``: 2).
    max_pixels : int
        Labelled pixels drawn for the trees.
    **settings
        Settings of a new :class:`~napari_pathsegdiff.models.heads.forest.ForestHead`
        (``n_estimators``, ``max_depth``, ``min_samples_leaf``, ``components``,
        ``context_sigmas``, ``algorithm``, ``predict_stride``).
    """
    if max_pixels < 2:
        raise ValueError(f"max_pixels must be at least 2, got {max_pixels}.")
    t0 = time.perf_counter()
    counts = labelled.class_counts()
    if head is None and (counts > 0).sum() < 2:
        present = [labelled.classes[i] for i in np.flatnonzero(counts)]
        raise ValueError(f"Only class {present} has labelled pixels: label at least two classes to train a head.")
    forest = _new_forest(labelled, head, seed=seed, settings=settings)
    rng = np.random.default_rng(seed)
    n_threads = int(threads or 2)
    yield Progress("train", 0, 3, "projections")
    forest.fit_projections(labelled.feats, rng)
    yield Progress("train", 1, 3, "pixel vectors")
    x, y, w = _pixel_vectors(forest, labelled, _draw_pixels(labelled, max_pixels, rng))
    yield Progress("train", 2, 3, f"trees on {len(y)} pixels")
    forest.fit_vectors(x, y, sample_weight=w if (w != 1.0).any() else None, threads=n_threads)
    result = TrainResult(
        head=forest,
        class_pixels={int(c): int(n) for c, n in zip(labelled.classes, counts)},
        windows={"pixels": int(len(y)), "tiles": len(labelled.feats)},
        seconds=time.perf_counter() - t0,
    )
    yield Progress("train", 3, 3, f"{forest.config.n_estimators} trees")
    return result


def _new_forest(labelled: LabelledTiles, head: ForestHead | None, *, seed: int, settings: dict) -> ForestHead:
    if head is None:
        return new_forest_head(labelled.extractor, labelled.classes, class_names=labelled.class_names,
                               class_colors=labelled.class_colors, mpp=labelled.mpp, seed=seed, **settings)
    if settings:
        raise ValueError(f"Settings {sorted(settings)} cannot change a trained forest head's; train a new head.")
    config = {k: v for k, v in dict(head.config).items() if not k.startswith("_")}
    return ForestHead.from_config(config)


def _draw_pixels(labelled: LabelledTiles, max_pixels: int, rng: np.random.Generator):
    """``{tile: (flat pixel indices, output indices)}`` of the drawn labelled pixels."""
    per_class: dict[int, list[tuple[int, np.ndarray]]] = {}
    for t, lab in enumerate(labelled.labels):
        flat = lab.ravel()
        for k in np.unique(flat[flat >= 0]):
            per_class.setdefault(int(k), []).append((t, np.flatnonzero(flat == k)))
    quota = max(1, max_pixels // max(1, len(per_class)))
    chosen: dict[int, list[tuple[np.ndarray, int]]] = {}
    for k, parts in per_class.items():
        sizes = np.array([len(p) for _, p in parts])
        take = rng.choice(sizes.sum(), size=min(quota, sizes.sum()), replace=False)
        bounds = np.cumsum(sizes)
        which = np.searchsorted(bounds, take, side="right")
        for j in np.unique(which):
            t, pixels = parts[j]
            local = take[which == j] - (bounds[j] - sizes[j])
            chosen.setdefault(t, []).append((pixels[np.sort(local)], k))
    return chosen


def _pixel_vectors(forest: ForestHead, labelled: LabelledTiles, chosen):
    """Vectors, output indices and weights of the drawn pixels, tile by tile."""
    xs, ys, ws = [], [], []
    p = int(forest.config.predict_stride)
    for t in sorted(chosen):
        maps = [torch.from_numpy(np.array(m))[None] for m in labelled.feats[t]]
        with torch.inference_mode():
            vec = forest.pixel_features(maps)[0]  # on the classification grid: a pixel takes its cell's vector
        width = labelled.labels[t].shape[1]
        flat = vec.reshape(vec.shape[0], -1)
        for pixels, k in chosen[t]:
            cells = (pixels // width // p) * vec.shape[2] + (pixels % width) // p
            xs.append(flat[:, torch.from_numpy(cells)].T.numpy())
            ys.append(np.full(len(pixels), k, np.int64))
            ws.append(np.full(len(pixels), labelled.weights[t], np.float32))
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys), np.concatenate(ws)
