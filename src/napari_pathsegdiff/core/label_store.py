"""Predictions and a person's edits of one slide, in a chunked zarr store on disk.

The store lives at the analysis level (the pyramid level, or resampled grid, that the head
works at). It keeps two arrays of the same shape:

``prediction``
    class ids written by the model, 0 where nothing was predicted yet;
``edits``
    class ids a person painted, 0 where they painted nothing;
``prediction_head``
    which head predicted each pixel: an index into the store's list of head identities
    (``attrs["heads"]``, index 1 is its first entry), 0 where unknown (nothing predicted, or
    predicted before the store recorded heads).

The merged view shows an edit wherever there is one, else the prediction: a new prediction
never hides or overwrites painted pixels. Every write goes to disk at once (zarr's local
store writes each chunk atomically), so edits survive a crash or a cancelled job.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import dask.array as da
import numpy as np
import zarr

FORMAT = 1
HEAD_ARRAY = "prediction_head"


class LabelStoreError(ValueError):
    """A label store that cannot be used as asked (names the folder and the reason)."""


@dataclass(frozen=True)
class ClassInfo:
    """One class: its id in the label arrays (1..255), name and colour (``#rrggbb``)."""

    id: int
    name: str
    color: str


class LabelStore:
    """Predictions and edits of one slide at the analysis level.

    Use :meth:`create` or :meth:`open`; do not call the constructor directly.
    """

    def __init__(self, path: Path, group: zarr.Group):
        self.path = Path(path)
        self._group = group
        self.prediction: zarr.Array = group["prediction"]
        self.edits: zarr.Array = group["edits"]
        if HEAD_ARRAY not in group:  # a store from before heads were recorded: all unknown
            group.create_array(HEAD_ARRAY, shape=self.prediction.shape, chunks=self.prediction.chunks,
                               dtype="uint16", fill_value=0)
        self.prediction_head: zarr.Array = group[HEAD_ARRAY]

    # --- opening -------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | Path,
        *,
        shape: tuple[int, int],
        mpp: float | None,
        downsample: tuple[float, float],
        slide_identity: str,
        classes: Sequence[ClassInfo] = (),
        chunk: int = 512,
    ) -> "LabelStore":
        """Open the store at ``path``, creating it when it does not exist.

        An existing store is reused only when it belongs to the same slide and has the same
        shape; otherwise :class:`LabelStoreError` is raised and nothing is changed, so a
        person's edits are never overwritten by a store for another slide.

        Parameters
        ----------
        path : path
            Folder of the zarr group (created).
        shape : (int, int)
            (height, width) of the analysis grid.
        mpp : float or None
            µm per pixel of the analysis grid.
        downsample : (float, float)
            (dy, dx) level-0 pixels per analysis pixel.
        slide_identity : str
            Identity of the slide (see ``Slide.identity``).
        classes : sequence of ClassInfo
            Classes known so far (can be changed later with :meth:`set_classes`).
        chunk : int
            Chunk side in pixels.
        """
        path = Path(path)
        shape = (int(shape[0]), int(shape[1]))
        if path.exists():
            store = cls.open(path)
            if store.slide_identity != slide_identity or store.shape != shape:
                raise LabelStoreError(
                    f"The label store {path} belongs to another slide or grid "
                    f"({store.slide_identity!r}, shape {store.shape}) than the one asked for "
                    f"({slide_identity!r}, shape {shape}). Move it away or pick another folder; "
                    "it was left unchanged."
                )
            return store
        group = zarr.open_group(str(path), mode="w-")
        for name in ("prediction", "edits"):
            group.create_array(
                name, shape=shape, chunks=(chunk, chunk), dtype="uint8", fill_value=0
            )
        group.create_array(HEAD_ARRAY, shape=shape, chunks=(chunk, chunk), dtype="uint16", fill_value=0)
        group.attrs.update(
            {
                "format": FORMAT,
                "mpp": mpp,
                "downsample": [float(downsample[0]), float(downsample[1])],
                "slide_identity": slide_identity,
                "classes": [c.__dict__ for c in classes],
            }
        )
        return cls(path, group)

    @classmethod
    def open(cls, path: str | Path) -> "LabelStore":
        """Open an existing store; raises :class:`LabelStoreError` naming what is wrong."""
        path = Path(path)
        if not path.exists():
            raise LabelStoreError(f"No label store at {path}.")
        try:
            group = zarr.open_group(str(path), mode="r+")
            fmt = group.attrs.get("format")
            missing = [n for n in ("prediction", "edits") if n not in group]
        except Exception as exc:  # zarr raises several types for a damaged folder
            raise LabelStoreError(f"{path} is not a readable label store: {exc}") from exc
        if fmt != FORMAT or missing:
            raise LabelStoreError(
                f"{path} is not a napari-pathsegdiff label store (format {fmt!r}, "
                f"missing arrays {missing}). Pick another folder."
            )
        return cls(path, group)

    # --- metadata ------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the analysis grid."""
        return tuple(int(s) for s in self.prediction.shape)  # type: ignore[return-value]

    @property
    def mpp(self) -> float | None:
        """µm per pixel of the analysis grid."""
        return self._group.attrs.get("mpp")

    @property
    def downsample(self) -> tuple[float, float]:
        """(dy, dx) level-0 pixels per analysis pixel."""
        dy, dx = self._group.attrs["downsample"]
        return (float(dy), float(dx))

    @property
    def given_slide_mpp(self) -> float | None:
        """Level-0 µm/px a person gave for a slide whose file records none (else None)."""
        value = self._group.attrs.get("slide_mpp_given")
        return None if value is None else float(value)

    def set_given_slide_mpp(self, mpp: float) -> None:
        """Record the level-0 µm/px a person gave for the slide; the analysis grid's µm/px
        (:attr:`mpp`) follows from it and the grid's downsample."""
        if not (isinstance(mpp, (int, float)) and math.isfinite(mpp) and mpp > 0):
            raise LabelStoreError(f"The µm/px must be a positive number, got {mpp!r}.")
        dy, dx = self.downsample
        self._group.attrs.update({"slide_mpp_given": float(mpp), "mpp": float(mpp) * (dy + dx) / 2})

    @property
    def slide_identity(self) -> str:
        """Identity of the slide the store belongs to."""
        return str(self._group.attrs["slide_identity"])

    @property
    def classes(self) -> list[ClassInfo]:
        """The classes, in the order they were given."""
        return [ClassInfo(**c) for c in self._group.attrs.get("classes", [])]

    def set_classes(self, classes: Sequence[ClassInfo]) -> None:
        """Replace the class table (ids must be unique and within 1..255)."""
        ids = [c.id for c in classes]
        if len(set(ids)) != len(ids) or any(not 1 <= i <= 255 for i in ids):
            raise LabelStoreError(f"Class ids must be unique and within 1..255, got {ids}.")
        self._group.attrs["classes"] = [c.__dict__ for c in classes]

    # --- writing -------------------------------------------------------------------------
    def write_prediction(self, y: int, x: int, labels: np.ndarray, *, head: str | None = None) -> None:
        """Write predicted class ids with their top-left corner at (y, x).

        Only ``prediction`` (and the record of which ``head`` made it) changes; painted pixels
        stay as painted in the merged view. The labels are written before the head record, so
        a crash in between leaves them marked as made by the head before: stale, never
        wrongly current.

        Parameters
        ----------
        y, x : int
            Top-left corner in analysis pixels.
        labels : ndarray of int
            Predicted class ids (0: nothing predicted).
        head : str, optional
            Identity of the head that predicted them (unknown when None).
        """
        labels = self._check_block(y, x, labels)
        h, w = labels.shape
        self.prediction[y : y + h, x : x + w] = labels
        index = self.head_index(head) if head is not None else 0
        self.prediction_head[y : y + h, x : x + w] = np.where(labels > 0, index, 0).astype(np.uint16)

    # --- which head predicted what ---------------------------------------------------------
    @property
    def heads(self) -> list[str]:
        """Identities of the heads that wrote predictions, in order (index 1 is the first)."""
        return list(self._group.attrs.get("heads", []))

    def head_index(self, head: str) -> int:
        """The index that marks pixels predicted by ``head`` (recorded on first use)."""
        heads = self.heads
        if head not in heads:
            if len(heads) >= np.iinfo(np.uint16).max - 1:
                raise LabelStoreError(f"The store {self.path} has recorded too many heads.")
            heads.append(head)
            self._group.attrs["heads"] = heads
        return heads.index(head) + 1

    def stale_windows(self, head: str | None) -> list[tuple[int, int, int, int]]:
        """(y, x, height, width) of every chunk with predicted pixels that ``head`` did not make.

        Pixels whose head is unknown (predicted before heads were recorded) count as stale.
        With ``head`` None every predicted chunk is listed.
        """
        current = self.heads.index(head) + 1 if head in self.heads else -1
        out = []
        for y, x, h, w in self._stored_chunks("prediction"):
            predicted = np.asarray(self.prediction[y : y + h, x : x + w]) > 0
            made_by = np.asarray(self.prediction_head[y : y + h, x : x + w])
            if (predicted & (made_by != current)).any():
                out.append((y, x, h, w))
        return out

    def prediction_heads(self) -> dict[str | None, int]:
        """Predicted pixels per head identity over the whole store (None: unknown head)."""
        heads, counts = self.heads, {}
        for y, x, h, w in self._stored_chunks("prediction"):
            predicted = np.asarray(self.prediction[y : y + h, x : x + w]) > 0
            ids, n = np.unique(np.asarray(self.prediction_head[y : y + h, x : x + w])[predicted],
                               return_counts=True)
            for i, k in zip(ids.tolist(), n.tolist()):
                key = heads[i - 1] if 0 < i <= len(heads) else None
                counts[key] = counts.get(key, 0) + k
        return counts

    def write_edits(self, y: int, x: int, values: np.ndarray, where: np.ndarray | None = None) -> None:
        """Record painted class ids (0 removes an edit) with their top-left corner at (y, x).

        Parameters
        ----------
        y, x : int
            Top-left corner in analysis pixels.
        values : ndarray of int
            Painted class ids.
        where : ndarray of bool, optional
            Only these pixels were painted; others keep their stored edit.
        """
        values = self._check_block(y, x, values)
        h, w = values.shape
        if where is not None:
            where = np.asarray(where, dtype=bool)
            if where.shape != values.shape:
                raise LabelStoreError(
                    f"The paint mask has shape {where.shape}, the values {values.shape}."
                )
            current = np.asarray(self.edits[y : y + h, x : x + w])
            values = np.where(where, values, current).astype(np.uint8)
        self.edits[y : y + h, x : x + w] = values

    def write_edit_points(self, points: np.ndarray, values: np.ndarray | int) -> None:
        """Record painted class ids at individual ``(N, 2)`` (y, x) points (napari paint events)."""
        points = np.asarray(points, dtype=np.int64).reshape(-1, 2)
        if len(points) == 0:
            return
        values = np.broadcast_to(np.asarray(values), (len(points),)).astype(np.int64)
        if values.min() < 0 or values.max() > 255:
            raise LabelStoreError("Class ids must be within 0..255.")
        h, w = self.shape
        keep = (points[:, 0] >= 0) & (points[:, 0] < h) & (points[:, 1] >= 0) & (points[:, 1] < w)
        points, values = points[keep], values[keep]
        if len(points) == 0:
            return
        y0, x0 = points.min(axis=0)
        y1, x1 = points.max(axis=0) + 1
        block = np.asarray(self.edits[y0:y1, x0:x1]).copy()
        block[points[:, 0] - y0, points[:, 1] - x0] = values
        self.edits[y0:y1, x0:x1] = block

    def _check_block(self, y: int, x: int, block: np.ndarray) -> np.ndarray:
        block = np.asarray(block)
        if block.ndim != 2:
            raise LabelStoreError(f"Expected a 2D array of class ids, got shape {block.shape}.")
        if block.size and (block.min() < 0 or block.max() > 255):
            raise LabelStoreError("Class ids must be within 0..255.")
        h, w = block.shape
        H, W = self.shape
        if y < 0 or x < 0 or y + h > H or x + w > W:
            raise LabelStoreError(
                f"A block of shape {(h, w)} at (y={y}, x={x}) does not fit the store of shape {(H, W)}."
            )
        return block.astype(np.uint8, copy=False)

    # --- reading -------------------------------------------------------------------------
    def read(self, y: int, x: int, height: int, width: int, *, which: str = "merged") -> np.ndarray:
        """Class ids of a window: ``"merged"`` (edits over prediction), ``"prediction"`` or ``"edits"``."""
        sl = (slice(y, y + height), slice(x, x + width))
        if which == "prediction":
            return np.asarray(self.prediction[sl])
        if which == "edits":
            return np.asarray(self.edits[sl])
        if which != "merged":
            raise ValueError(f"which must be 'merged', 'prediction' or 'edits', got {which!r}.")
        edits = np.asarray(self.edits[sl])
        return np.where(edits > 0, edits, np.asarray(self.prediction[sl]))

    def merged(self) -> da.Array:
        """The merged view as a lazy dask array (edits over prediction)."""
        pred = da.from_zarr(self.prediction)
        edits = da.from_zarr(self.edits)
        return da.where(edits > 0, edits, pred)

    def edited_windows(self) -> list[tuple[int, int, int, int]]:
        """(y, x, height, width) of every chunk that holds at least one painted pixel.

        Only chunks stored on disk are looked at (zarr does not store chunks that are all 0),
        so this costs nothing on an unpainted whole slide.
        """
        return [(y, x, h, w) for y, x, h, w in self._stored_chunks("edits")
                if np.any(np.asarray(self.edits[y : y + h, x : x + w]))]

    def _stored_chunks(self, name: str) -> list[tuple[int, int, int, int]]:
        """(y, x, height, width) of the chunks of array ``name`` written to disk."""
        ch, cw = self._group[name].chunks
        H, W = self.shape
        out = []
        chunk_dir = self.path / name / "c"
        for key in sorted(chunk_dir.glob("*/*")) if chunk_dir.is_dir() else []:
            if not (key.parent.name.isdigit() and key.name.isdigit()):
                continue  # a temporary file of a write in progress
            cy, cx = int(key.parent.name) * ch, int(key.name) * cw
            out.append((cy, cx, min(ch, H - cy), min(cw, W - cx)))
        return out

    def painted_pixel_count(self) -> int:
        """Number of painted pixels."""
        return int(sum(np.count_nonzero(self.read(*w, which="edits")) for w in self.edited_windows()))

    def describe(self) -> str:
        """One JSON line about the store, for logs."""
        return json.dumps(
            {"path": str(self.path), "shape": self.shape, "mpp": self.mpp, "classes": len(self.classes)}
        )
