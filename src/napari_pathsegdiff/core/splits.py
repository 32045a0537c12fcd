"""Fixed train / validation splits of labelled image sets, shared by every benchmark and by
backbone training (which must never see a validation image).

The split of a set of ``n`` images is a seeded permutation of their sorted names: the first
``n_val`` names of the permutation are the validation images.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

__all__ = ["holdout_split", "VALIDATION_SIZES", "SPLIT_SEED"]

SPLIT_SEED = 0
"""Seed of the project's splits."""

VALIDATION_SIZES = {"monuseg": 6, "glas": 3, "gleason": 2, "miccai2015": 5}
"""Number of validation images of each dataset of the benchmarks (train 24/6, 7/3, 3/2, 10/5)."""


def holdout_split(names: Iterable[str], *, n_val: int, seed: int = SPLIT_SEED) -> tuple[list[str], list[str]]:
    """Split image names into (train, validation), both sorted.

    Parameters
    ----------
    names : iterable of str
        File names (order does not matter; duplicates are an error).
    n_val : int
        Number of validation names, ``0 <= n_val <= len(names)``.
    seed : int
        Seed of the permutation.

    Examples
    --------
    >>> train, val = holdout_split(["a.png", "b.png", "c.png", "d.png"], n_val=1)
    >>> len(train), len(val), sorted(train + val) == ["a.png", "b.png", "c.png", "d.png"]
    (3, 1, True)
    """
    names = sorted(names)
    if len(set(names)) != len(names):
        raise ValueError("holdout_split: the names must be unique.")
    if not 0 <= n_val <= len(names):
        raise ValueError(f"holdout_split: n_val={n_val} must lie in [0, {len(names)}].")
    order = np.random.default_rng(seed).permutation(len(names))
    val = sorted(names[i] for i in order[:n_val])
    train = sorted(set(names) - set(val))
    return train, val
