"""An editable window of the label store: what a person paints in it goes to the store's edits.

A GUI shows the store's merged view (painted pixels over predictions) of one window in an
editable label image. After every change of that image, :meth:`EditWindow.record` compares it
with what was shown, records the changed pixels as edits (on disk at once), and says which
pixels must show something else:

- a pixel painted with a class becomes an edit of that class;
- a pixel erased (set to 0) loses its edit and shows the prediction again;
- a pixel restored by *undo* (``kind="restore"``) becomes an edit of the restored class, unless
  that class is what the model predicts there, in which case it is no longer an edit.

Only numpy and the store: no GUI, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.label_store import LabelStore


@dataclass
class WindowChange:
    """What :meth:`EditWindow.record` did.

    Attributes
    ----------
    painted, erased : int
        Pixels that became edits, and pixels whose edit was removed.
    box : tuple of slice or None
        Bounding box (window coordinates) of the changed pixels.
    display : ndarray or None
        The values the image must show inside ``box`` (differs from it where erased pixels
        show the prediction again); None when nothing changed.
    """

    painted: int = 0
    erased: int = 0
    box: tuple[slice, slice] | None = None
    display: np.ndarray | None = None


class EditWindow:
    """A ``height`` x ``width`` window of ``store`` with its top-left corner at (``y``, ``x``).

    Parameters
    ----------
    store : LabelStore
        The store (analysis level).
    y, x, height, width : int
        The window, in analysis pixels; it must lie inside the store.
    """

    def __init__(self, store: LabelStore, y: int, x: int, height: int, width: int):
        H, W = store.shape
        if y < 0 or x < 0 or height <= 0 or width <= 0 or y + height > H or x + width > W:
            raise ValueError(
                f"The window (y={y}, x={x}, {height}x{width}) does not lie inside the store of "
                f"shape {(H, W)}."
            )
        self.store = store
        self.y, self.x, self.height, self.width = int(y), int(x), int(height), int(width)
        self.shown = self.read()

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    def read(self) -> np.ndarray:
        """The store's merged view of the window (a new array)."""
        return np.array(self.store.read(self.y, self.x, self.height, self.width), dtype=np.uint8)

    def reload(self) -> np.ndarray:
        """Read the window again (after a prediction) and return what to show."""
        self.shown = self.read()
        return self.shown.copy()

    def record(self, data: np.ndarray, *, kind: str = "paint") -> WindowChange:
        """Record the differences between ``data`` (the edited image) and what was shown.

        Parameters
        ----------
        data : ndarray, shape (height, width)
            The image after the edit.
        kind : {"paint", "restore"}
            ``"paint"`` for brush, fill, polygon and eraser; ``"restore"`` for undo and redo.
        """
        if kind not in ("paint", "restore"):
            raise ValueError(f"kind must be 'paint' or 'restore', got {kind!r}.")
        data = np.asarray(data)
        if data.shape != self.shape:
            raise ValueError(f"The edited image has shape {data.shape}, the window {self.shape}.")
        changed = data != self.shown
        if not changed.any():
            return WindowChange()
        rows, cols = np.flatnonzero(changed.any(1)), np.flatnonzero(changed.any(0))
        box = (slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))
        where = changed[box]
        new = data[box].astype(np.uint8)
        prediction = np.asarray(
            self.store.prediction[self.y + box[0].start : self.y + box[0].stop,
                                  self.x + box[1].start : self.x + box[1].stop]
        )
        edits = new.copy()
        if kind == "restore":
            edits[new == prediction] = 0
        self.store.write_edits(self.y + box[0].start, self.x + box[1].start, edits, where=where)
        display = np.where(where & (edits == 0), prediction, new).astype(np.uint8)
        display = np.where(where, display, self.shown[box])
        self.shown[box] = display
        return WindowChange(
            painted=int((where & (edits > 0)).sum()),
            erased=int((where & (edits == 0)).sum()),
            box=box,
            display=display,
        )
