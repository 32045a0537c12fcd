"""An in-memory LRU cache of tile features within a byte budget.

The feature extractor is frozen, so the features of a tile never change: keep them, and
retraining the head or re-predicting a region already seen runs no autoencoder and no UNet.
A key names everything that changes a tile's features (:func:`feature_key`); values are lists
of float16 arrays (one per feature map), stored read-only. With a ``disk`` tier
(:class:`~.disk_feature_cache.DiskFeatureCache`, e.g. in a slide's session folder) features
also outlive the process: a miss in memory is looked up on disk before anything is computed.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Hashable

import numpy as np

DEFAULT_BUDGET_BYTES = 2 * 1024**3


def feature_key(
    *,
    source: str,
    level: int,
    scale: float,
    tile_size: int,
    halo: int,
    row: int,
    col: int,
    extractor: str,
) -> tuple:
    """The cache key of one tile's features.

    Parameters
    ----------
    source : str
        Identity of the image or slide (its path and size, or a content hash).
    level : int
        Pyramid level the tile is read from.
    scale : float
        Source pixels per analysis pixel (resampling changes the pixels, so the features).
    tile_size, halo : int
        Grid geometry: together with ``row`` and ``col`` they fix the pixels read.
    row, col : int
        Absolute grid position of the tile.
    extractor : str
        :attr:`FeatureExtractor.identity` (backbone hash, timesteps, blocks, ...).
    """
    return (source, int(level), float(round(scale, 9)), int(tile_size), int(halo),
            int(row), int(col), extractor)


class FeatureCache:
    """Least-recently-used cache of per-tile feature lists, bounded by bytes.

    Parameters
    ----------
    max_bytes : int
        Budget; the least recently used entries are evicted to stay within it. A value larger
        than the whole budget is not stored.
    disk : DiskFeatureCache, optional
        A second, persistent tier: read on a memory miss, written with every new value.

    Examples
    --------
    >>> cache = FeatureCache(max_bytes=1000)
    >>> cache.put("a", [np.zeros(100, np.float16)])
    True
    >>> cache.get("a")[0].shape, cache.hits, cache.misses
    ((100,), 1, 0)
    """

    def __init__(self, max_bytes: int = DEFAULT_BUDGET_BYTES, *, disk=None):
        if max_bytes < 0:
            raise ValueError(f"Feature cache budget must be >= 0 bytes, got {max_bytes}.")
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[Hashable, tuple[list[np.ndarray], int]] = OrderedDict()
        self._lock = threading.Lock()
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.disk = disk
        self.disk_hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def get(self, key: Hashable) -> list[np.ndarray] | None:
        """The features stored under ``key`` (marked most recently used), or ``None``.

        A key missing from memory is looked up in the disk tier (and kept in memory if found).
        """
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return list(entry[0])
        value = self.disk.get(key) if self.disk is not None else None
        with self._lock:
            if value is None:
                self.misses += 1
                return None
            self.hits += 1
            self.disk_hits += 1
        self._put_memory(key, value)
        return list(value)

    def put(self, key: Hashable, value: list[np.ndarray]) -> bool:
        """Store ``value`` under ``key`` (and on disk); returns whether memory kept it."""
        if self.disk is not None:
            self.disk.put(key, value)
        return self._put_memory(key, value)

    def _put_memory(self, key: Hashable, value: list[np.ndarray]) -> bool:
        arrays = []
        for a in value:
            a = np.asarray(a)
            if a.base is not None:
                a = a.copy()  # own the memory: a view would keep a whole batch alive
            a.flags.writeable = False
            arrays.append(a)
        size = sum(a.nbytes for a in arrays)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.nbytes -= old[1]
            if size > self.max_bytes:
                return False
            while self._entries and self.nbytes + size > self.max_bytes:
                _, (_, freed) = self._entries.popitem(last=False)
                self.nbytes -= freed
                self.evictions += 1
            self._entries[key] = (arrays, size)
            self.nbytes += size
            return True

    def clear(self) -> None:
        """Forget every entry (the counters stay)."""
        with self._lock:
            self._entries.clear()
            self.nbytes = 0

    def stats(self) -> dict[str, int]:
        """Entries, bytes, budget, hits, misses and evictions."""
        return {
            "entries": len(self._entries),
            "bytes": self.nbytes,
            "max_bytes": self.max_bytes,
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
            "disk_hits": self.disk_hits,
        }
