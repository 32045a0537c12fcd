"""Tile features kept on disk within a byte budget, so that a reopened slide is warm.

One ``.npz`` file per tile (numpy's own format, read with ``allow_pickle=False``: nothing is
unpickled) named by a hash of the tile's key (:func:`~.feature_cache.feature_key`: slide
identity, level, scale, grid, tile position, extractor identity). The file also holds the key
itself, checked on every read: a file written for another key, damaged, truncated or holding
anything but float16 feature maps is ignored, deleted and computed again, never trusted.
Files are written atomically (:func:`~.atomic.write_bytes_atomic`, without waiting for the disk:
a file a power loss damaged is caught by the check and rebuilt); reading a file marks it
used (its modification time), and the least recently used files are deleted when the folder
grows past its budget.

Examples
--------
>>> import tempfile
>>> cache = DiskFeatureCache(tempfile.mkdtemp(), max_bytes=10_000)
>>> cache.put(("slide", 0, 3), [np.ones((2, 4, 4), np.float16)])
True
>>> [m.shape for m in cache.get(("slide", 0, 3))], cache.get(("slide", 0, 4))
([(2, 4, 4)], None)
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from pathlib import Path
from typing import Hashable

import numpy as np

from .atomic import write_bytes_atomic

DEFAULT_DISK_BUDGET_BYTES = 2 * 1024**3
SUFFIX = ".npz"
FORMAT = "pathsegdiff-features-1"


class DiskFeatureCache:
    """Per-tile feature lists in a folder, bounded by bytes, least recently used evicted first.

    Parameters
    ----------
    folder : path
        Where the files live (created when needed). Use one folder per session: files of
        other slides or extractors never match a key, but they share the budget.
    max_bytes : int
        Budget of the folder's files; 0 keeps nothing.

    Attributes
    ----------
    hits, misses, rejected, evictions : int
        Reads found, reads not found, files ignored and deleted (damaged or another key's),
        files deleted for the budget.
    """

    def __init__(self, folder: str | os.PathLike, *, max_bytes: int = DEFAULT_DISK_BUDGET_BYTES):
        if max_bytes < 0:
            raise ValueError(f"Disk feature cache budget must be >= 0 bytes, got {max_bytes}.")
        self.folder = Path(folder)
        self.max_bytes = int(max_bytes)
        self.hits = self.misses = self.rejected = self.evictions = 0
        self._lock = threading.Lock()
        self._files: dict[str, tuple[int, float]] | None = None  # name -> (bytes, last use)

    # --- reading ------------------------------------------------------------------------------
    def get(self, key: Hashable) -> list[np.ndarray] | None:
        """The feature maps stored under ``key``, or ``None`` (absent, damaged or foreign)."""
        path = self._path(key)
        try:
            data = path.read_bytes()
        except OSError:
            self.misses += 1
            return None
        maps = _decode(data, _key_text(key))
        if maps is None:
            self._forget(path, rejected=True)
            self.misses += 1
            return None
        now = time.time()
        try:
            os.utime(path, (now, now))
        except OSError:
            pass
        with self._lock:
            if self._files is not None and path.name in self._files:
                self._files[path.name] = (self._files[path.name][0], now)
        self.hits += 1
        return maps

    # --- writing ------------------------------------------------------------------------------
    def put(self, key: Hashable, value: list[np.ndarray]) -> bool:
        """Store ``value`` (float16 maps) under ``key``; returns whether it was kept.

        A value larger than the whole budget is not written; a folder that cannot be written
        (full disk, read-only) is not an error: the features are simply not kept.
        """
        data = _encode(value, _key_text(key))
        if len(data) > self.max_bytes:
            return False
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(path, data, durable=False)  # checked on reading, rebuilt if lost
        except OSError:
            return False
        with self._lock:
            files = self._index()
            files[path.name] = (len(data), time.time())
            self._evict(files)
        return path.exists()

    # --- the budget ---------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Bytes of the folder's feature files."""
        with self._lock:
            return sum(size for size, _ in self._index().values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._index())

    def stats(self) -> dict[str, int]:
        """Files, bytes, budget, hits, misses, rejected files and evictions."""
        with self._lock:
            files = self._index()
            return {"files": len(files), "bytes": sum(s for s, _ in files.values()), "max_bytes": self.max_bytes,
                    "hits": self.hits, "misses": self.misses, "rejected": self.rejected,
                    "evictions": self.evictions}

    def _index(self) -> dict[str, tuple[int, float]]:
        """Name -> (bytes, last use) of the feature files, read from the folder once (locked)."""
        if self._files is None:
            self._files = {}
            try:
                entries = list(os.scandir(self.folder))
            except OSError:
                entries = []
            for entry in entries:
                if not entry.is_file():
                    continue
                if entry.name.startswith("."):  # a write killed before its rename
                    _unlink(Path(entry.path))
                elif entry.name.endswith(SUFFIX):
                    st = entry.stat()
                    self._files[entry.name] = (st.st_size, st.st_mtime)
        return self._files

    def _evict(self, files: dict[str, tuple[int, float]]) -> None:
        total = sum(size for size, _ in files.values())
        if total <= self.max_bytes:
            return
        for name, (size, _) in sorted(files.items(), key=lambda item: item[1][1]):
            if total <= self.max_bytes:
                break
            _unlink(self.folder / name)
            del files[name]
            total -= size
            self.evictions += 1

    def _forget(self, path: Path, *, rejected: bool) -> None:
        _unlink(path)
        with self._lock:
            if self._files is not None:
                self._files.pop(path.name, None)
        if rejected:
            self.rejected += 1

    def _path(self, key: Hashable) -> Path:
        digest = hashlib.sha256(_key_text(key).encode("utf-8")).hexdigest()[:40]
        return self.folder / f"{digest}{SUFFIX}"


# --- the file format ---------------------------------------------------------------------------
def _key_text(key: Hashable) -> str:
    return f"{FORMAT}:{key!r}"


def _encode(value: list[np.ndarray], key: str) -> bytes:
    arrays = {"key": np.array(key)}
    for i, a in enumerate(value):
        arrays[f"map_{i}"] = np.ascontiguousarray(a, dtype=np.float16)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _decode(data: bytes, key: str) -> list[np.ndarray] | None:
    """The maps of a file written for ``key``; None for anything else."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            if "key" not in npz.files or str(npz["key"]) != key:
                return None
            names = sorted((n for n in npz.files if n.startswith("map_")), key=lambda n: int(n[4:]))
            if not names or names != [f"map_{i}" for i in range(len(names))]:
                return None
            maps = [npz[n] for n in names]
    except Exception:  # noqa: BLE001 - a damaged file of any kind is ignored, not trusted
        return None
    if any(m.dtype != np.float16 or m.ndim != 3 for m in maps):
        return None
    for m in maps:
        m.flags.writeable = False
    return maps


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass
