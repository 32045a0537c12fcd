"""Style generator: sampling, style aggregation, folders, training with exact resume, layouts,
`pathsegdiff generator train` / `generate`, and `train --synthetic` (tiny models, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from napari_pathsegdiff.cli import main
from napari_pathsegdiff.core.images import read_mask
from napari_pathsegdiff.core.progress import drive
from napari_pathsegdiff.engine.runs.generator_training import make_settings, train_generator
from napari_pathsegdiff.engine.runs.layouts import LayoutSampler, layout_tiles
from napari_pathsegdiff.engine.training.fit_fcn import weighted_cross_entropy
from napari_pathsegdiff.models.backbone import build_random_backbone, load_backbone
from napari_pathsegdiff.models.generator import (
    GeneratorError,
    build_generator,
    load_generator,
    save_generator,
)

TILE = 32  # training tiles of the tests (the tiny backbone's autoencoder has factor 4)
CLASSES = [0, 1, 2]


def _he(rng, shape, base=(150, 60, 140)) -> np.ndarray:
    return (rng.random((*shape, 3)) * 80 + np.array(base)).astype(np.uint8)


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Three labelled 48x48 H&E-coloured images with 3-class masks, three unlabelled style
    images of another stain, and a tiny random backbone folder."""
    root = tmp_path_factory.mktemp("gen")
    rng = np.random.default_rng(0)
    for i in range(3):
        mask = np.zeros((48, 48), np.uint8)
        mask[10 + i : 30, 5:40] = 1
        mask[35:45, 20 + i : 30] = 2
        _save(root / "images" / f"a{i}.png", _he(rng, (48, 48)))
        _save(root / "masks" / f"a{i}.png", mask)
        _save(root / "style" / f"s{i}.png", _he(rng, (64, 64), base=(120, 40, 160)))
    build_random_backbone("tiny").save(root / "backbone")
    return root


@pytest.fixture(scope="module")
def generator_folder(data) -> Path:
    out = data / "run"
    assert main(["generator", "train", "--images", str(data / "images"), "--masks", str(data / "masks"),
                 "--style", str(data / "style"), "--out", str(out), "--init-from", str(data / "backbone"),
                 "--config", "tiny", "--tile-size", str(TILE), "--class-names", "bg", "gland", "stroma",
                 "--device", "cpu"]) == 0
    return out / "generator"


@pytest.fixture(scope="module")
def backbone():
    return build_random_backbone("tiny")


def _tiny(backbone, aggregation="mean", seed=0):
    return build_generator(backbone, class_ids=CLASSES, config="tiny", aggregation=aggregation, seed=seed).eval()


def _styles(b, k, size=16, seed=0):
    return torch.rand((b, k, 3, size, size), generator=torch.Generator().manual_seed(seed)) * 2 - 1


# --- model --------------------------------------------------------------------------------


def test_sampling_shapes_and_determinism_with_a_seed(backbone):
    gen = _tiny(backbone)
    layouts = torch.randint(0, 3, (2, TILE, 48), generator=torch.Generator().manual_seed(1))
    styles = _styles(2, 3)
    a = gen.sample(layouts, styles, steps=3, guidance=2.0, seed=7)
    assert a.shape == (2, TILE, 48, 3) and a.dtype == np.uint8
    assert np.array_equal(a, gen.sample(layouts, styles, steps=3, guidance=2.0, seed=7))
    assert not np.array_equal(a, gen.sample(layouts, styles, steps=3, guidance=2.0, seed=8))
    # a sample's noise depends on its own seed only, not on the batch it is in (the pixels
    # may differ by a rounding step: convolutions sum in another order for another batch size)
    alone = gen.sample(layouts[1:], styles[1:], steps=3, guidance=2.0, seed=[8])
    assert np.abs(alone[0].astype(int) - a[1]).max() <= 1
    # without style (null context) it still samples
    assert gen.sample(layouts, None, steps=2, seed=0).shape == (2, TILE, 48, 3)
    with pytest.raises(GeneratorError, match="multiples of 8"):
        gen.sample(torch.zeros((1, 30, 32), dtype=torch.long), None, steps=2)


