"""Labels painted block by block into chunks: over a zarr array, or in memory alone.

Importing a thousand annotations writes a thousand small blocks; a :class:`LabelCanvas` gathers
them per chunk and writes each touched chunk once (:meth:`LabelCanvas.flush`, also called when
more than ``max_chunks`` are held), so the cost follows the chunks, not the blocks. Without an
array the canvas keeps its chunks and answers the label store's reading calls
(:meth:`edited_windows`, :meth:`read`), so training reads it as it reads a slide's edits.

A block never paints over a labelled pixel: pixels already labelled (by a person, or by an
earlier block) are kept and counted.

Examples
--------
>>> canvas = LabelCanvas((1000, 1000), chunk=512)
>>> mask = np.zeros((4, 4), np.uint8); mask[1:3, 1:3] = 2
>>> canvas.paint(510, 510, mask)
({2: 4}, 0)
>>> canvas.edited_windows()
[(0, 0, 512, 512), (0, 512, 512, 488), (512, 0, 488, 512), (512, 512, 488, 488)]
>>> int(canvas.read(0, 0, 1000, 1000, which="edits").sum())
8
"""

from __future__ import annotations

import numpy as np

__all__ = ["LabelCanvas"]


class LabelCanvas:
    """Chunked uint8 labels (0: not labelled) painted block by block.

    Parameters
    ----------
    shape : (int, int)
        (height, width) of the grid.
    chunk : int
        Chunk side (that of ``array`` when given).
    array : zarr array, optional
        Where painted chunks are written by :meth:`flush`; its current content is read when
        a chunk is first touched. ``None`` keeps everything in memory.
    max_chunks : int
        Chunks held before a flush (``array`` only): about ``max_chunks * chunk**2`` bytes.
    """

    def __init__(self, shape, *, chunk: int = 512, array=None, max_chunks: int = 256):
        self.shape = (int(shape[0]), int(shape[1]))
        self.array = array
        if array is not None:
            if tuple(int(s) for s in array.shape) != self.shape:
                raise ValueError(f"The array has shape {array.shape}, the canvas {self.shape}.")
            chunk = int(array.chunks[0])
        self.chunk = int(chunk)
        self.max_chunks = int(max_chunks)
        self._chunks: dict[tuple[int, int], np.ndarray] = {}
        self._dirty: set[tuple[int, int]] = set()

    def paint(self, y: int, x: int, mask: np.ndarray) -> tuple[dict[int, int], int]:
        """Paint the non-zero ids of ``mask`` (top-left at ``(y, x)``) on unlabelled pixels.

        Returns
        -------
        (dict, int)
            Pixels painted per id, and pixels of the block kept as they were (already labelled).
        """
        mask = np.asarray(mask, dtype=np.uint8)
        painted: dict[int, int] = {}
        kept = 0
        c = self.chunk
        h, w = mask.shape
        for cy in range(y // c, (y + h - 1) // c + 1):
            for cx in range(x // c, (x + w - 1) // c + 1):
                y0, x0 = max(y, cy * c), max(x, cx * c)
                y1, x1 = min(y + h, (cy + 1) * c), min(x + w, (cx + 1) * c)
                part = mask[y0 - y : y1 - y, x0 - x : x1 - x]
                new = part > 0
                if not new.any():
                    continue
                target = self._chunk(cy, cx)[y0 - cy * c : y1 - cy * c, x0 - cx * c : x1 - cx * c]
                free = target == 0
                kept += int(np.count_nonzero(new & ~free))
                write = new & free
                target[write] = part[write]
                n = np.bincount(part[write], minlength=256)
                for i in np.flatnonzero(n).tolist():
                    painted[i] = painted.get(i, 0) + int(n[i])
                self._dirty.add((cy, cx))
        if self.array is not None and len(self._chunks) > self.max_chunks:
            self.flush()
        return painted, kept

    def flush(self) -> None:
        """Write the painted chunks to the array (nothing without one) and let them go."""
        if self.array is None:
            return
        c = self.chunk
        for cy, cx in sorted(self._dirty):
            data = self._chunks[(cy, cx)]
            self.array[cy * c : cy * c + data.shape[0], cx * c : cx * c + data.shape[1]] = data
        self._dirty.clear()
        self._chunks.clear()

    # --- the label store's reading calls (in memory) ---------------------------------------
    def edited_windows(self) -> list[tuple[int, int, int, int]]:
        """(y, x, height, width) of every chunk holding a labelled pixel."""
        c = self.chunk
        return [(cy * c, cx * c, *self._chunks[(cy, cx)].shape)
                for cy, cx in sorted(self._chunks) if self._chunks[(cy, cx)].any()]

    def read(self, y: int, x: int, height: int, width: int, *, which: str = "edits") -> np.ndarray:
        """Labels of a window (``which`` is accepted for the store's signature; all are edits)."""
        out = np.zeros((height, width), np.uint8)
        c = self.chunk
        for cy in range(y // c, (y + height - 1) // c + 1):
            for cx in range(x // c, (x + width - 1) // c + 1):
                data = self._chunks.get((cy, cx))
                if data is None:
                    continue
                y0, x0 = max(y, cy * c), max(x, cx * c)
                y1, x1 = min(y + height, cy * c + data.shape[0]), min(x + width, cx * c + data.shape[1])
                if y0 < y1 and x0 < x1:
                    out[y0 - y : y1 - y, x0 - x : x1 - x] = data[y0 - cy * c : y1 - cy * c, x0 - cx * c : x1 - cx * c]
        return out

    def _chunk(self, cy: int, cx: int) -> np.ndarray:
        key = (cy, cx)
        if key not in self._chunks:
            c = self.chunk
            h, w = min(c, self.shape[0] - cy * c), min(c, self.shape[1] - cx * c)
            if self.array is not None:
                self._chunks[key] = np.array(self.array[cy * c : cy * c + h, cx * c : cx * c + w], np.uint8)
            else:
                self._chunks[key] = np.zeros((h, w), np.uint8)
        return self._chunks[key]
