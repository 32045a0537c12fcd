"""The fixed train / validation splits shared by the benchmarks and backbone training."""

from __future__ import annotations

import pytest

from napari_pathsegdiff.core.splits import VALIDATION_SIZES, holdout_split


def test_split_is_a_fixed_partition():
    names = [f"img{i:02d}.png" for i in range(30)]
    train, val = holdout_split(reversed(names), n_val=6)
    assert len(train) == 24 and len(val) == 6
    assert sorted(train + val) == names and not set(train) & set(val)
    assert (train, val) == holdout_split(names, n_val=6)  # order of the input does not matter
    assert holdout_split(names, n_val=6, seed=1)[1] != val


def test_split_errors():
    with pytest.raises(ValueError, match="n_val=5 must lie in"):
        holdout_split(["a", "b"], n_val=5)
    with pytest.raises(ValueError, match="unique"):
        holdout_split(["a", "a"], n_val=1)


def test_real_validation_images_exist(shared_data):
    for dataset, folder in [("monuseg", "monuseg/train/images"), ("miccai2015", "miccai2015/images")]:
        names = [p.name for p in (shared_data / folder).iterdir()]
        train, val = holdout_split(names, n_val=VALIDATION_SIZES[dataset])
        assert len(val) == VALIDATION_SIZES[dataset] and len(train) == len(names) - len(val)