@pytest.mark.parametrize("aggregation", ["mean", "attention"])
def test_aggregation_accepts_one_to_k_styles_in_any_order(backbone, aggregation):
    gen = _tiny(backbone, aggregation)
    styles = _styles(2, 5)
    shapes = {tuple(gen.style_context(styles[:, :k]).shape) for k in range(1, 6)}
    tokens = 1 if aggregation == "mean" else 4
    assert shapes == {(2, tokens, 32)}
    with torch.no_grad():
        ctx = gen.style_context(styles)
        for order in ([4, 3, 2, 1, 0], [2, 0, 4, 1, 3]):
            assert torch.allclose(gen.style_context(styles[:, order]), ctx, atol=1e-5)
        # different style tiles give a different context
        assert not torch.allclose(gen.style_context(_styles(2, 5, seed=1)), ctx, atol=1e-3)
    with pytest.raises(GeneratorError, match="K >= 1"):
        gen.style_context(styles[:, :0])


def test_layout_condition_is_class_shares_at_latent_resolution(backbone):
    gen = _tiny(backbone)
    layout = torch.zeros((1, 8, 8), dtype=torch.long)
    layout[0, :4, :2] = 2  # the top-left 4x4 block (one latent pixel) is half class 2
    cond = gen.layout_condition(layout)
    assert cond.shape == (1, 3, 2, 2)
    assert cond[0, :, 0, 0].tolist() == [0.5, 0.0, 0.5]
    assert cond[0, :, 1, 1].tolist() == [1.0, 0.0, 0.0]
    assert gen.layout_condition(layout, known=torch.tensor([False])).abs().sum() == 0


def test_encode_layout_refuses_unknown_classes_and_bad_sizes(backbone):
    gen = _tiny(backbone)
    ok = np.array([[0, 2], [1, 0]], np.uint8).repeat(16, 0).repeat(16, 1)
    assert np.array_equal(gen.encode_layout(ok), ok.astype(np.int64))
    bad = ok.copy()
    bad[0, 0] = 7
    with pytest.raises(GeneratorError, match=r"my\.png holds class id\(s\) \[7\].*0 \(background\), 1 \(class 1\)"):
        gen.encode_layout(bad, name="my.png")
    with pytest.raises(GeneratorError, match="multiples of 8"):
        gen.encode_layout(ok[:30], name="my.png")


def test_generator_folder_round_trips(backbone, tmp_path):
    gen = _tiny(backbone, "attention", seed=3)
    folder = save_generator(gen, tmp_path / "g")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    back = load_generator(folder)
    assert back.class_ids == CLASSES and back.config.aggregation == "attention"
    assert back.config.backbone_identity == gen.config.backbone_identity != ""
    assert back.config.tile_size == 64 and back.config.mpp == 0.5
    layouts = torch.randint(0, 3, (2, TILE, TILE), generator=torch.Generator().manual_seed(0))
    styles = _styles(2, 2)
    assert np.array_equal(gen.sample(layouts, styles, steps=2, seed=1), back.sample(layouts, styles, steps=2, seed=1))
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(GeneratorError, match="corrupt or not a safetensors file"):
        load_generator(folder)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_generator(tmp_path / "missing")


def test_style_encoder_starts_from_the_guide(backbone):
    gen = build_generator(backbone, class_ids=CLASSES, config="tiny")
    for name, tensor in backbone.guide.state_dict().items():
        assert torch.equal(gen.style_encoder.state_dict()[name], tensor)
    for name, tensor in backbone.vae.state_dict().items():
        assert torch.equal(gen.vae.state_dict()[name], tensor)
    assert not any(n.startswith("vae.") for n, p in gen.named_parameters() if p.requires_grad)


# --- training -------------------------------------------------------------------------------


def _train(data, out, steps, **kw):
    settings = make_settings("tiny", steps=steps, tile_size=TILE, **kw)
    backbone = load_backbone(data / "backbone")
    return drive(train_generator(data / "images", data / "masks", out, backbone=backbone, style=[data / "style"],
                                 settings=settings, resume=True, device="cpu"), show=False)


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "losses.jsonl").read_text().splitlines()]


