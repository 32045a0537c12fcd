"""An editable window of the label store: what a person paints in it goes to the store's edits.

A GUI shows one window of the store in an editable label image. An edit is every pixel a tool
touched (brush, fill, polygon, eraser), whatever the model predicted there: a stroke of the
class the model already predicts is a confirmation, and it trains like any other stroke.

Label editors skip pixels that already hold the value being painted (napari's Labels layer
neither changes nor reports them), so the image cannot show a predicted pixel with its class
id: a stroke of that class would leave no trace. The image therefore tells the two apart by
value (see :func:`display_values`):

- ``0``: nothing predicted or painted;
- ``1..255``: a pixel a person painted with that class (an edit);
- ``PREDICTED + k``: a pixel the model predicts as class ``k`` and nobody painted.

:meth:`EditWindow.record_paint` records the pixels a tool touched (from the editor's paint
events), :meth:`EditWindow.record` the differences after an *undo* or *redo*. Both write the
store's edits at once and say which pixels must show something else than what the tool left:

- a pixel painted with a class ``k`` (or with ``PREDICTED + k``) becomes an edit of ``k``;
- a pixel erased (set to 0) loses its edit and shows the prediction again;
- a pixel restored by undo or redo to ``PREDICTED + k`` is no longer an edit, and one restored
  to ``k`` is an edit of ``k`` again.

Only numpy and the store: no GUI, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...core.label_store import LabelStore

PREDICTED = 256
"""Offset of predicted, unpainted pixels in the shown image (class ``k`` shows as ``256 + k``)."""

DISPLAY_DTYPE = np.uint16
"""dtype of the shown image (class ids 1..255 and 257..511)."""


def display_values(prediction: np.ndarray, edits: np.ndarray) -> np.ndarray:
    """The shown image of a window: edits as their class id, unpainted predictions as
    ``PREDICTED + class``, 0 where there is neither.

    Examples
    --------
    >>> display_values(np.array([[2, 2, 0]]), np.array([[0, 3, 0]])).tolist()
    [[258, 3, 0]]
    """
    prediction = np.asarray(prediction, dtype=DISPLAY_DTYPE)
    edits = np.asarray(edits, dtype=DISPLAY_DTYPE)
    shown_prediction = np.where(prediction > 0, prediction + PREDICTED, 0)
    return np.where(edits > 0, edits, shown_prediction).astype(DISPLAY_DTYPE)


def class_ids(shown: np.ndarray) -> np.ndarray:
    """Class ids of shown values (``PREDICTED + k`` -> ``k``), e.g. to save the shown image."""
    shown = np.asarray(shown)
    return np.where(shown >= PREDICTED, shown - PREDICTED, shown).astype(np.uint8)


@dataclass
class WindowChange:
    """What :meth:`EditWindow.record_paint` or :meth:`EditWindow.record` did.

    Attributes
    ----------
    painted, erased : int
        Pixels that became (or stayed) edits, and pixels that are no edit any more.
    box : tuple of slice or None
        Bounding box (window coordinates) of the touched pixels.
    display : ndarray or None
        The values the image must show inside ``box`` (differs from what the tool left where
        erased pixels show the prediction again); None when nothing was touched.
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

    Attributes
    ----------
    shown : ndarray of uint16
        What the image shows (see the module notes for its values).
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
        """The shown image of the window, read from the store (a new array)."""
        return self._read_box((slice(0, self.height), slice(0, self.width)))

    def reload(self) -> np.ndarray:
        """Read the window again (after a prediction) and return what to show."""
        self.shown = self.read()
        return self.shown.copy()

    def record_paint(self, box: tuple[slice, slice], touched: np.ndarray, values: np.ndarray | int
                     ) -> WindowChange:
        """Record the pixels a tool touched: brush, fill, polygon or eraser.

        Parameters
        ----------
        box : (slice, slice)
            The touched pixels' bounding box, in window coordinates.
        touched : ndarray of bool, the shape of ``box``
            The pixels the tool touched, whatever they showed before.
        values : int or ndarray of int, the shape of ``box``
            What the tool put there: 0 (the eraser), a class id, or ``PREDICTED`` + a class id
            (a value picked from a predicted pixel).

        Raises
        ------
        ValueError
            For a box outside the window, shapes that differ, or a value that is no class id.
        """
        box = self._check_box(box)
        touched = np.asarray(touched, dtype=bool)
        size = (box[0].stop - box[0].start, box[1].stop - box[1].start)
        if touched.shape != size:
            raise ValueError(f"The touched mask has shape {touched.shape}, its box {size}.")
        values = np.broadcast_to(np.asarray(values, dtype=np.int64), size)
        painted = values[touched]
        bad = painted[(painted < 0) | (painted > PREDICTED + 255) | (painted == PREDICTED)]
        if bad.size:
            raise ValueError(f"{int(bad[0])} is not a class id: paint with a class of 1..255 "
                             "(pick one in the class table) or erase with 0.")
        edits = class_ids(np.where(touched, values, 0))
        return self._write(box, touched, edits)

    def record(self, data: np.ndarray, *, kind: str = "paint") -> WindowChange:
        """Record the differences between ``data`` (the edited image) and what was shown.

        Parameters
        ----------
        data : ndarray, shape (height, width)
            The image after the change.
        kind : {"paint", "restore"}
            ``"paint"`` when a tool changed the image and its touched pixels are not known (a
            changed pixel showing ``PREDICTED + k`` becomes an edit of ``k``; pixels a tool
            touched without changing them are only seen by :meth:`record_paint`); ``"restore"``
            for undo and redo (a pixel back to ``PREDICTED + k`` is no edit any more). Values
            that are no class id are left to :meth:`record_paint` to refuse.
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
        if kind == "paint":
            return self.record_paint(box, changed[box], data[box])
        new = np.asarray(data[box], dtype=np.int64)
        valid = (new < PREDICTED) | ((new > PREDICTED) & (new <= PREDICTED + 255))
        edits = np.where((new > 0) & (new < PREDICTED), new, 0).astype(np.uint8)
        return self._write(box, changed[box] & valid, edits)

    # --- helpers ----------------------------------------------------------------------------
    def _write(self, box, touched: np.ndarray, edits: np.ndarray) -> WindowChange:
        """Write ``edits`` (0 removes an edit) at the ``touched`` pixels of ``box``; update and
        return what is shown there."""
        if not touched.any():
            return WindowChange()
        self.store.write_edits(self.y + box[0].start, self.x + box[1].start, edits, where=touched)
        display = np.where(touched, self._read_box(box), self.shown[box]).astype(DISPLAY_DTYPE)
        self.shown[box] = display
        return WindowChange(
            painted=int((touched & (edits > 0)).sum()),
            erased=int((touched & (edits == 0)).sum()),
            box=box,
            display=display,
        )

    def _read_box(self, box) -> np.ndarray:
        y0, y1 = self.y + box[0].start, self.y + box[0].stop
        x0, x1 = self.x + box[1].start, self.x + box[1].stop
        return display_values(self.store.prediction[y0:y1, x0:x1], self.store.edits[y0:y1, x0:x1])

    def _check_box(self, box) -> tuple[slice, slice]:
        (y0, y1), (x0, x1) = ((s.start, s.stop) for s in box)
        if None in (y0, y1, x0, x1) or not (0 <= y0 < y1 <= self.height and 0 <= x0 < x1 <= self.width):
            raise ValueError(f"The box {box} does not lie inside the window of shape {self.shape}.")
        return (slice(int(y0), int(y1)), slice(int(x0), int(x1)))
