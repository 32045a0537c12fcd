"""The style-generator benchmark (scripts/bench_generator.py): its Fréchet distance and a whole
run at smoke scale on a tiny dataset."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(scope="module")
def bench():
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    return importlib.import_module("bench_generator")


def test_frechet_distance_is_zero_for_one_set_and_the_squared_shift_for_a_moved_one(bench):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 3))
    assert bench.frechet(a, a) == pytest.approx(0.0, abs=1e-6)
    # same covariance, mean moved by (2, 0, 1): distance |shift|^2 = 5
    assert bench.frechet(a, a + np.array([2.0, 0.0, 1.0])) == pytest.approx(5.0, abs=1e-6)


def _tiny_glas(root: Path) -> None:
    """Six 96x96 'images' with two classes (a purple square on pink tissue), GlaS layout."""
    rng = np.random.default_rng(1)
    for sub in ("images", "masks"):
        (root / "glas" / "train" / sub).mkdir(parents=True)
    for i in range(6):
        mask = np.zeros((96, 96), np.uint8)
        y, x = rng.integers(8, 40, size=2)
        mask[y : y + 40, x : x + 40] = 1
        img = np.where(mask[..., None] == 1, [150, 60, 140], [225, 150, 190]).astype(np.uint8)
        img = np.clip(img + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / "glas" / "train" / "images" / f"img{i}.png")
        Image.fromarray(mask).save(root / "glas" / "train" / "masks" / f"img{i}.png")


def test_a_smoke_run_writes_real_only_and_real_plus_synthetic_scores(bench, tmp_path, monkeypatch):
    _tiny_glas(tmp_path / "data")
    out = tmp_path / "figures.json"
    monkeypatch.setattr(sys, "argv", [
        "bench_generator.py", "--random-backbone", "--data", str(tmp_path / "data"), "--datasets", "glas",
        "--labelled", "1", "--steps", "2", "--batch", "2", "--tile", "64", "--style-size", "32",
        "--n-synthetic", "2", "--gen-steps", "2", "--features", "rgb", "--head-steps", "3", "--head-seeds", "2",
        "--fd-tiles", "4", "--time-tiles", "0", "--work", str(tmp_path / "work"), "--json", str(out),
    ])
    bench.main()
    figures = json.loads(out.read_text())
    run = figures["datasets"]["glas"]["runs"]["L1"]
    assert len(figures["datasets"]["glas"]["validation"]) == 3
    assert len(run["labelled"]) == 1 and run["style_sources"] == 2  # the other train images
    assert run["generator_steps"] == 2
    for key in ("real_only", "real_plus_synthetic"):
        scores = run[key]
        assert scores["seeds"] == [0, 1] and len(scores["per_seed_mean"]) == 2
        assert len(scores["per_image"]) == 3
        assert scores["mean"] == pytest.approx(np.mean(scores["per_image"]))
        assert scores["std"] == pytest.approx(np.std(scores["per_image"]))
        assert all(0.0 <= v <= 1.0 for v in scores["per_image"])
    synthetic = sorted((tmp_path / "work" / "glas" / "L1" / "synthetic" / "images").iterdir())
    assert len(synthetic) == 2
    fd = figures["datasets"]["glas"]["frechet_guide"]
    assert set(fd) == {"style", "no_style", "real_vs_real"} and all(v >= 0 for v in fd.values())
