"""Interchangeable heads and features: the forest head, the registries, TTA and ``auto``."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_pathsegdiff.cli import build_parser, main
from napari_pathsegdiff.core.progress import drive
from napari_pathsegdiff.engine.training.auto_select import Candidate, auto_train
from napari_pathsegdiff.engine.inference.predict import predict_image
from napari_pathsegdiff.engine.training.train_head import TrainSample, train_head
from napari_pathsegdiff.models.features import (
    RGBFeatures,
    make_extractor,
    register_extractor,
    registered_kinds,
    unregister_extractor,
)
from napari_pathsegdiff.models.features_base import FeatureExtractor
from napari_pathsegdiff.models.heads import (
    ForestHead,
    HeadError,
    SegmentationHead,
    load_head,
    save_head,
)


def _scene(seed=0, size=96):
    """Two colours in a square: class 1 (bright square) on class 0."""
    rng = np.random.default_rng(seed)
    img = (rng.random((size, size, 3)) * 60).astype(np.uint8)
    mask = np.zeros((size, size), np.uint8)
    y, x = rng.integers(10, size // 2, 2)
    img[y : y + 40, x : x + 40] += 150
    mask[y : y + 40, x : x + 40] = 1
    return img, mask


class NoiseFeatures(FeatureExtractor):
    """Random channels that say nothing of the image (a test extractor)."""

    kind, tile_size, halo, multiple, mpp = "noise", 64, 8, 1, None

    def __init__(self, channels: int = 3):
        self.n = int(channels)

    @property
    def identity(self):
        return f"noise:{self.n}"

    @property
    def channels(self):
        return [self.n]

    @property
    def strides(self):
        return [1]

    def extract(self, tiles):
        tiles = self.check_tiles(tiles)
        rng = np.random.default_rng(int(tiles.sum()) % 2**32)
        b, h, w, _ = tiles.shape
        return [rng.random((b, self.n, h, w)).astype(np.float16)]

    def config(self):
        return {"kind": "noise", "channels": self.n}


@pytest.fixture
def noise_kind():
    register_extractor("noise", lambda settings, device: NoiseFeatures(**settings), summary="test noise")
    yield "noise"
    unregister_extractor("noise")


@pytest.fixture(scope="module")
def forest_and_fcn(tmp_path_factory):
    img, mask = _scene()
    ex = RGBFeatures(tile_size=64, halo=8)
    forest = drive(train_head([(img, mask)], extractor=ex, head_kind="forest", n_estimators=8), show=False).head
    fcn = drive(train_head([(img, mask)], extractor=ex, steps=20), show=False).head
    root = tmp_path_factory.mktemp("heads")
    return img, mask, ex, save_head(forest, root / "forest"), save_head(fcn, root / "fcn")


def test_forest_head_saves_loads_and_predicts_the_same(forest_and_fcn):
    img, mask, ex, forest_dir, _ = forest_and_fcn
    head = load_head(forest_dir, extractor=ex)
    assert isinstance(head, ForestHead) and head.head_kind == "forest"
    assert sorted(p.name for p in forest_dir.iterdir()) == ["config.json", "forest.safetensors"]
    again = load_head(forest_dir)
    a = predict_image(img, head=head, extractor=ex, return_probabilities=True)
    b = predict_image(img, head=again, extractor=ex, return_probabilities=True)
    assert a.labels.shape == mask.shape and a.probabilities.shape == (2, *mask.shape)
    np.testing.assert_array_equal(a.probabilities, b.probabilities)
    assert (a.labels == mask).mean() > 0.98


def test_forest_folder_holds_no_pickle_and_loads_without_unpickling(forest_and_fcn, monkeypatch):
    _, _, ex, forest_dir, _ = forest_and_fcn
    config = json.loads((forest_dir / "config.json").read_text())
    assert config["_class_name"] == "ForestHead"
    raw = (forest_dir / "forest.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} <= {"F32", "F64", "I32", "I64", "U8"}
    for path in forest_dir.iterdir():  # no pickle stream (PROTO opcode + protocol 2..5 + frame) anywhere
        data = path.read_bytes()
        assert not any(bytes([0x80, proto]) in data[:2] for proto in range(2, 6))
        assert not any(bytes([0x80, proto, 0x95]) in data for proto in (4, 5))

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling during load")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    head = load_head(forest_dir, extractor=ex)
    assert len(head.trees_) == 8


def test_each_head_refuses_the_other_kind_and_other_features(forest_and_fcn):
    _, _, ex, forest_dir, fcn_dir = forest_and_fcn
    with pytest.raises(HeadError, match=r"not the config of a head \(ForestHead\)"):
        ForestHead.read_folder(fcn_dir)
    with pytest.raises(HeadError, match="not the config of a head"):
        SegmentationHead.read_folder(forest_dir)
    other = make_extractor("classic")
    for folder in (forest_dir, fcn_dir):
        with pytest.raises(HeadError, match="trained on features 'rgb:v1'.*--features rgb"):
            load_head(folder, extractor=other)


def test_corrupt_forest_arrays_are_refused_with_the_file_named(forest_and_fcn, tmp_path):
    from safetensors.numpy import load_file, save_file

    _, _, _, forest_dir, _ = forest_and_fcn
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((forest_dir / "config.json").read_text())
    arrays = load_file(str(forest_dir / "forest.safetensors"))
    arrays["trees.left"] = arrays["trees.left"].copy()
    arrays["trees.left"][0] = 10**6  # a child outside the tree
    save_file(arrays, str(bad / "forest.safetensors"))
    with pytest.raises(HeadError, match=r"forest.safetensors do not match .*children outside the tree"):
        load_head(bad)


def test_tta_of_an_equivariant_head_changes_nothing(forest_and_fcn):
    img, _, ex, forest_dir, _ = forest_and_fcn
    head = load_head(forest_dir)  # per-pixel RGB trees: the same whatever the orientation
    a = predict_image(img, head=head, extractor=ex, return_probabilities=True)
    b = predict_image(img, head=head, extractor=ex, return_probabilities=True, tta=8)
    np.testing.assert_allclose(b.probabilities.astype(np.float32), a.probabilities.astype(np.float32), atol=1e-3)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_tta_output_is_symmetric_for_a_dihedrally_symmetric_input(forest_and_fcn):
    _, _, ex, _, fcn_dir = forest_and_fcn
    head = load_head(fcn_dir)  # an FCN is not equivariant: TTA makes its output symmetric
    rng = np.random.default_rng(3)
    q = (rng.random((24, 24, 3)) * 255).astype(np.uint8)
    q = np.maximum(q, q.transpose(1, 0, 2))  # symmetric about the diagonal
    top = np.concatenate([q, q[:, ::-1]], axis=1)
    img = np.ascontiguousarray(np.concatenate([top, top[::-1]], axis=0))  # 48x48, all 8 symmetries
    sym = RGBFeatures(tile_size=48, halo=8)  # one tile, centred on the image
    p = predict_image(img, head=head, extractor=sym, return_probabilities=True, tta=8).probabilities.astype(np.float32)
    for turns in range(4):
        for flip in (False, True):
            t = np.rot90(p[..., ::-1] if flip else p, turns, axes=(1, 2))
            np.testing.assert_allclose(t, p, atol=2e-3)


def test_registry_drives_the_cli_features_and_a_zero_channel_forest_is_refused(noise_kind, tmp_path, capsys):
    assert "noise" in registered_kinds()
    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert "noise" in " ".join(help_text.split())
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir(), masks.mkdir()
    img, mask = _scene()
    Image.fromarray(img).save(images / "a.png")
    Image.fromarray(mask).save(masks / "a.png")
    register_extractor("empty", lambda settings, device: NoiseFeatures(channels=0), summary="no channels")
    try:
        code = main(["train", "--images", str(images), "--masks", str(masks), "--out", str(tmp_path / "h"),
                     "--features", "empty", "--head", "forest"])
    finally:
        unregister_extractor("empty")
    assert code == 2
    assert "A forest head needs features with at least one channel" in capsys.readouterr().err
    assert not (tmp_path / "h").exists()


def test_auto_picks_the_informative_features_and_records_every_candidate(noise_kind):
    samples = [TrainSample(*_scene(seed), name=f"img{seed}") for seed in range(3)]
    cands = [Candidate("noise", "forest", (("n_estimators", 8),)), Candidate("rgb", "forest", (("n_estimators", 8),))]
    out = drive(auto_train(samples, make_extractor=lambda f: make_extractor(f), candidates=cands, budget_s=600,
                           threads=1), show=False)
    by_name = {c["name"]: c for c in out.candidates}
    # by hand: RGB separates the bright square exactly, noise cannot beat a coin much
    assert by_name["rgb / forest n_estimators=8"]["cv_dice"] == pytest.approx(1.0, abs=0.02)
    assert by_name["noise / forest n_estimators=8"]["cv_dice"] < 0.8
    assert out.chosen.features == "rgb" and out.grouping == "image" and out.folds == 3
    assert out.note.startswith("auto chose rgb / forest")
    assert out.result.head.head_kind == "forest"


def test_auto_folds_follow_the_given_groups_such_as_slides(noise_kind):
    # six regions from two "slides": folds by slide (2), never by region
    samples = [TrainSample(*_scene(seed), name=f"img{seed}", group=seed % 2) for seed in range(6)]
    cands = [Candidate("rgb", "forest", (("n_estimators", 8),))]
    out = drive(auto_train(samples, make_extractor=lambda f: make_extractor(f), candidates=cands, budget_s=600,
                           threads=1), show=False)
    assert out.grouping == "slide" and out.folds == 2
    assert "2 folds by slide" in out.note


def test_auto_with_one_class_is_an_error_and_a_tiny_budget_falls_back(noise_kind):
    img, mask = _scene()
    with pytest.raises(ValueError, match=r"Only class \[1\] has labelled pixels"):
        drive(auto_train([TrainSample(img, np.ones_like(mask))], make_extractor=make_extractor,
                         candidates=[Candidate("rgb", "forest")]), show=False)
    with pytest.raises(ValueError, match="budget must be a positive"):
        drive(auto_train([TrainSample(img, mask)], make_extractor=make_extractor,
                         candidates=[Candidate("rgb", "forest")], budget_s=0), show=False)
    samples = [TrainSample(*_scene(s), name=str(s)) for s in range(2)]
    out = drive(auto_train(samples, make_extractor=make_extractor, budget_s=1e-9,
                           candidates=[Candidate("rgb", "forest", (("n_estimators", 4),)), Candidate("noise", "forest")]),
                show=False)
    assert out.chosen.features == "rgb"
    assert "fell back to rgb / forest" in out.note and "budget" in out.note
    assert [c["status"] for c in out.candidates] == ["skipped: budget", "skipped: budget"]


def scene_files(folder, n=2):
    """``n`` scenes as PNG images and masks in ``folder``/images and ``folder``/masks."""
    images, masks = folder / "images", folder / "masks"
    images.mkdir(), masks.mkdir()
    for s in range(n):
        img, mask = _scene(s)
        Image.fromarray(img).save(images / f"{s}.png")
        Image.fromarray(mask).save(masks / f"{s}.png")
    return images, masks


def test_cli_train_forest_then_predict_records_the_head(tmp_path, capsys):
    images, masks = scene_files(tmp_path)
    out = tmp_path / "head"
    assert main(["train", "--images", str(images), "--masks", str(masks), "--out", str(out),
                 "--features", "rgb", "--head", "forest"]) == 0
    record = json.loads((out / "training.json").read_text())
    assert record["head"] == "forest" and record["auto"] is None
    assert main(["predict", str(images / "0.png"), "--head", str(out), "--out", str(tmp_path / "pred"),
                 "--tta", "2"]) == 0
    assert "mean of 2 flips/rotations" in capsys.readouterr().out
    pred = np.asarray(Image.open(tmp_path / "pred" / "0.png"))
    assert pred.shape == (96, 96) and set(np.unique(pred)) <= {0, 1}
    assert (pred == _scene(0)[1]).mean() > 0.98
    # a forest head averages the 8 orientations by default (its trees never saw rotated tiles)
    assert main(["predict", str(images / "0.png"), "--head", str(out), "--out", str(tmp_path / "pred8")]) == 0
    assert "mean of 8 flips/rotations" in capsys.readouterr().out
    # auto over the heads of rgb features: the record holds both candidates' scores
    out2 = tmp_path / "auto"
    assert main(["train", "--images", str(images), "--masks", str(masks), "--out", str(out2),
                 "--features", "rgb", "--steps", "20"]) == 0
    auto = json.loads((out2 / "training.json").read_text())["auto"]
    assert [c["head"] for c in auto["candidates"]] == ["fcn", "forest"]
    assert all(c["cv_dice"] is not None for c in auto["candidates"])
    assert "auto chose rgb /" in capsys.readouterr().out


def test_classic_features_equal_scikit_image_to_a_float16_step():
    """The torch filter bank behind ClassicFeatures gives scikit-image's maps (so heads keep working)."""
    from skimage.feature import multiscale_basic_features

    from napari_pathsegdiff.models.features import ClassicFeatures

    rng = np.random.default_rng(0)
    tiles = (rng.random((2, 80, 72, 3)) * 255).astype(np.uint8)
    got = ClassicFeatures(num_sigma=3, sigma_max=8).extract(tiles)[0]
    want = np.stack([np.moveaxis(multiscale_basic_features(t.astype(np.float32) / 255, channel_axis=-1,
                                                           sigma_min=1, sigma_max=8, num_sigma=3), -1, 0)
                     for t in tiles]).astype(np.float16)
    assert got.shape == want.shape == (2, 36, 80, 72) and got.dtype == np.float16
    step = np.spacing(np.maximum(np.abs(got), np.abs(want))).astype(np.float32)  # one float16 step
    diff = np.abs(got.astype(np.float32) - want.astype(np.float32))
    assert (diff <= np.maximum(step, 1e-6)).all() and (diff == 0).mean() > 0.9  # 1e-6: near zero


def test_the_command_line_parser_imports_no_torch():
    """Listing the feature and head kinds (help, choices) stays light: a worker or --help pays no torch."""
    import subprocess
    import sys

    code = ("import sys; from napari_pathsegdiff.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'diffusers', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