def test_training_resumes_exactly(data, tmp_path):
    _train(data, tmp_path / "full", 4, checkpoint_every=2)
    _train(data, tmp_path / "split", 2, checkpoint_every=2)
    assert len(_losses(tmp_path / "split")) == 2
    _train(data, tmp_path / "split", 4, checkpoint_every=2)
    assert _losses(tmp_path / "split") == _losses(tmp_path / "full")
    assert len(set(_losses(tmp_path / "full"))) == 4
    for sub in ("model", "ema"):
        a = load_file(str(tmp_path / "full" / "checkpoints" / sub / "diffusion_pytorch_model.safetensors"))
        b = load_file(str(tmp_path / "split" / "checkpoints" / sub / "diffusion_pytorch_model.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    card = (tmp_path / "full" / "generator" / "MODEL_CARD.md").read_text()
    assert "Steps 4 of 4" in card and "a0.png" in card and "s1.png" in card


def test_training_refuses_a_changed_run_and_a_missing_style_folder(data, tmp_path):
    _train(data, tmp_path / "run", 1)
    with pytest.raises(ValueError, match="cannot resume: settings differ"):
        _train(data, tmp_path / "run", 2, style_mode="other")
    with pytest.raises(FileNotFoundError, match="--style .*nowhere: no such file or folder"):
        drive(train_generator(data / "images", data / "masks", tmp_path / "x", backbone=load_backbone(data / "backbone"),
                              style=[tmp_path / "nowhere"], settings=make_settings("tiny", tile_size=TILE)), show=False)


@pytest.mark.parametrize("mode", ["same", "augment", "other"])
def test_every_style_mode_trains(data, tmp_path, mode):
    _train(data, tmp_path / mode, 1, style_mode=mode, aggregation="attention")
    record = json.loads((tmp_path / mode / "run.json").read_text())
    assert record["settings"]["style_mode"] == mode
    assert np.isfinite(_losses(tmp_path / mode)).all()


# --- layouts --------------------------------------------------------------------------------


def test_layout_sampler_places_real_shapes_deterministically():
    masks = []
    for i in range(2):
        m = np.zeros((64, 64), np.uint8)
        m[5:15, 5:25] = 1
        m[40:50, 30 + i : 40] = 2
        masks.append(m)
    sampler = LayoutSampler.from_masks(masks, tile_size=32, seed=0)
    assert sampler.class_ids == [0, 1, 2]
    assert {s.shape for s in sampler.shapes[1]} == {(10, 20)}
    a = [sampler.sample(np.random.default_rng(5)) for _ in range(1)][0]
    b = sampler.sample(np.random.default_rng(5))
    assert a.shape == (32, 32) and a.dtype == np.uint8 and np.array_equal(a, b)
    many = np.stack([sampler.sample(np.random.default_rng(i)) for i in range(20)])
    assert set(np.unique(many)) <= {0, 1, 2} and (many == 1).any() and (many == 2).any()
    with pytest.raises(ValueError, match="at least 128x128"):
        LayoutSampler.from_masks(masks, tile_size=128)


def test_layout_tiles_crop_large_masks_and_refuse_odd_small_ones():
    big = np.arange(64 * 80, dtype=np.int64).reshape(64, 80) % 3
    tiles = layout_tiles([(Path("big.png"), big.astype(np.uint8))], n=3, tile_size=32, multiple=8, seed=0)
    assert [t.shape for _, t in tiles] == [(32, 32)] * 3
    for desc, t in tiles:
        y, x = (int(v.split(":")[0]) for v in desc[len("big.png["):-1].split(","))
        assert np.array_equal(t, big[y : y + 32, x : x + 32])
    with pytest.raises(ValueError, match=r"small\.png is 20x20 px"):
        layout_tiles([(Path("small.png"), np.zeros((20, 20), np.uint8))], n=1, tile_size=32, multiple=8)


# --- command line -----------------------------------------------------------------------------


def test_generate_writes_masks_equal_to_the_layouts(data, generator_folder, tmp_path):
    layouts = tmp_path / "layouts"
    rng = np.random.default_rng(0)
    expected = {}
    for i in range(2):
        lay = rng.integers(0, 3, size=(TILE, TILE)).astype(np.uint8)
        _save(layouts / f"l{i}.png", lay)
        expected[i] = lay
    out = tmp_path / "synth"
    assert main(["generate", "--generator", str(generator_folder), "--layouts", str(layouts), "--style",
                 str(data / "style"), "--n", "3", "--out", str(out), "--steps", "2", "--seed", "4", "--device", "cpu"]) == 0
    names = ["00000.png", "00001.png", "00002.png"]
    assert sorted(p.name for p in (out / "images").iterdir()) == names
    for i, name in enumerate(names):
        assert np.array_equal(read_mask(out / "masks" / name), expected[i % 2])
        assert np.asarray(Image.open(out / "images" / name)).shape == (TILE, TILE, 3)
    record = json.loads((out / "generation.json").read_text())
    assert record["class_ids"] == CLASSES and record["class_names"] == ["bg", "gland", "stroma"]
    assert record["generator"].startswith("generator@") and record["steps"] == 2
    assert [t["layout"] for t in record["tiles"]] == ["l0.png", "l1.png", "l0.png"]
    assert all(len(t["style"]) == 3 and t["style"][0]["source"].startswith("s") for t in record["tiles"])
    # the same seed gives the same tiles
    again = tmp_path / "again"
    assert main(["generate", "--generator", str(generator_folder), "--layouts", str(layouts), "--style",
                 str(data / "style"), "--n", "1", "--out", str(again), "--steps", "2", "--seed", "4", "--device", "cpu"]) == 0
    assert (again / "images" / "00000.png").read_bytes() == (out / "images" / "00000.png").read_bytes()
    # sampled layouts come from the shapes of real masks
    sampled = tmp_path / "sampled"
    assert main(["generate", "--generator", str(generator_folder), "--layouts", "sample", "--shapes",
                 str(data / "masks"), "--style", str(data / "style"), "--n", "2", "--out", str(sampled),
                 "--steps", "1", "--device", "cpu"]) == 0
    assert {v for p in (sampled / "masks").iterdir() for v in np.unique(read_mask(p))} <= set(CLASSES)


def _err(capsys, argv) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    return capsys.readouterr().err


def test_generate_refuses_unknown_classes_and_empty_style_folders(data, generator_folder, tmp_path, capsys):
    layouts = tmp_path / "layouts"
    bad = np.zeros((TILE, TILE), np.uint8)
    bad[:4, :4] = 9
    _save(layouts / "bad.png", bad)
    base = ["generate", "--generator", str(generator_folder), "--n", "1", "--out", str(tmp_path / "o"), "--device", "cpu"]
    err = _err(capsys, [*base, "--layouts", str(layouts), "--style", str(data / "style")])
    assert "bad.png holds class id(s) [9] that the generator does not know" in err
    assert "0 (bg), 1 (gland), 2 (stroma)" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images")
    err = _err(capsys, [*base, "--layouts", str(data / "masks"), "--style", str(empty)])
    assert f"--style {empty}: this folder holds no images" in err
    err = _err(capsys, [*base, "--layouts", "sample", "--style", str(data / "style")])
    assert "--layouts sample needs --shapes DIR" in err
    assert not (tmp_path / "o" / "images").exists() or not any((tmp_path / "o" / "images").iterdir())


def test_train_with_synthetic_pairs_adds_weighted_windows(data, generator_folder, tmp_path):
    synth = tmp_path / "synth"
    assert main(["generate", "--generator", str(generator_folder), "--layouts", str(data / "masks"), "--style",
                 str(data / "style"), "--n", "4", "--out", str(synth), "--steps", "1", "--device", "cpu"]) == 0
    common = ["train", "--images", str(data / "images"), "--masks", str(data / "masks"), "--features", "rgb", "--head", "fcn",
              "--steps", "3", "--device", "cpu"]
    assert main([*common, "--out", str(tmp_path / "real")]) == 0
    assert main([*common, "--out", str(tmp_path / "mixed"), "--synthetic", str(synth), "--synthetic-weight", "0.25"]) == 0
    real = json.loads((tmp_path / "real" / "training.json").read_text())
    mixed = json.loads((tmp_path / "mixed" / "training.json").read_text())
    assert mixed["synthetic"] == {"folder": str(synth), "pairs": 4, "weight": 0.25}
    assert real["synthetic"] is None and real["result"]["windows"]["weighted"] == 0
    r, m = real["result"], mixed["result"]
    extra = m["windows"]["weighted"]
    assert extra > 0 and m["windows"]["train"] == r["windows"]["train"] + extra
    assert m["windows"]["val"] == r["windows"]["val"]  # generated windows never validate
    synth_pixels = 4 * TILE * TILE
    assert sum(m["class_pixels"].values()) == sum(r["class_pixels"].values()) + synth_pixels


def test_weighted_cross_entropy_applies_the_window_weights():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn((2, 3, 4, 4), generator=g)
    labels = torch.randint(0, 3, (2, 4, 4), generator=g)
    labels[0, 0, 0] = -1
    cw = torch.tensor([0.5, 1.0, 2.0])
    plain = F.cross_entropy(logits, labels, weight=cw, ignore_index=-1)
    assert torch.allclose(weighted_cross_entropy(logits, labels, cw, torch.ones(2)), plain)
    first = F.cross_entropy(logits[:1], labels[:1], weight=cw, ignore_index=-1)
    assert torch.allclose(weighted_cross_entropy(logits, labels, cw, torch.tensor([1.0, 0.0])), first)
    half = weighted_cross_entropy(logits, labels, cw, torch.tensor([1.0, 0.5]))
    assert not torch.allclose(half, plain) and not torch.allclose(half, first)
