"""The models that ship inside the package: the default backbone and the demo head.

They load offline from the package, are what their cards say, and work together on the
bundled sample slide.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_pathsegdiff.core.progress import drive
from napari_pathsegdiff.core.region import Region
from napari_pathsegdiff.core.slide import open_slide
from napari_pathsegdiff.engine.inference.predict import predict_region
from napari_pathsegdiff.engine.shipped_models import default_backbone_installed, demo_head_folder
from napari_pathsegdiff.models.backbone import backbone_identity, default_backbone_folder, load_backbone
from napari_pathsegdiff.models.features import build_extractor, make_extractor
from napari_pathsegdiff.models.heads import load_head

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "napari_pathsegdiff" / "sample_data" / "CMU-1-Small-Region.svs"


@pytest.fixture(scope="module")
def folder():
    assert default_backbone_installed(), "the default backbone must ship with the package"
    return default_backbone_folder()


def test_the_default_backbone_loads_offline(folder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    backbone = load_backbone("default")
    assert backbone.source == "default" and backbone.name == "pathsegdiff-small"
    assert (backbone.mpp, backbone.tile_size, backbone.conditioning) == (0.5, 256, "guide")
    assert (backbone.default_timesteps, backbone.default_blocks) == ([50, 150], [2, 3])
    assert next(backbone.unet.parameters()).dtype == torch.float32  # fp16 on disk, fp32 to compute


def test_the_model_card_matches_the_files(folder):
    card = (folder / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert f"Identity: `{backbone_identity(folder)}`" in card
    listed = dict(re.findall(r"^\| ([\w/.]+) \| `([0-9a-f]{64})` \|$", card, flags=re.M))
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {"MODEL_CARD.md"}
    assert set(listed) == files
    for name, digest in listed.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name
    # only data whose terms allow shipping: never GlaS or Gleason, never masks
    assert "glas" not in card.lower() and "gleason" not in card.lower() and "/masks/" not in card


def test_the_shipped_weights_are_small_half_precision_safetensors(folder):
    weights = sorted(folder.rglob("*.safetensors"))
    assert [p.parent.name for p in weights] == ["guide", "unet", "vae"]
    assert sum(p.stat().st_size for p in weights) < 60e6
    assert not [p for p in folder.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
    from safetensors import safe_open

    with safe_open(str(folder / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}


def test_default_features_have_the_documented_shapes(folder):
    extractor = make_extractor("diffusion", backbone="default")
    assert extractor.channels == [64, 32, 64, 32]  # t = 50, 150 x up blocks 2, 3
    assert extractor.strides == [4, 4, 4, 4]
    assert (extractor.tile_size, extractor.halo, extractor.multiple, extractor.mpp) == (256, 32, 32, 0.5)
    tiles = np.asarray(open_slide(SAMPLE).read_region(Region(0, 1000, 1000, 64, 96)))[None]
    maps = extractor.extract(tiles)
    assert [m.shape for m in maps] == [(1, 64, 16, 24), (1, 32, 16, 24), (1, 64, 16, 24), (1, 32, 16, 24)]
    assert all(m.dtype == np.float16 and np.isfinite(m).all() and m.astype(np.float32).std() > 0 for m in maps)


def test_the_demo_head_segments_the_sample_slide(folder):
    head_dir = demo_head_folder()
    assert head_dir is not None and (head_dir / "CARD.md").is_file()
    head = load_head(head_dir)
    assert head.class_ids == [1, 2, 3]
    assert head.class_names == ["background", "stroma", "nuclei-rich tissue"]
    extractor = build_extractor(dict(head.config.feature_config))
    head.check_compatible(extractor)
    assert extractor.identity == make_extractor("diffusion", backbone="default").identity
    slide = open_slide(SAMPLE)
    # a strip from the glass at the left margin into the tissue (level 0, 0.499 µm/px)
    region = Region(0, 1400, 0, 512, 1024)
    pred = drive(predict_region(slide, region, head=head, extractor=extractor), show=False)
    labels = np.asarray(pred.labels)
    assert labels.shape == (512, 1024) and set(np.unique(labels)) == {1, 2, 3}
    # it reproduces the recipe it was trained on (scripts/make_demo_head.py) on the labelled pixels
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "scripts" / "make_demo_head.py"
    spec = importlib.util.spec_from_file_location("make_demo_head", script)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    target, _ = recipe.demo_labels(np.asarray(slide.read_region(region)), mpp=slide.mpp)
    labelled = target > 0
    assert labelled.mean() > 0.5
    assert (labels[labelled] == target[labelled]).mean() > 0.85
