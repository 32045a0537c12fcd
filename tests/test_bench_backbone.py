"""Helpers of the backbone benchmark and of the diffusion-feature sweep (scripts/)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _load(name: str):
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))  # the sweep imports bench_backbone
    return importlib.import_module(name)


@pytest.fixture(scope="module")
def bench():
    return _load("bench_backbone")


@pytest.fixture(scope="module")
def sweep():
    return _load("sweep_diffusion_features")


# --- label-efficiency subsets -----------------------------------------------------------------
def test_label_subsets_are_nested_seeded_and_sorted(bench):
    names = [f"img{i:02d}.png" for i in range(24)]
    subsets = bench.label_subsets(reversed(names))
    assert list(subsets) == ["1", "3", "all"]
    assert [len(subsets[k]) for k in subsets] == [1, 3, 24]
    assert set(subsets["1"]) < set(subsets["3"]) < set(subsets["all"])
    assert subsets["3"] == sorted(subsets["3"]) and subsets["all"] == names
    assert bench.label_subsets(names) == subsets  # the input order does not matter
    assert bench.label_subsets(names, seed=1) != subsets


def test_label_subsets_cap_at_the_images_there_are(bench):
    subsets = bench.label_subsets(["b.png", "a.png"])
    assert len(subsets["1"]) == 1
    assert subsets["3"] == subsets["all"] == ["a.png", "b.png"]
    with pytest.raises(ValueError, match="no training images"):
        bench.label_subsets([])


# --- table -----------------------------------------------------------------------------------
def _scores(dice: dict[int, float]) -> dict:
    fg = [c for c in dice if c != 0]
    return {"mean_dice": float(np.mean([dice[c] for c in fg])), "mean_iou": 0.5,
            "per_class": {c: {"dice": d} for c, d in dice.items()}, "classes_in_mean": fg}


def test_markdown_table_layout_values_and_best(bench):
    results = {
        "diffusion": {
            "glas": {"1": _scores({0: 0.9, 1: 0.5}), "3": _scores({0: 0.9, 1: 0.6}), "all": _scores({0: 0.9, 1: 0.7})},
            "gleason": {"all": _scores({1: 0.2, 2: 0.4, 5: 0.9})},
        },
        "classic": {
            "glas": {"1": _scores({1: 0.55}), "3": _scores({1: 0.65}), "all": _scores({1: 0.75})},
            "gleason": {"all": _scores({1: 0.1, 2: 0.3, 5: 0.8})},
        },
    }
    text = bench.markdown_table(results, datasets=["glas", "gleason"], features=["diffusion", "classic"],
                                speed={"diffusion": {"empty_cache_s": 2.5, "cached_s": 0.25}},
                                sizes={"diffusion": "15.2 MB"})
    lines = text.splitlines()
    assert lines[0] == (
        "| features | GlaS Dice (gland) | GlaS mIoU | GlaS mean Dice, 1 / 3 / all img "
        "| Gleason Dice G3 | Gleason Dice G4 | Gleason Dice stroma | Gleason mean Dice | Gleason mIoU "
        "| Gleason mean Dice, 1 / 3 / all img | 1024² region s, empty cache / cached | weights |"
    )
    assert lines[1] == "|---|" + "---:|" * 11
    assert lines[2] == (
        "| diffusion, guide-conditioned | 0.700 | 0.500 | 0.500 / 0.600 / 0.700 | 0.200 | 0.400 | 0.900 "
        "| **0.500** | 0.500 | – / – / 0.500 | 2.50 / 0.25 | 15.2 MB |"
    )
    assert lines[3] == (
        "| classic filter bank | **0.750** | 0.500 | 0.550 / 0.650 / 0.750 | 0.100 | 0.300 | 0.800 "
        "| 0.400 | 0.500 | – / – / 0.400 | – / – | – |"
    )
    assert len(lines) == 4


def test_training_steps_from_a_model_card(bench):
    card = (
        "| stage | objective | steps | budget |\n|---|---|---|---|\n"
        "| guide | SimCLR | 1500 | 1500 |\n| vae | L1 | 2500 | 2500 |\n| unet | MSE | 400 | 200000 |\n"
        "| part | class | parameters |\n| unet | UNet2DConditionModel | 5.65 M |\n"
    )
    assert bench.training_steps(card) == {"guide": 1500, "vae": 2500, "unet": 400}
    assert bench.training_steps("no table") == {}


def test_public_text_hides_machine_paths(bench):
    root, home = Path("/srv/x/repo"), Path("/users/u")
    text = "--backbone /users/u/.cache/b --data /srv/x/shared/data --out /srv/x/repo/o.md /srv/x/repository"
    assert bench.public_text(text, root=root, home=home) == (
        "--backbone ~/.cache/b --data ../shared/data --out ./o.md ../repository"
    )


# --- sweep -----------------------------------------------------------------------------------
def test_parse_sets_and_grids(sweep):
    assert sweep.parse_sets(["10", "150,50", "50,150", "3,3"], "timesteps") == [(10,), (50, 150), (3,)]
    with pytest.raises(SystemExit, match="--blocks: 'a' is not"):
        sweep.parse_sets(["a"], "blocks")
    t_sets, b_sets = [(10,), (50, 150)], [(1,), (1, 2)]
    assert sweep.settings_grid(t_sets, b_sets, base_timesteps=[50, 150], base_blocks=[1, 2], grid="full") == [
        ((50, 150), (1, 2)), ((10,), (1,)), ((10,), (1, 2)), ((50, 150), (1,))
    ]
    with pytest.raises(ValueError, match="Unknown grid 'x'"):
        sweep.settings_grid(t_sets, b_sets, base_timesteps=[50], base_blocks=[1], grid="x")


def test_subset_of_memoised_features_equals_direct_extraction(sweep):
    from napari_pathsegdiff.models.backbone import build_random_backbone
    from napari_pathsegdiff.models.diffusion_features import DiffusionFeatures

    bb = build_random_backbone("tiny", seed=0)
    full = DiffusionFeatures(bb, timesteps=[10, 50, 200], blocks=[0, 1])
    calls = []
    extract = full.extract
    full.extract = lambda tiles: calls.append(len(tiles)) or extract(tiles)
    memo = sweep.MemoFeatures(full)
    direct = DiffusionFeatures(bb, timesteps=[200, 10], blocks=[1])
    sub = sweep.subset_extractor(direct, memo)
    assert (sub.identity, sub.channels, sub.strides, sub.config()) == (
        direct.identity, direct.channels, direct.strides, direct.config())
    tiles = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    got = sub.extract(tiles)
    want = direct.extract(tiles)
    assert [g.shape for g in got] == [w.shape for w in want] == [(3, 24, 8, 8)] * 2
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    sub.extract(tiles[::-1])  # the same tiles again, in another order: no new UNet pass
    assert calls == [3]
