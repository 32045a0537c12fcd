"""The FCN head's fit: a small fully convolutional head trained on windows of labelled tiles.

Training touches no backbone: it runs on the tiles :func:`~napari_pathsegdiff.engine.training.train_head.gather_labelled_tiles`
gathered. The FCN trains on small *windows* (about ``window`` pixels a side, on the head's trunk
grid) around labelled pixels rather than on whole tiles: each window's feature maps are cropped
with one extra feature pixel per side and a margin of context, so that after the bilinear
upsamplings and the 3x3 convolutions the scores at its labelled pixels equal those of a
whole-tile prediction. A few thousand labelled pixels cost a few dozen small windows, whatever
the tile size: retraining after an edit takes about a second.

- Sparse labels: pixels equal to ``unlabelled`` are ignored (scribbles, brush corrections).
- Class-balanced cross-entropy: weights from the labelled-pixel frequency of each class.
- Augmentation: the 8 flips/rotations by 90°, applied to the fused feature windows and their
  labels together (they commute with the per-map 1x1 reduction and the upsampling).
- Validation on a seeded share of the windows, early stopping, best weights kept.
- Fixed seed → identical result. The generator can be closed between steps: it never writes
  anything, and a head passed in for fine-tuning is copied, never changed.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ...core.progress import Progress, Work
from ...models.heads import SegmentationHead, new_head
from .train_head import LabelledTiles, TrainResult


@dataclass
class _Window:
    tile: int  # index into the tile feature list
    y: int  # top-left in the tile's outer pixels
    x: int


def fit_fcn(
    labelled: LabelledTiles,
    *,
    head: SegmentationHead | None = None,
    seed: int = 0,
    threads: int | None = 1,
    steps: int | None = None,
    lr: float = 1e-2,
    val_fraction: float = 0.1,
    patience: int = 5,
    augment: bool = True,
    batch_size: int = 32,
    window: int = 32,
    hidden: int = 16,
    depth: int = 2,
    dropout: float = 0.1,
) -> Work[TrainResult]:
    """Train (or fine-tune a copy of) an FCN head on labelled tiles; yields one Progress per step.

    Parameters
    ----------
    labelled : LabelledTiles
        From :func:`gather_labelled_tiles`.
    head : SegmentationHead, optional
        Fine-tune a copy of this head; its feature normalisation is kept.
    seed : int
        Seed of everything random.
    threads : int or None
        Torch threads during each optimisation step (``None``: leave as is). The steps are
        many small operations: one thread is as fast as two on an idle machine and many times
        faster on a busy one, where threads wait for each other.
    steps : int, optional
        Optimisation steps; default from the number of windows (:func:`default_steps`).
    lr, val_fraction, patience : float, float, int
        AdamW learning rate; share of windows held out for validation (none when fewer than
        10 windows); validations without improvement before stopping.
    augment : bool
        Random flips and 90° rotations.
    batch_size, window : int
        Windows per step and their side in pixels.
    hidden, depth, dropout : int, int, float
        Architecture of a new head (see :class:`SegmentationHead`).
    """
    rng = np.random.default_rng(seed)
    fine_tune = head is not None
    head = copy.deepcopy(head) if fine_tune else None
    # 1. windows around labelled pixels, split into training and validation
    depth_used = int(head.config.depth) if fine_tune else depth
    data = _prepare_windows(labelled, rng, window=window, depth=depth_used,
                            val_fraction=val_fraction, new_head=not fine_tune)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # 2. the head: the copy to fine-tune, or a new one normalised on these features
        if head is None:
            head = new_head(
                labelled.extractor, labelled.classes, class_names=labelled.class_names,
                class_colors=labelled.class_colors, mpp=labelled.mpp, hidden=hidden, depth=depth,
                dropout=dropout,
            )
            head.set_normalization(*_feature_stats(labelled.feats, rng))
        # 3. optimisation with validation and early stopping; the best weights are kept
        n_steps = default_steps(len(data.train_idx), batch_size, fine_tune=fine_tune) if steps is None else int(steps)
        result = yield from _optimise(head, labelled, data, rng, n_steps=n_steps, lr=lr, patience=patience,
                                      augment=augment, batch_size=batch_size, threads=threads)
    return result


@dataclass
class _FcnWindows:
    """Training windows of one fit: where they are, their labels and weights, the split."""

    windows: list
    labels: np.ndarray  # (n, side, side) class indices, -1 unlabelled
    weights: np.ndarray  # (n,) sample weight of each window's tile
    side: int
    train_idx: np.ndarray
    val_idx: np.ndarray
    class_weights: np.ndarray
    class_pixels: dict

    @property
    def weighted(self) -> bool:
        return bool((self.weights[self.train_idx] != 1.0).any())


def _prepare_windows(labelled: LabelledTiles, rng, *, window: int, depth: int, val_fraction: float,
                     new_head: bool) -> _FcnWindows:
    """Windows around the labelled pixels, the validation split (only unweighted windows
    validate; none below 10) and the class weights; refuses a new head with one class."""
    classes, strides = labelled.classes, list(labelled.extractor.strides)
    trunk = int(min(strides))
    margin = depth + (1 if trunk > 1 else 0)
    outer = labelled.labels[0].shape[0]
    windows, labels, side = _windows(labelled.labels, outer=outer, window=window, margin=margin, trunk=trunk)
    weights = np.array([labelled.weights[w.tile] for w in windows], dtype=np.float32)
    plain = np.flatnonzero(weights == 1.0)
    n_val = int(round(len(plain) * val_fraction)) if len(plain) >= 10 and val_fraction > 0 else 0
    val_idx = np.sort(plain[rng.permutation(len(plain))][:n_val])
    train_idx = np.setdiff1d(np.arange(len(windows)), val_idx)
    train_lab = labels[train_idx]
    counts = np.bincount(train_lab[train_lab >= 0].ravel(), minlength=len(classes))
    if new_head and (counts > 0).sum() < 2:
        present = [classes[i] for i in np.flatnonzero(counts)]
        raise ValueError(
            f"Only class {present} has labelled pixels: label at least two classes to train a head."
        )
    class_pixels = {int(classes[i]): int(counts[i]) for i in range(len(classes))}
    return _FcnWindows(windows, labels, weights, side, train_idx, val_idx, _class_weights(counts), class_pixels)


def _optimise(head, labelled: LabelledTiles, data: _FcnWindows, rng, *, n_steps: int, lr: float,
              patience: int, augment: bool, batch_size: int, threads: int | None) -> Work[TrainResult]:
    """AdamW steps on random batches of windows, validating every few steps; yields Progress."""
    feats, strides = labelled.feats, list(labelled.extractor.strides)
    head.train()
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    n_val = len(data.val_idx)
    batches_per_epoch = max(1, math.ceil(len(data.train_idx) / batch_size))
    eval_every = max(5, min(batches_per_epoch, max(1, n_steps // 10)))
    w_tensor = torch.as_tensor(data.class_weights, dtype=torch.float32)
    result = TrainResult(head=head, class_pixels=data.class_pixels,
                         windows={"train": int(len(data.train_idx)), "val": int(n_val),
                                  "weighted": int((data.weights[data.train_idx] != 1.0).sum())})
    best_val, best_state, stale = math.inf, None, 0
    t0 = time.perf_counter()
    perm, pos = rng.permutation(data.train_idx), 0
    yield Progress("train", 0, n_steps, "training")
    for step in range(1, n_steps + 1):
        if pos >= len(perm):
            perm, pos = rng.permutation(data.train_idx), 0
        idx = perm[pos : pos + batch_size]
        pos += batch_size
        with torch_threads(threads):
            loss = _train_step(head, opt, feats, data, idx, strides, w_tensor, rng, augment=augment)
            record = {"step": step, "loss": loss}
            if n_val and (step % eval_every == 0 or step == n_steps):
                record["val_loss"] = _val_loss(head, feats, data.windows, data.labels, data.val_idx, strides,
                                               data.side, w_tensor, batch_size)
                if record["val_loss"] < best_val - 1e-4:
                    best_val, stale = record["val_loss"], 0
                    best_state = copy.deepcopy(head.state_dict())
                    result.best_step = step
                else:
                    stale += 1
        result.history.append(record)
        result.steps = step
        metrics = {k: v for k, v in record.items() if k != "step"}
        yield Progress("train", step, n_steps, f"step {step}/{n_steps}", metrics)
        if n_val and stale >= patience:
            result.stopped_early = True
            break
    if best_state is not None:
        head.load_state_dict(best_state)
    else:
        result.best_step = result.steps
    head.eval()
    result.seconds = time.perf_counter() - t0
    return result


def _train_step(head, opt, feats, data: _FcnWindows, idx, strides, w_tensor, rng, *, augment: bool) -> float:
    """One optimisation step on the windows ``idx``; returns the loss."""
    fused = _fused_windows(head, feats, [data.windows[i] for i in idx], strides, data.side)
    labels = torch.from_numpy(data.labels[idx].astype(np.int64))
    if augment:
        fused, labels = _augment(fused, labels, rng)
    logits = head.upsample_scores(head.classify(fused))
    if data.weighted:
        loss = weighted_cross_entropy(logits, labels, w_tensor, torch.from_numpy(data.weights[idx]))
    else:
        loss = F.cross_entropy(logits, labels, weight=w_tensor, ignore_index=-1)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def weighted_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor, window_weights: torch.Tensor
) -> torch.Tensor:
    """Class-weighted cross-entropy whose windows also carry a weight each.

    ``sum(w_window * w_class * loss) / sum(w_window * w_class)`` over the labelled pixels: with
    every window weight 1 it equals ``F.cross_entropy(..., weight=class_weights, ignore_index=-1)``.
    """
    per_pixel = F.cross_entropy(logits, labels, weight=class_weights, ignore_index=-1, reduction="none")
    valid = labels >= 0
    w = class_weights[labels.clamp_min(0)] * valid * window_weights.view(-1, 1, 1).to(per_pixel)
    return (per_pixel * window_weights.view(-1, 1, 1).to(per_pixel)).sum() / w.sum().clamp_min(1e-12)


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run the block with ``n`` torch intra-op threads, then restore the previous number."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def default_steps(n_windows: int, batch_size: int, *, fine_tune: bool = False) -> int:
    """Steps when none are given: about 10 passes over the windows, between 60 and 2000.

    Fine-tuning a trained head on corrections needs half as many (at least 30).
    """
    steps = min(2000, max(60, 10 * math.ceil(n_windows / batch_size)))
    return int(max(30, steps // 2) if fine_tune else steps)


def _class_weights(counts: np.ndarray) -> np.ndarray:
    """Inverse-frequency weights (mean 1 over the classes present; 0 for absent ones)."""
    counts = counts.astype(np.float64)
    present = counts > 0
    w = np.zeros_like(counts)
    w[present] = counts[present].sum() / (present.sum() * counts[present])
    return np.clip(w, 0.0, 50.0)


# --- windows -------------------------------------------------------------------------------------
def _windows(tile_labels, *, outer: int, window: int, margin: int, trunk: int):
    """Windows covering every labelled pixel once, their labels, and their side in trunk pixels.

    Windows live on the head's trunk grid (``trunk`` pixels per trunk pixel). Their cores
    tile the tile; each adds ``margin`` trunk pixels of context (clamped to the tile) so that
    the convolutions and the final upsampling see the same neighbours as in a whole-tile
    prediction. Labels are ``(side * trunk, side * trunk)`` pixels, -1 outside the core.
    """
    outer_t = outer // trunk
    side = min(max(-(-window // trunk), 2 * margin + 8), outer_t)
    step = side - 2 * margin
    if step < 1:
        raise ValueError(f"Tiles of {outer} px are too small for a head with a margin of {margin}.")
    windows, labels = [], []
    for ti, lab in enumerate(tile_labels):
        ys, xs = np.nonzero(lab >= 0)
        if len(ys) == 0:
            continue
        cells = set(zip((ys // trunk // step).tolist(), (xs // trunk // step).tolist()))
        for cy, cx in sorted(cells):
            cy0, cx0 = cy * step, cx * step
            wy = min(max(cy0 - margin, 0), outer_t - side)
            wx = min(max(cx0 - margin, 0), outer_t - side)
            out = np.full((side * trunk, side * trunk), -1, dtype=np.int8)
            y0, y1 = max(cy0, wy) * trunk, min(cy0 + step, wy + side) * trunk
            x0, x1 = max(cx0, wx) * trunk, min(cx0 + step, wx + side) * trunk
            out[y0 - wy * trunk : y1 - wy * trunk, x0 - wx * trunk : x1 - wx * trunk] = lab[y0:y1, x0:x1]
            windows.append(_Window(ti, wy, wx))
            labels.append(out)
    return windows, np.stack(labels), side


def _crop_indices(start: int, size: int, stride: int, n: int) -> tuple[np.ndarray, int]:
    """Feature rows covering trunk rows ``[start, start + size)`` plus one per side, edge-clamped.

    ``stride`` is in trunk pixels. Returns the indices and the offset of ``start`` in the
    crop upsampled by ``stride``.
    """
    f0 = start // stride - 1
    length = -(-size // stride) + 2
    return np.clip(np.arange(f0, f0 + length), 0, n - 1), start - f0 * stride


def _fused_windows(head: SegmentationHead, feats, windows: list[_Window], strides, size: int) -> torch.Tensor:
    """Fused head features ``(B, hidden, size, size)`` of windows, as in a whole-tile pass."""
    trunk = head.trunk_stride
    fused = None
    for i, s in enumerate(strides):
        r = s // trunk
        crops, offsets = [], []
        for w in windows:
            f = feats[w.tile][i]
            if r == 1:
                crops.append(f[:, w.y : w.y + size, w.x : w.x + size])
                continue
            iy, oy = _crop_indices(w.y, size, r, f.shape[1])
            ix, ox = _crop_indices(w.x, size, r, f.shape[2])
            crops.append(f[:, iy][:, :, ix])
            offsets.append((oy, ox))
        x = head.reduce_map(i, torch.from_numpy(np.stack(crops)).float())
        if r > 1:
            x = F.interpolate(x, scale_factor=r, mode="bilinear", align_corners=False)
            x = torch.stack([x[b, :, oy : oy + size, ox : ox + size] for b, (oy, ox) in enumerate(offsets)])
        fused = x if fused is None else fused + x
    return fused


def _window_scores(head: SegmentationHead, feats, windows: list[_Window], strides, size: int) -> torch.Tensor:
    """Class scores of windows at their pixels, ``(B, K, size * trunk, size * trunk)``."""
    return head.upsample_scores(head.classify(_fused_windows(head, feats, windows, strides, size)))


def _augment(fused: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator):
    """A random flip/rotation by 90° per window, the same for features and labels."""
    ks = rng.integers(0, 8, size=len(fused))
    xs, ys = [], []
    for x, y, k in zip(fused, labels, ks):
        if k >= 4:
            x, y = x.flip(-1), y.flip(-1)
        r = int(k % 4)
        xs.append(torch.rot90(x, r, dims=(-2, -1)))
        ys.append(torch.rot90(y, r, dims=(-2, -1)))
    return torch.stack(xs), torch.stack(ys)


def _val_loss(head, feats, windows, win_labels, val_idx, strides, size, weights, batch_size) -> float:
    head.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(val_idx), batch_size):
            idx = val_idx[start : start + batch_size]
            labels = torch.from_numpy(win_labels[idx].astype(np.int64))
            logits = _window_scores(head, feats, [windows[i] for i in idx], strides, size)
            loss = F.cross_entropy(logits, labels, weight=weights, ignore_index=-1, reduction="sum")
            valid = labels >= 0
            total += float(loss)
            n += float(weights[labels[valid]].sum())
    head.train()
    return total / max(n, 1e-12)


def _feature_stats(feats, rng: np.random.Generator, max_pixels: int = 200_000):
    """Per-channel mean and standard deviation of each map over (a sample of) the tiles."""
    means, stds = [], []
    for i in range(len(feats[0])):
        total = sum(f[i].shape[1] * f[i].shape[2] for f in feats)
        keep = min(1.0, max_pixels / total)
        parts = []
        for f in feats:
            m = f[i].reshape(f[i].shape[0], -1)
            if keep < 1.0:
                m = m[:, rng.random(m.shape[1]) < keep]
            parts.append(m.astype(np.float64))
        allv = np.concatenate(parts, axis=1)
        means.append(allv.mean(1))
        stds.append(allv.std(1))
    return means, stds
