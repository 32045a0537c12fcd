"""The segmentation head: folder round trip, strict loading, compatibility, class ids."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_pathsegdiff.models.features import ClassicFeatures, RGBFeatures, build_extractor
from napari_pathsegdiff.models.heads import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    HeadError,
    SegmentationHead,
    load_head,
    new_head,
    save_head,
)


@pytest.fixture
def rgb():
    return RGBFeatures(tile_size=32, halo=4)


def _head(extractor, ids=(1, 2, 4, 5)):
    torch.manual_seed(0)
    return new_head(extractor, list(ids), class_names=["g3", "g4", "benign", "stroma"][: len(ids)],
                    mpp=0.5)


def test_save_load_gives_identical_predictions_and_config(tmp_path, rgb):
    head = _head(rgb)
    head.set_normalization([np.array([0.4, 0.5, 0.6])], [np.array([0.2, 0.1, 0.3])])
    save_head(head, tmp_path / "head")
    assert sorted(p.name for p in (tmp_path / "head").iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    loaded = load_head(tmp_path / "head", extractor=rgb)
    assert not loaded.training
    assert loaded.class_ids == [1, 2, 4, 5]
    assert loaded.class_names == ["g3", "g4", "benign", "stroma"]
    assert loaded.class_colors == head.class_colors and loaded.class_colors[0].startswith("#")
    assert loaded.config.mpp == 0.5 and loaded.config.feature_identity == "rgb:v1"
    assert loaded.config.feature_config == rgb.config()
    x = torch.from_numpy(rgb.extract(np.random.default_rng(0).integers(0, 256, (2, 40, 40, 3), dtype=np.uint8))[0])
    head.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded([x]), head([x]), rtol=0, atol=0)
    assert build_extractor(loaded.config.feature_config).identity == rgb.identity


def test_head_for_one_extractor_refuses_another(tmp_path, rgb):
    save_head(_head(rgb), tmp_path / "head")
    with pytest.raises(HeadError, match=r"trained on features 'rgb:v1' but the extractor gives 'classic:"):
        load_head(tmp_path / "head", extractor=ClassicFeatures())


def test_head_for_backbone_a_refuses_backbone_b():
    from napari_pathsegdiff.models.backbone import build_random_backbone
    from napari_pathsegdiff.models.diffusion_features import DiffusionFeatures

    a = DiffusionFeatures(build_random_backbone("tiny", seed=0, name="bb-a"))
    b = DiffusionFeatures(build_random_backbone("tiny", seed=1, name="bb-b"))
    head = _head(a)
    head.check_compatible(a)
    with pytest.raises(HeadError, match=r"trained on features 'diffusion:bb-a@[0-9a-f]{12}.*gives 'diffusion:bb-b@"):
        head.check_compatible(b)


def test_class_ids_map_to_outputs_and_back(rgb):
    head = _head(rgb)
    mask = np.array([[1, 2], [4, 5], [9, 9]], np.uint8)
    np.testing.assert_array_equal(
        head.encode_labels(mask, unlabelled=9), [[0, 1], [2, 3], [-1, -1]]
    )
    np.testing.assert_array_equal(head.decode_indices(np.array([[3, 0]])), [[5, 1]])
    assert head.decode_indices(np.array([2])).dtype == np.uint8


def test_unknown_class_id_in_a_mask_is_a_clear_error(rgb):
    head = _head(rgb)
    with pytest.raises(HeadError, match=r"mask_a\.png holds class id\(s\) \[3, 7\] that the head does not know; "
                                        r"its classes are 1 \(g3\), 2 \(g4\), 4 \(benign\), 5 \(stroma\)"):
        head.encode_labels(np.array([[1, 3], [7, 2]]), name="mask_a.png")


def test_missing_and_corrupt_folders_are_clear_errors(tmp_path, rgb):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_head(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(HeadError, match=r"empty/config\.json is missing"):
        load_head(tmp_path / "empty")

    folder = save_head(_head(rgb), tmp_path / "head")
    weights = folder / WEIGHTS_FILE
    good = weights.read_bytes()
    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(HeadError, match=r"diffusion_pytorch_model\.safetensors are corrupt"):
        load_head(folder)
    weights.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(HeadError, match=r"are corrupt"):
        load_head(folder)
    weights.unlink()
    with pytest.raises(HeadError, match=r"diffusion_pytorch_model\.safetensors are missing"):
        load_head(folder)

    # weights of another architecture: strict loading, never a silently random layer
    other = save_head(new_head(rgb, [0, 1], hidden=8), tmp_path / "other")
    (folder / WEIGHTS_FILE).write_bytes((other / WEIGHTS_FILE).read_bytes())
    with pytest.raises(HeadError, match="do not match"):
        load_head(folder)

    (folder / CONFIG_FILE).write_text("{broken")
    with pytest.raises(HeadError, match=r"config\.json is not readable JSON"):
        load_head(folder)


def test_never_unpickles(tmp_path, rgb, monkeypatch):
    folder = save_head(_head(rgb), tmp_path / "head")

    def refuse(*a, **k):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", refuse)
    load_head(folder)


def test_save_replaces_a_head_but_never_another_folder(tmp_path, rgb):
    folder = save_head(_head(rgb), tmp_path / "head", extra={"training.json": {"steps": 3}})
    assert json.loads((folder / "training.json").read_text()) == {"steps": 3}
    save_head(_head(rgb, ids=(0, 1)), folder)
    assert load_head(folder).class_ids == [0, 1]
    assert not (folder / "training.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["head"]  # no temporary folder left

    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(HeadError, match="photos exists and is not a head folder"):
        save_head(_head(rgb), tmp_path / "photos")
    assert (tmp_path / "photos" / "holiday.jpg").exists()


def test_bad_class_lists_are_refused(rgb):
    with pytest.raises(ValueError, match="distinct integers in 0..255"):
        new_head(rgb, [1, 1])
    with pytest.raises(ValueError, match="distinct integers in 0..255"):
        new_head(rgb, [0, 300])
    with pytest.raises(ValueError, match="one class name per class id"):
        SegmentationHead(in_channels=[3], strides=[1], class_ids=[0, 1], class_names=["a"])
