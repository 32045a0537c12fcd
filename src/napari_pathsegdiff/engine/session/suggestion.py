"""Where a correction helps most: the most uncertain segmented tissue that holds no painted pixel.

The analysis level is cut into blocks of ``block`` pixels; each block gets the mean stored
uncertainty of its segmented pixels, whether it is tissue, and whether it holds a painted pixel.
A square window of blocks is a candidate when at least half of its blocks are segmented tissue
and none is painted; the candidate of highest mean uncertainty wins. Only chunks stored on disk
are read, so this costs little on a whole slide.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...core.region import Region

BLOCK = 32
"""Side (analysis pixels) of the blocks in which uncertainty is averaged."""


@dataclass
class Suggestion:
    """A region worth correcting.

    Attributes
    ----------
    region : Region
        At the analysis level.
    uncertainty : float
        Mean uncertainty (0 certain .. 1 undecided) over its segmented tissue.
    """

    region: Region
    uncertainty: float


def encode_uncertainty(u: np.ndarray) -> np.ndarray:
    """Uncertainty in [0, 1] as uint8 1..255 (0 is kept for "not computed")."""
    return (1 + np.rint(np.clip(u, 0, 1) * 254)).astype(np.uint8)


def decode_uncertainty(code: np.ndarray) -> np.ndarray:
    """The inverse of :func:`encode_uncertainty`; NaN where not computed."""
    out = (code.astype(np.float32) - 1) / 254
    out[code == 0] = np.nan
    return out


def stored_chunks(path: Path, chunks: tuple[int, int], shape: tuple[int, int]):
    """(y, x, h, w) of every chunk of the 2D zarr array at ``path`` that is stored on disk (zarr
    stores no chunk that holds only the fill value)."""
    ch, cw = chunks
    H, W = shape
    base = Path(path) / "c"
    for key in sorted(base.glob("*/*")) if base.is_dir() else []:
        if key.parent.name.isdigit() and key.name.isdigit():
            y, x = int(key.parent.name) * ch, int(key.name) * cw
            yield y, x, min(ch, H - y), min(cw, W - x)


def uncertainty_blocks(array, path: Path, *, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Sum of known uncertainty and number of known pixels per block of a stored array
    (chunks must be multiples of ``block``)."""
    H, W = array.shape
    total = np.zeros((-(-H // block), -(-W // block)))
    known = np.zeros_like(total)
    for y, x, h, w in stored_chunks(path, array.chunks, (H, W)):
        values = _blocks(decode_uncertainty(np.asarray(array[y : y + h, x : x + w])), block, np.nan)
        finite = np.isfinite(values)
        s, n = np.where(finite, values, 0).sum(axis=(1, 3)), finite.sum(axis=(1, 3))
        total[y // block : y // block + s.shape[0], x // block : x // block + s.shape[1]] += s
        known[y // block : y // block + n.shape[0], x // block : x // block + n.shape[1]] += n
    return total, known


def painted_blocks(store, *, block: int = BLOCK) -> np.ndarray:
    """Blocks of a label store that hold at least one painted pixel."""
    H, W = store.shape
    out = np.zeros((-(-H // block), -(-W // block)), bool)
    for y, x, h, w in store.edited_windows():
        any_ = _blocks(store.read(y, x, h, w, which="edits") > 0, block, False).any(axis=(1, 3))
        out[y // block : y // block + any_.shape[0], x // block : x // block + any_.shape[1]] |= any_
    return out


def best_window(total, known, tissue, painted, *, shape: tuple[int, int], size: int,
                block: int = BLOCK) -> tuple[int, int, int, float] | None:
    """(y, x, side, mean uncertainty) in pixels of the best window, or None when no window is
    mostly segmented tissue without painted pixels."""
    H, W = shape
    gh, gw = total.shape
    rows = np.minimum(block, H - np.arange(gh) * block)
    cols = np.minimum(block, W - np.arange(gw) * block)
    usable = (known >= 0.5 * rows[:, None] * cols[None, :]) & tissue
    mean = np.where(usable, total / np.maximum(known, 1), 0.0)
    k = max(1, min(size // block, gh, gw))
    win_sum, win_n = _window_sums(mean, k), _window_sums(usable.astype(float), k)
    ok = (win_n >= 0.5 * k * k) & (_window_sums(painted.astype(float), k) == 0)
    if not ok.any():
        return None
    score = np.where(ok, win_sum / np.maximum(win_n, 1), -1.0)
    by, bx = np.unravel_index(int(np.argmax(score)), score.shape)
    return int(by * block), int(bx * block), k * block, float(score[by, bx])


def _blocks(values: np.ndarray, b: int, fill) -> np.ndarray:
    """``values`` padded to whole ``b``-blocks and reshaped to (gh, b, gw, b)."""
    h, w = values.shape
    gh, gw = -(-h // b), -(-w // b)
    padded = np.full((gh * b, gw * b), fill, dtype=values.dtype)
    padded[:h, :w] = values
    return padded.reshape(gh, b, gw, b)


def _window_sums(values: np.ndarray, k: int) -> np.ndarray:
    """Sums over every k x k window (top-left at each position where it fits)."""
    c = np.pad(values.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    return c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]
