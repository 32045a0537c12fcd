"""Fused features: several extractors on the same tiles, in the engine, the head and the CLI."""

from __future__ import annotations

import numpy as np
import pytest

from napari_pathsegdiff.cli import main
from napari_pathsegdiff.core.images import read_mask
from napari_pathsegdiff.models.backbone import build_random_backbone
from napari_pathsegdiff.models.diffusion_features import DiffusionFeatures
from napari_pathsegdiff.models.features import (
    ClassicFeatures, RGBFeatures, build_extractor, feature_kind, make_extractor, parse_feature_kind,
    with_backbone,
)
from napari_pathsegdiff.models.fused_features import FusedFeatures
from napari_pathsegdiff.models.heads import HeadError, describe_feature_config, load_head, new_head


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bb") / "tiny"
    build_random_backbone("tiny", seed=0, name="tiny-fused").save(folder)
    return folder


def test_maps_are_the_parts_maps_in_order():
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, (2, 40, 48, 3), dtype=np.uint8)
    rgb, classic = RGBFeatures(), ClassicFeatures(num_sigma=2, sigma_max=4)
    fused = FusedFeatures([rgb, classic])
    maps = fused.extract(tiles)
    assert [m.shape for m in maps] == [(2, 3, 40, 48), (2, 24, 40, 48)]
    np.testing.assert_array_equal(maps[0], rgb.extract(tiles)[0])
    np.testing.assert_array_equal(maps[1], classic.extract(tiles)[0])
    assert fused.channels == [3, 24] and fused.strides == [1, 1]
    assert fused.halo == classic.halo == 16 and fused.tile_size == 512 and fused.mpp is None


def test_geometry_follows_the_diffusion_part(tiny_folder):
    diffusion = make_extractor("diffusion", backbone=str(tiny_folder))
    fused = make_extractor("diffusion+classic", backbone=str(tiny_folder))
    assert isinstance(fused, FusedFeatures) and isinstance(fused.parts[0], DiffusionFeatures)
    assert fused.mpp == diffusion.mpp == 0.5
    assert fused.multiple == diffusion.multiple and fused.halo == max(diffusion.halo, 64)
    assert fused.channels == diffusion.channels + [60]
    assert fused.strides == diffusion.strides + [1]
    tiles = np.full((1, 2 * fused.multiple, 2 * fused.multiple, 3), 200, np.uint8)
    maps = fused.extract(tiles)
    assert len(maps) == len(diffusion.channels) + 1
    np.testing.assert_array_equal(maps[0], diffusion.extract(tiles)[0])


def test_config_round_trip_and_identity(tiny_folder):
    fused = make_extractor("diffusion+rgb", backbone=str(tiny_folder))
    config = fused.config()
    assert config["kind"] == "fused" and [p["kind"] for p in config["parts"]] == ["diffusion", "rgb"]
    assert feature_kind(config) == "diffusion+rgb"
    again = build_extractor(config)
    assert again.identity == fused.identity
    assert fused.identity.startswith("fused(diffusion:tiny-fused@") and fused.identity.endswith("+rgb:v1)")
    assert describe_feature_config(config).startswith(f"--features diffusion+rgb --backbone {tiny_folder}")


def test_bad_kinds_and_parts_are_clear_errors():
    with pytest.raises(ValueError, match="Unknown features 'diffusion\\+sift'"):
        parse_feature_kind("diffusion+sift")
    with pytest.raises(ValueError, match="distinct"):
        make_extractor("rgb+rgb")
    with pytest.raises(ValueError, match="at least two"):
        FusedFeatures([RGBFeatures()])
    with pytest.raises(ValueError, match="cannot contain fused"):
        FusedFeatures([RGBFeatures(), FusedFeatures([RGBFeatures(), ClassicFeatures()])])
    with pytest.raises(ValueError, match="needs a list of 'parts'"):
        build_extractor({"kind": "fused"})
    with pytest.raises(ValueError, match="not to rgb\\+classic features"):
        with_backbone({"kind": "fused", "parts": [{"kind": "rgb"}, {"kind": "classic"}]}, "x")


def test_a_fused_head_refuses_one_of_its_parts():
    fused = FusedFeatures([RGBFeatures(), ClassicFeatures(num_sigma=1)])
    head = new_head(fused, [0, 1])
    head.check_compatible(fused)
    with pytest.raises(HeadError):
        head.check_compatible(RGBFeatures())


def test_cli_trains_and_predicts_with_fused_features(shared_data, tmp_path, tiny_folder, capsys):
    from PIL import Image

    src = shared_data / "glas" / "train"
    for sub in ("images", "masks"):
        (tmp_path / sub).mkdir()
        a = np.asarray(Image.open(src / sub / "train_2.png"))[:96, :128]
        Image.fromarray(np.ascontiguousarray(a)).save(tmp_path / sub / "train_2.png")
    out = tmp_path / "head"
    assert main(["train", "--images", str(tmp_path / "images"), "--masks", str(tmp_path / "masks"),
                 "--out", str(out), "--features", "diffusion+rgb", "--backbone", str(tiny_folder),
                 "--steps", "6", "--device", "cpu"]) == 0
    head = load_head(out)
    assert feature_kind(head.config.feature_config) == "diffusion+rgb"
    assert main(["predict", "--head", str(out), "--out", str(tmp_path / "pred"), "--device", "cpu",
                 str(tmp_path / "images" / "train_2.png")]) == 0
    labels = read_mask(tmp_path / "pred" / "train_2.png")
    assert labels.shape == (96, 128) and set(np.unique(labels)) <= {0, 1}

    capsys.readouterr()
    assert main(["predict", "--head", str(out), "--out", str(tmp_path / "p2"), "--features", "classic",
                 str(tmp_path / "images" / "train_2.png")]) == 2
    assert "needs diffusion+rgb features, not classic" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--images", "x", "--masks", "y", "--out", "z", "--features", "diffusion+sift"])
