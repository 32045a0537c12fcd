"""``scripts/synthetic_grid.py``: the README's grid picture and its figures, with a tiny generator
on the default backbone, the CC0 sample slide as style source and a small layout folder."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_pathsegdiff.models.backbone import load_backbone
from napari_pathsegdiff.models.generator import build_generator, save_generator

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "src" / "napari_pathsegdiff" / "sample_data" / "CMU-1-Small-Region.svs"


def _script():
    spec = importlib.util.spec_from_file_location("synthetic_grid", ROOT / "scripts" / "synthetic_grid.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    gen = build_generator(load_backbone("default"), class_ids=[1, 2, 3], config="tiny", seed=0)
    return save_generator(gen, tmp_path_factory.mktemp("gen") / "generator")


def test_grid_picture_and_figures(generator, tmp_path, capsys):
    masks = tmp_path / "masks"
    masks.mkdir()
    layout = np.ones((300, 300), np.uint8)
    layout[100:, :150], layout[:80, 200:] = 2, 3
    Image.fromarray(layout).save(masks / "a.png")
    out = tmp_path / "grid.png"
    assert _script().main(["--generator", str(generator), "--masks", str(masks), "--style", str(SAMPLE),
                           "--out", str(out), "--rows", "2", "--tile", "64", "--n", "4", "--steps", "2",
                           "--style-sources", "4"]) == 0
    grid = np.asarray(Image.open(out))
    side, pad, head = 128, 4, 18  # tiles are shown at 128 px at least
    assert grid.shape == (head + 2 * (side + pad) + pad, 4 * (side + pad) + pad, 3)
    printed = capsys.readouterr().out
    assert "Fréchet distance on guide features, 4 tiles of 64 px: style" in printed
    assert "style sources: CMU-1-Small-Region.svs" in printed
    assert "one 256x256 tile, 2 DDIM steps" in printed


def test_layouts_with_unknown_classes_are_refused(generator, tmp_path, capsys):
    masks = tmp_path / "masks"
    masks.mkdir()
    Image.fromarray(np.full((64, 64), 7, np.uint8)).save(masks / "a.png")
    with pytest.raises(SystemExit):
        _script().main(["--generator", str(generator), "--masks", str(masks), "--style", str(SAMPLE),
                        "--out", str(tmp_path / "g.png")])
    assert "class ids [7] that the generator does not know ([1, 2, 3])" in capsys.readouterr().err
