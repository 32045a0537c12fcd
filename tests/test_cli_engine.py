"""``pathsegdiff train / predict / eval`` end to end on real H&E tiles, and their input errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_pathsegdiff.cli import main
from napari_pathsegdiff.core.images import read_mask
from napari_pathsegdiff.models.heads import WEIGHTS_FILE, load_head

SAMPLE_SLIDE = Path(__file__).resolve().parents[1] / "src" / "napari_pathsegdiff" / "sample_data" / "CMU-1-Small-Region.svs"
FAST = ["--steps", "12", "--device", "cpu"]


def _write_set(src: Path, dst: Path, names, *, step=1, size=(128, 160)) -> tuple[Path, Path]:
    """Crops (after subsampling by ``step``) of real images and masks, written to ``dst``."""
    (dst / "images").mkdir(parents=True)
    (dst / "masks").mkdir()
    h, w = size
    for n in names:
        image = np.asarray(Image.open(src / "images" / f"{n}.png"))[::step, ::step][:h, :w]
        mask = np.asarray(Image.open(src / "masks" / f"{n}.png"))[::step, ::step][:h, :w]
        Image.fromarray(np.ascontiguousarray(image)).save(dst / "images" / f"{n}.png")
        Image.fromarray(np.ascontiguousarray(mask)).save(dst / "masks" / f"{n}.png")
    return dst / "images", dst / "masks"


@pytest.fixture(scope="module")
def glas(shared_data, tmp_path_factory):
    return _write_set(shared_data / "glas" / "train", tmp_path_factory.mktemp("glas"),
                      ["train_1", "train_2", "train_3"])


@pytest.fixture(scope="module")
def classic_head(glas, tmp_path_factory):
    images, masks = glas
    out = tmp_path_factory.mktemp("heads") / "classic"
    assert main(["train", "--images", str(images), "--masks", str(masks), "--out", str(out),
                 "--features", "classic", "--head", "fcn", "--class-names", "background", "gland", *FAST]) == 0
    return out


def test_train_predict_eval_with_classic_features(glas, classic_head, tmp_path, capsys):
    images, masks = glas
    assert sorted(p.name for p in classic_head.iterdir()) == ["config.json", WEIGHTS_FILE, "training.json"]
    head = load_head(classic_head)
    assert head.class_ids == [0, 1] and head.class_names == ["background", "gland"]
    assert head.config.feature_config["kind"] == "classic" and head.config.mpp is None
    record = json.loads((classic_head / "training.json").read_text())
    assert record["images"] == ["train_1.png", "train_2.png", "train_3.png"]
    assert record["result"]["steps"] <= 12 and record["seed"] == 0

    pred_dir = tmp_path / "pred"
    assert main(["predict", "--head", str(classic_head), "--out", str(pred_dir), "--device", "cpu",
                 *map(str, sorted(images.iterdir()))]) == 0
    written = sorted(p.name for p in pred_dir.iterdir())
    assert written == ["train_1.png", "train_2.png", "train_3.png"]
    for name in written:
        with Image.open(pred_dir / name) as im:
            assert im.mode == "L" and im.size == (160, 128)
        labels = read_mask(pred_dir / name)
        assert set(np.unique(labels)) <= {0, 1}

    report = tmp_path / "scores.json"
    capsys.readouterr()
    assert main(["eval", "--pred", str(pred_dir), "--truth", str(masks), "--json", str(report)]) == 0
    table = capsys.readouterr().out
    assert "mean" in table and "pixel accuracy" in table
    scores = json.loads(report.read_text())
    assert {"mean_dice", "mean_iou", "per_class", "pixel_accuracy", "per_image"} <= set(scores)
    assert set(scores["per_class"]) == {"0", "1"} and set(scores["per_class"]["1"]) >= {"dice", "iou"}
    assert set(scores["per_image"]) == {"train_1", "train_2", "train_3"}
    assert scores["mean_dice"] == scores["per_class"]["1"]["dice"]  # background left out
    assert scores["mean_dice"] > 0.5  # glands are found on the images trained on

    with_bg = tmp_path / "bg.json"
    main(["eval", "--pred", str(pred_dir), "--truth", str(masks), "--json", str(with_bg), "--include-background"])
    bg = json.loads(with_bg.read_text())
    assert bg["mean_dice"] == pytest.approx((bg["per_class"]["0"]["dice"] + bg["per_class"]["1"]["dice"]) / 2)


def test_predict_a_region_of_a_slide(classic_head, tmp_path):
    out = tmp_path / "slide"
    assert main(["predict", "--head", str(classic_head), "--out", str(out), "--region", "100", "200", "64", "80",
                 "--level", "0", "--device", "cpu", str(SAMPLE_SLIDE)]) == 0
    labels = read_mask(out / "CMU-1-Small-Region.png")
    assert labels.shape == (64, 80) and set(np.unique(labels)) <= {0, 1}


def test_class_ids_keep_the_masks_id_space(shared_data, tmp_path):
    # Gleason masks use ids 1, 2, 4, 5 (no 0): predictions come back in the same ids
    images, masks = _write_set(shared_data / "gleason", tmp_path / "data", ["test100", "test102"],
                               step=8, size=(128, 128))
    truth_ids = set()
    for m in masks.iterdir():
        truth_ids |= set(np.unique(read_mask(m)).tolist())
    out = tmp_path / "head"
    assert main(["train", "--images", str(images), "--masks", str(masks), "--out", str(out),
                 "--features", "rgb", *FAST]) == 0
    assert load_head(out).class_ids == sorted(truth_ids)
    assert main(["predict", "--head", str(out), "--out", str(tmp_path / "pred"), "--device", "cpu",
                 str(images / "test100.png")]) == 0
    assert set(np.unique(read_mask(tmp_path / "pred" / "test100.png"))) <= truth_ids


def test_train_and_predict_with_a_diffusion_backbone_folder(glas, tmp_path):
    from napari_pathsegdiff.models.backbone import build_random_backbone

    backbone = tmp_path / "backbone"
    build_random_backbone("tiny", seed=0, name="tiny-test").save(backbone)
    images, masks = glas
    one = tmp_path / "one"  # a single image keeps the UNet passes few
    for sub, src in (("images", images), ("masks", masks)):
        (one / sub).mkdir(parents=True)
        (one / sub / "train_2.png").write_bytes((src / "train_2.png").read_bytes())
    out = tmp_path / "head"
    assert main(["train", "--images", str(one / "images"), "--masks", str(one / "masks"), "--out", str(out),
                 "--features", "diffusion", "--backbone", str(backbone), *FAST]) == 0
    head = load_head(out)
    assert head.config.feature_identity.startswith("diffusion:tiny-test@")
    assert head.config.mpp == 0.5  # the backbone's scale
    assert main(["predict", "--head", str(out), "--out", str(tmp_path / "pred"), "--device", "cpu",
                 str(images / "train_2.png")]) == 0
    labels = read_mask(tmp_path / "pred" / "train_2.png")
    assert labels.shape == (128, 160) and set(np.unique(labels)) <= {0, 1}

    # another backbone: the head refuses it and says which one it needs
    other = tmp_path / "other"
    build_random_backbone("tiny", seed=1, name="tiny-other").save(other)
    code = main(["predict", "--head", str(out), "--out", str(tmp_path / "x"), "--backbone", str(other),
                 "--device", "cpu", str(images / "train_2.png")])
    assert code == 2


def _err(capsys, argv) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    return capsys.readouterr().err


def test_bad_inputs_exit_2_with_a_clear_message(glas, classic_head, tmp_path, capsys):
    images, masks = glas
    gray = tmp_path / "gray"
    (gray / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(gray / "images" / "g.png")
    err = _err(capsys, ["train", "--images", str(gray / "images"), "--masks", str(masks),
                        "--out", str(tmp_path / "h"), "--features", "rgb"])
    assert "No mask in" in err  # g.png has no mask there
    (gray / "masks").mkdir()
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(gray / "masks" / "g.png")
    err = _err(capsys, ["train", "--images", str(gray / "images"), "--masks", str(gray / "masks"),
                        "--out", str(tmp_path / "h"), "--features", "rgb"])
    assert "pathsegdiff train: error:" in err and "g.png is a grayscale image" in err

    bad = tmp_path / "bad"
    (bad / "images").mkdir(parents=True)
    (bad / "masks").mkdir()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(bad / "images" / "a.png")
    Image.fromarray(np.zeros((20, 31), np.uint8)).save(bad / "masks" / "a.png")
    err = _err(capsys, ["train", "--images", str(bad / "images"), "--masks", str(bad / "masks"),
                        "--out", str(tmp_path / "h"), "--features", "rgb"])
    assert "images/a.png is 20x30" in err and "masks/a.png is 20x31" in err

    (tmp_path / "empty").mkdir()
    err = _err(capsys, ["train", "--images", str(tmp_path / "empty"), "--masks", str(masks),
                        "--out", str(tmp_path / "h")])
    assert "No image files (PNG, JPEG, TIFF) in" in err
    assert not (tmp_path / "h").exists()

    # fine-tuning on a mask with a class the head does not know
    odd = tmp_path / "odd"
    (odd / "masks").mkdir(parents=True)
    for p in masks.iterdir():
        m = read_mask(p)
        m[:4, :4] = 7
        Image.fromarray(m).save(odd / "masks" / p.name)
    err = _err(capsys, ["train", "--images", str(images), "--masks", str(odd / "masks"),
                        "--out", str(tmp_path / "h2"), "--init", str(classic_head)])
    assert "holds class id(s) [7] that the head does not know" in err

    err = _err(capsys, ["predict", "--head", str(tmp_path / "nohead"), "--out", str(tmp_path / "p"),
                        str(images / "train_1.png")])
    assert "nohead does not exist" in err
    err = _err(capsys, ["predict", "--head", str(classic_head), "--out", str(tmp_path / "p"), str(SAMPLE_SLIDE)])
    assert "give --region" in err
    err = _err(capsys, ["predict", "--head", str(classic_head), "--out", str(tmp_path / "p"),
                        "--region", "3000", "0", "100", "100", str(SAMPLE_SLIDE)])
    assert "extends outside level 0" in err

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for p in classic_head.iterdir():
        (corrupt / p.name).write_bytes(p.read_bytes())
    (corrupt / WEIGHTS_FILE).write_bytes(b"garbage")
    err = _err(capsys, ["predict", "--head", str(corrupt), "--out", str(tmp_path / "p"), str(images / "train_1.png")])
    assert "diffusion_pytorch_model.safetensors are corrupt" in err

    err = _err(capsys, ["eval", "--pred", str(images.parent / "masks"), "--truth", str(gray / "masks")])
    assert "do not match" in err


def test_threads_option_sets_torch_threads(glas, classic_head, tmp_path, capsys):
    import torch

    images, _ = glas
    before = torch.get_num_threads()
    try:
        assert main(["predict", "--head", str(classic_head), "--out", str(tmp_path / "p"), "--threads", "1",
                     str(images / "train_1.png")]) == 0
        assert torch.get_num_threads() == 1
        assert read_mask(tmp_path / "p" / "train_1.png").shape == (128, 160)
        capsys.readouterr()
        assert main(["predict", "--head", str(classic_head), "--out", str(tmp_path / "q"), "--threads", "0",
                     str(images / "train_1.png")]) == 2
        assert "--threads must be 1 or more, got 0" in capsys.readouterr().err
        assert not (tmp_path / "q").exists()
    finally:
        torch.set_num_threads(before)
