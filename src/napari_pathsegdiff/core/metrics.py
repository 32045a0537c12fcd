"""Segmentation metrics from confusion matrices: per-class Dice and IoU, pixel accuracy.

Scores are computed from a confusion matrix indexed by class id (0..255), so pixels can be
pooled over a set of images by summing matrices. A mean over classes uses the classes present
in the truth; class 0 (background) is left out of it unless ``include_background``.

Examples
--------
>>> truth = np.array([[0, 1], [1, 1]])
>>> pred = np.array([[0, 1], [0, 1]])
>>> s = scores(confusion_matrix(pred, truth))
>>> s["per_class"][1]["dice"], s["mean_dice"], s["pixel_accuracy"]
(0.8, 0.8, 0.75)
"""

from __future__ import annotations

import numpy as np

N_IDS = 256


def confusion_matrix(pred: np.ndarray, truth: np.ndarray, *, ignore: int | None = None) -> np.ndarray:
    """``(256, 256)`` int64 matrix: entry ``[t, p]`` counts pixels of truth ``t`` predicted ``p``.

    Parameters
    ----------
    pred, truth : ndarray of int
        Class ids in 0..255, same shape.
    ignore : int, optional
        Truth value whose pixels are not counted (unlabelled).
    """
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"Prediction of shape {pred.shape} and truth of shape {truth.shape} differ.")
    for name, a in (("prediction", pred), ("truth", truth)):
        if a.size and (a.min() < 0 or a.max() >= N_IDS):
            raise ValueError(f"The {name} holds class ids outside 0..255 ({a.min()}..{a.max()}).")
    t, p = truth.ravel().astype(np.int64), pred.ravel().astype(np.int64)
    if ignore is not None:
        keep = t != ignore
        t, p = t[keep], p[keep]
    return np.bincount(t * N_IDS + p, minlength=N_IDS * N_IDS).reshape(N_IDS, N_IDS)


def scores(cm: np.ndarray, *, include_background: bool = False) -> dict:
    """Per-class Dice and IoU, their means over truth classes, and pixel accuracy.

    Returns
    -------
    dict
        ``per_class``: {class id: {"dice", "iou", "truth_pixels", "pred_pixels"}} for every
        class present in the truth or the prediction; ``mean_dice`` and ``mean_iou``: means
        over the classes present in the truth (class 0 excluded unless
        ``include_background``), ``None`` when there is none; ``pixel_accuracy`` (``None``
        for no pixel); ``classes_in_mean``.
    """
    cm = np.asarray(cm, dtype=np.int64)
    tp = np.diag(cm)
    truth_px = cm.sum(axis=1)
    pred_px = cm.sum(axis=0)
    per_class = {}
    for c in np.flatnonzero((truth_px > 0) | (pred_px > 0)):
        union = truth_px[c] + pred_px[c] - tp[c]
        per_class[int(c)] = {
            "dice": float(2 * tp[c] / (truth_px[c] + pred_px[c])),
            "iou": float(tp[c] / union),
            "truth_pixels": int(truth_px[c]),
            "pred_pixels": int(pred_px[c]),
        }
    in_mean = [c for c in per_class if per_class[c]["truth_pixels"] > 0 and (c != 0 or include_background)]
    total = int(cm.sum())
    return {
        "mean_dice": _mean([per_class[c]["dice"] for c in in_mean]),
        "mean_iou": _mean([per_class[c]["iou"] for c in in_mean]),
        "per_class": per_class,
        "pixel_accuracy": float(tp.sum() / total) if total else None,
        "classes_in_mean": in_mean,
    }


def evaluate(
    pairs, *, include_background: bool = False, ignore: int | None = None
) -> dict:
    """Scores of named ``(name, pred, truth)`` triples, pooled over the set and per image.

    Returns
    -------
    dict
        The keys of :func:`scores` for all pixels pooled, plus ``per_image`` ({name: scores})
        and ``mean_dice_per_image`` (mean of the per-image means that exist).
    """
    total = np.zeros((N_IDS, N_IDS), dtype=np.int64)
    per_image = {}
    for name, pred, truth in pairs:
        cm = confusion_matrix(pred, truth, ignore=ignore)
        total += cm
        per_image[name] = scores(cm, include_background=include_background)
    if not per_image:
        raise ValueError("Nothing to evaluate: no (prediction, truth) pairs.")
    result = scores(total, include_background=include_background)
    result["per_image"] = per_image
    result["mean_dice_per_image"] = _mean(
        [s["mean_dice"] for s in per_image.values() if s["mean_dice"] is not None]
    )
    result["include_background"] = include_background
    result["n_images"] = len(per_image)
    return result


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def seam_ratios(labels: np.ndarray, *, tile: int, origin: tuple[int, int] = (0, 0),
                ignore: int | None = None) -> dict[str, float | None]:
    """How much more often labels change across tile-grid lines than elsewhere.

    For each pair of neighbouring rows (columns), the share of pixels whose label differs;
    the ratio of that share over pairs straddling a grid line (absolute coordinate a multiple
    of ``tile``) to the share over the other pairs. 1 means no seams; ``None`` when undefined
    (no grid line inside, or no change elsewhere).

    Parameters
    ----------
    labels : ndarray, shape (h, w)
        A label map.
    tile : int
        Grid spacing.
    origin : (int, int)
        Absolute (y, x) of ``labels[0, 0]`` on the grid.
    ignore : int, optional
        A value (e.g. 0, "not segmented") whose pixels are left out of every pair.

    Examples
    --------
    >>> a = np.zeros((8, 8), int); a[4:] = 1; a[:, 6:] = 2
    >>> r = seam_ratios(a, tile=4)
    >>> r["rows_on_grid"], r["cols_on_grid"]
    (0.75, 0.0)
    """
    labels = np.asarray(labels)
    out: dict[str, float | None] = {}
    for name, axis, start in (("rows", 0, origin[0]), ("cols", 1, origin[1])):
        first, second = np.delete(labels, -1, axis=axis), np.delete(labels, 0, axis=axis)
        counted = np.ones(first.shape, bool) if ignore is None else (first != ignore) & (second != ignore)
        changes = ((first != second) & counted).sum(axis=1 - axis)
        pairs = counted.sum(axis=1 - axis)
        on_grid = (start + np.arange(1, labels.shape[axis])) % tile == 0
        rates = []
        for part in (on_grid, ~on_grid):
            n = int(pairs[part].sum())
            rates.append(float(changes[part].sum() / n) if n else None)
        grid_rate, other_rate = rates
        out[f"{name}_on_grid"], out[f"{name}_elsewhere"] = grid_rate, other_rate
        out[f"{name}_ratio"] = grid_rate / other_rate if grid_rate is not None and other_rate else None
    return out
