"""The demo-head recipe: labels of the sample slide, and the script's guard for the shipped head."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from napari_pathsegdiff._sample_data import sample_slide_path
from napari_pathsegdiff.core.slide import open_slide
from napari_pathsegdiff.models.heads import load_head

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_demo_head.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("make_demo_head", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_labels_separate_glass_stroma_and_nuclei_rich_tissue(script):
    with open_slide(sample_slide_path()) as slide:
        rgb = np.asarray(slide.levels[0][800:1312, 400:912])
    labels, numbers = script.demo_labels(rgb, mpp=0.499)
    assert labels.shape == (512, 512) and labels.dtype == np.uint8
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    # glass is bright, nuclei-rich tissue darker and bluer than stroma
    grey = rgb.mean(-1)
    assert grey[labels == 1].mean() > 220
    hema = [rgb[labels == k][:, 2].astype(float).mean() - rgb[labels == k][:, 0].mean() for k in (2, 3)]
    assert hema[1] > hema[0]
    # borders between classes are left unlabelled, 6 px (3 µm) wide at 0.499 µm/px
    assert numbers["border_px"] == 6 and 0 < (labels == 0).mean() < 0.3
    assert numbers["pixels"]["unlabelled"] == int((labels == 0).sum())


def test_the_script_trains_and_documents_a_head(script, tmp_path):
    out = tmp_path / "head"
    assert script.main(["--features", "rgb", "--out", str(out), "--region", "800", "400", "256", "256",
                        "--steps", "20"]) == 0
    head = load_head(out)
    assert head.class_ids == [1, 2, 3]
    assert head.class_names == ["background", "stroma", "nuclei-rich tissue"]
    assert head.config.mpp == pytest.approx(0.499)
    card = (out / "CARD.md").read_text()
    assert "CMU-1-Small-Region.svs" in card and "rgb2hed" in card and "`rgb:v1`" in card
    assert str(tmp_path) not in card
    record = json.loads((out / "training.json").read_text())
    assert record["steps"] == 20 and record["features"] == "rgb:v1"


def test_the_shipped_head_needs_the_default_backbone(script, capsys):
    assert script.main(["--features", "rgb"]) == 2
    assert "must be trained on the default backbone" in capsys.readouterr().err
