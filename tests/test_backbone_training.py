"""Backbone training: data, stages, exact resume, export, command line (TINY config)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_pathsegdiff.cli import main
from napari_pathsegdiff.core.progress import drive
from napari_pathsegdiff.engine.runs import augment
from napari_pathsegdiff.engine.runs.backbone_data import (
    batch_indices,
    build_pool,
    find_sources,
    parse_mpp_map,
)
from napari_pathsegdiff.engine.runs.backbone_training import export_backbone, make_settings, train_backbone


@pytest.fixture(scope="module")
def he_images(tmp_path_factory) -> Path:
    """Three 96x96 PNGs: an H&E-coloured square on white, and one file that is not an image."""
    from skimage import io

    folder = tmp_path_factory.mktemp("he")
    rng = np.random.default_rng(0)
    for i in range(3):
        img = np.full((96, 96, 3), 240, np.uint8)
        img[8:88, 8:88] = (rng.random((80, 80, 3)) * 80 + np.array([150, 60, 140])).astype(np.uint8)
        io.imsave(folder / f"im{i}.png", img, check_contrast=False)
    (folder / "notes.txt").write_text("not an image")
    return folder


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "losses.jsonl").read_text().splitlines()]


def _bytes(path: Path) -> bytes:
    return path.read_bytes()


# --- data ---------------------------------------------------------------------------------


def test_find_sources_mpp_and_exclude(he_images):
    sources = find_sources([he_images], exclude=["im1.png"], mpp_map=parse_mpp_map(["*im2*=0.25"]))
    assert [s.path.name for s in sources] == ["im0.png", "im2.png"]
    assert [(s.kind, s.mpp, s.mpp_origin) for s in sources] == [("image", 0.5, "assumed"), ("image", 0.25, "mpp-map")]


def test_find_sources_refuses_folder_without_images(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"no readable H&E image or slide found.*broken\.png"):
        find_sources([tmp_path])
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        find_sources([tmp_path / "missing"])


def test_parse_mpp_map_errors():
    assert parse_mpp_map(["*a*=0.25", "b=1"]) == [("*a*", 0.25), ("b", 1.0)]
    with pytest.raises(ValueError, match="PATTERN=MPP"):
        parse_mpp_map(["0.25"])
    with pytest.raises(ValueError, match="PATTERN=MPP"):
        parse_mpp_map(["*a*=-1"])


def test_pool_is_tissue_at_the_training_scale_and_deterministic(he_images, tmp_path):
    sources = find_sources([he_images], mpp_map=[("*im0*", 0.25)])
    pool = drive(build_pool(sources, n_tiles=12, tile_size=32, seed=3, cache_dir=tmp_path), show=False)
    assert pool.tiles.shape == (12, 32, 32, 3) and pool.tiles.dtype == np.uint8
    # tiles are mostly stain, not white background
    assert (pool.tiles.mean(axis=-1) < 220).mean() > 0.5
    # im0 at 0.25 µm/px is a 48x48 image at 0.5 µm/px: its positions stay inside that
    im0 = [i for i, s in enumerate(pool.sources) if s["path"].endswith("im0.png")][0]
    assert (pool.positions[pool.source_index == im0] <= 48 - 32).all()
    assert sum(s["tiles"] for s in pool.sources) == 12
    again = drive(build_pool(sources, n_tiles=12, tile_size=32, seed=3), show=False)
    assert np.array_equal(again.tiles, pool.tiles)
    cached = drive(build_pool(sources, n_tiles=12, tile_size=32, seed=3, cache_dir=tmp_path), show=False)
    assert cached.path == tmp_path / f"pool-{pool.key}.npz" and np.array_equal(cached.tiles, pool.tiles)


def test_batches_depend_only_on_seed_stage_step():
    a = batch_indices(100, 8, seed=1, stage="unet", step=5)
    assert np.array_equal(a, batch_indices(100, 8, seed=1, stage="unet", step=5))
    assert len(set(a.tolist())) == 8
    assert not np.array_equal(a, batch_indices(100, 8, seed=1, stage="unet", step=6))
    assert not np.array_equal(a, batch_indices(100, 8, seed=1, stage="vae", step=5))


# --- augmentations ------------------------------------------------------------------------


def test_hed_jitter_without_change_is_identity():
    x = torch.rand(2, 3, 8, 8) * 0.8 + 0.1
    y = augment.hed_jitter(x, torch.Generator().manual_seed(0), scale=0.0, shift=0.0)
    assert torch.allclose(x, y, atol=1e-5)
    z = augment.hed_jitter(x, torch.Generator().manual_seed(0))
    assert z.shape == x.shape and not torch.allclose(x, z) and 0 <= z.min() and z.max() <= 1


def test_flip_rot90_moves_grid_tokens_with_the_image():
    # a 2x2 image whose pixel values equal the ids of a 2x2 token grid
    img = torch.tensor([[0.0, 1.0], [2.0, 3.0]]).view(1, 1, 2, 2).repeat(16, 1, 1, 1)
    tokens = torch.cat([torch.full((16, 1, 1), -1.0), torch.tensor([0.0, 1, 2, 3]).view(1, 4, 1).repeat(16, 1, 1)], 1)
    out, tok = augment.flip_rot90(img, torch.Generator().manual_seed(0), tokens=tokens)
    assert torch.equal(tok[:, 1:, 0], out.flatten(1))
    assert (tok[:, 0, 0] == -1).all()
    assert len({tuple(o.flatten().tolist()) for o in out}) > 4  # several of the 8 transforms drawn


def test_ssl_view_shape_and_range():
    v = augment.ssl_view(torch.rand(3, 3, 32, 32), torch.Generator().manual_seed(1), crop=16)
    assert v.shape == (3, 3, 16, 16) and v.min() >= 0 and v.max() <= 1


# --- training -----------------------------------------------------------------------------


def _train(data, out, **kw):
    stop = kw.pop("should_stop", None)
    settings = make_settings("tiny", **kw)
    return drive(
        train_backbone([data], out, config="tiny", settings=settings, device="cpu", resume=True,
                       export=False, should_stop=stop),
        show=False,
    )


def test_every_stage_trains_with_finite_loss(he_images, tmp_path):
    run = tmp_path / "run"
    assert _train(he_images, run, steps_guide=2, steps_vae=2, steps_unet=2) is None  # export=False
    log = _log(run)
    assert [(r["stage"], r["step"]) for r in log] == [
        ("guide", 1), ("guide", 2), ("vae", 1), ("vae", 2), ("unet", 1), ("unet", 2)
    ]
    assert all(math.isfinite(r["loss"]) for r in log)
    for stage in ("guide", "vae", "unet"):
        state = json.loads((run / "checkpoints" / stage / "state.json").read_text())
        assert (state["step"], state["finished"]) == (2, True)
        assert (run / "checkpoints" / stage / "model" / "diffusion_pytorch_model.safetensors").is_file()
        assert (run / "checkpoints" / stage / "optimizer.safetensors").is_file()
    assert (run / "checkpoints" / "guide" / "head.safetensors").is_file()
    assert (run / "checkpoints" / "unet" / "ema" / "diffusion_pytorch_model.safetensors").is_file()
    vae_cfg = json.loads((run / "checkpoints" / "vae" / "model" / "config.json").read_text())
    assert vae_cfg["scaling_factor"] != 1.0 and vae_cfg["scaling_factor"] > 0


def test_stopped_run_resumes_to_the_identical_state(he_images, tmp_path):
    steps = dict(steps_guide=3, steps_vae=2, steps_unet=1)
    _train(he_images, tmp_path / "full", **steps)
    calls = iter(range(100))
    assert _train(he_images, tmp_path / "cut", should_stop=lambda: next(calls) == 1, **steps) is None
    state = json.loads((tmp_path / "cut" / "checkpoints" / "guide" / "state.json").read_text())
    assert (state["step"], state["finished"]) == (2, False)
    assert not (tmp_path / "cut" / "checkpoints" / "vae").exists()
    _train(he_images, tmp_path / "cut", **steps)
    assert _log(tmp_path / "cut") == [
        {**r, "wall_s": c["wall_s"]} for r, c in zip(_log(tmp_path / "full"), _log(tmp_path / "cut"))
    ]
    for stage in ("guide", "vae", "unet"):
        name = f"checkpoints/{stage}/model/diffusion_pytorch_model.safetensors"
        assert _bytes(tmp_path / "cut" / name) == _bytes(tmp_path / "full" / name), stage


def test_cli_train_two_steps_then_resume_one_equals_three(he_images, tmp_path):
    base = ["backbone", "train", "--config", "tiny", "--data", str(he_images), "--threads", "1",
            "--device", "cpu", "--no-export"]
    assert main(base + ["--out", str(tmp_path / "a"), "--steps-unet", "2"]) == 0
    assert main(base + ["--out", str(tmp_path / "a"), "--steps-unet", "3", "--resume"]) == 0
    assert main(base + ["--out", str(tmp_path / "b"), "--steps-unet", "3"]) == 0
    a, b = _log(tmp_path / "a"), _log(tmp_path / "b")
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert a[-1]["stage"] == "unet" and a[-1]["step"] == 3
    for sub in ("model", "ema"):
        name = f"checkpoints/unet/{sub}/diffusion_pytorch_model.safetensors"
        assert _bytes(tmp_path / "a" / name) == _bytes(tmp_path / "b" / name)
    a_opt = tmp_path / "a" / "checkpoints/unet/optimizer.safetensors"
    assert _bytes(a_opt) == _bytes(tmp_path / "b" / "checkpoints/unet/optimizer.safetensors")


def test_cli_refuses_data_without_images(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = main(["backbone", "train", "--config", "tiny", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r")])
    assert code == 2
    err = capsys.readouterr().err
    assert "pathsegdiff backbone: error:" in err and "no readable H&E image or slide found" in err
    assert not (tmp_path / "r").exists()


def test_cli_refuses_existing_run_without_resume(he_images, tmp_path, capsys):
    base = ["backbone", "train", "--config", "tiny", "--data", str(he_images), "--out", str(tmp_path / "r"),
            "--steps", "1", "--no-export"]
    assert main(base) == 0
    assert main(base) == 2
    assert "already holds a training run: pass --resume" in capsys.readouterr().err


def test_export_layout_loads_and_matches_model_card(he_images, tmp_path, capsys):
    run = tmp_path / "run"
    _train(he_images, run, steps_guide=1, steps_vae=1, steps_unet=2)
    assert main(["backbone", "export", "--run", str(run), "--out", str(tmp_path / "bb")]) == 0
    folder = tmp_path / "bb"
    for sub in ("vae", "unet", "guide"):
        assert (folder / sub / "config.json").is_file()
        assert (folder / sub / "diffusion_pytorch_model.safetensors").is_file()
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt"))
    assert (folder / "scheduler" / "scheduler_config.json").is_file()
    meta = json.loads((folder / "pathsegdiff_backbone.json").read_text())
    assert meta == {"format": 1, "name": "pathsegdiff-tiny", "mpp": 0.5, "tile_size": 32,
                    "conditioning": "guide", "default_timesteps": [50], "default_blocks": [0, 1]}
    from safetensors import safe_open

    with safe_open(str(folder / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16
    card = (folder / "MODEL_CARD.md").read_text()
    assert "im0.png" in card and "| unet |" in card and "SimCLR" in card

    from napari_pathsegdiff.models.backbone import load_backbone

    backbone = load_backbone(folder)
    assert f"Identity: `{backbone.identity}`" in card
    assert backbone.conditioning == "guide" and backbone.mpp == 0.5 and backbone.tile_size == 32
    # the exported UNet is the moving average of the run's weights
    from safetensors.torch import load_file

    ema = load_file(str(run / "checkpoints/unet/ema/diffusion_pytorch_model.safetensors"))
    key = next(iter(ema))
    assert torch.allclose(backbone.unet.state_dict()[key].float(), ema[key].half().float())

    # defaults chosen by measurement are written to the metadata and the card
    assert main(["backbone", "export", "--run", str(run), "--out", str(tmp_path / "bb2"),
                 "--timesteps", "100", "10", "--blocks", "1"]) == 0
    meta = json.loads((tmp_path / "bb2" / "pathsegdiff_backbone.json").read_text())
    assert meta["default_timesteps"] == [10, 100] and meta["default_blocks"] == [1]
    assert "Defaults: timesteps [10, 100], UNet up blocks [1]" in (tmp_path / "bb2" / "MODEL_CARD.md").read_text()
    with pytest.raises(ValueError, match="blocks \\[7\\]: each must be in 0..1"):
        export_backbone(run, tmp_path / "bb3", blocks=[7])


def test_export_refuses_a_run_without_unet_checkpoint(he_images, tmp_path):
    run = tmp_path / "run"
    _train(he_images, run, steps_guide=1, steps_vae=1, steps_unet=0)
    with pytest.raises(ValueError, match="stage 'unet' has no checkpoint yet"):
        export_backbone(run, tmp_path / "bb")
    with pytest.raises(ValueError, match="holds no backbone training run"):
        export_backbone(tmp_path / "nothing", tmp_path / "bb")


# --- architectures ------------------------------------------------------------------------


def test_small_config_fits_the_size_limit_and_loads():
    from napari_pathsegdiff.models.backbone import build_random_backbone
    from napari_pathsegdiff.models.backbone_configs import get_config

    config = get_config("small")
    backbone = build_random_backbone(config)
    params = sum(p.numel() for m in (backbone.vae, backbone.unet, backbone.guide) for p in m.parameters())
    assert 2 * params <= 60e6  # bytes in float16
    assert backbone.latent_factor == 4 and backbone.conditioning == "guide"
    assert backbone.vae.config.mid_block_add_attention is False
    assert backbone.unet.config.cross_attention_dim == backbone.guide.config.embed_dim
    assert (backbone.tile_size, backbone.mpp) == (256, 0.5)
    ctx = backbone.guide.context(torch.zeros(1, 3, 64, 64))
    assert ctx.shape == (1, 5, 256)
    with pytest.raises(ValueError, match="Unknown backbone configuration 'huge'"):
        get_config("huge")
    config["meta"]["name"] = "changed"
    assert get_config("small")["meta"]["name"] == "pathsegdiff-small"  # a copy each time


def test_guide_context_grid_tokens():
    from napari_pathsegdiff.models.guide import GuideEncoder

    guide = GuideEncoder(widths=(8, 16), embed_dim=12, norm_groups=4, context_grid=3).eval()
    x = torch.randn(2, 3, 32, 32)
    ctx = guide.context(x)
    assert ctx.shape == (2, 10, 12) and guide.num_tokens == 10
    assert torch.allclose(ctx[:, 0], guide(x), atol=1e-5)
    assert GuideEncoder(widths=(8,), embed_dim=4, norm_groups=4).context(x).shape == (2, 1, 4)
