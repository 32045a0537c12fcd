"""Backbones: building, saving, loading (folders, pipelines, hub cache) and strict errors."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from napari_pathsegdiff.models import backbone as backbone_module
from napari_pathsegdiff.models.backbone import (
    Backbone,
    BackboneError,
    backbone_identity,
    build_random_backbone,
    load_backbone,
    random_config,
)
from napari_pathsegdiff.models.guide import GuideEncoder

UNET_WEIGHTS = Path("unet") / "diffusion_pytorch_model.safetensors"
VAE_WEIGHTS = Path("vae") / "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def tiny() -> Backbone:
    return build_random_backbone("tiny", seed=0)


@pytest.fixture(scope="module")
def saved(tiny, tmp_path_factory) -> Path:
    """A tiny backbone saved once; tests that damage it work on a copy (see ``copy``)."""
    return tiny.save(tmp_path_factory.mktemp("backbone") / "tiny")


@pytest.fixture
def copy(saved, tmp_path) -> Path:
    return Path(shutil.copytree(saved, tmp_path / "copy"))


def vq_pipeline_config() -> dict:
    """A VQ autoencoder and an unconditional UNet2DModel, like the diffusers LDM pipelines."""
    return {
        "vae": {
            "_class_name": "VQModel",
            "down_block_types": ["DownEncoderBlock2D"] * 3,
            "up_block_types": ["UpDecoderBlock2D"] * 3,
            "block_out_channels": [16, 32, 32],
            "latent_channels": 3,
            "num_vq_embeddings": 32,
            "norm_num_groups": 8,
            "mid_block_add_attention": False,
        },
        "unet": {
            "_class_name": "UNet2DModel",
            "sample_size": 16,
            "in_channels": 3,
            "out_channels": 3,
            "block_out_channels": [16, 32],
            "down_block_types": ["DownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "UpBlock2D"],
            "layers_per_block": 1,
            "norm_num_groups": 8,
            "attention_head_dim": 8,
        },
        "guide": None,
        "scheduler": {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000},
    }


def write_pipeline(backbone: Backbone, folder: Path) -> Path:
    """Save ``backbone`` as a plain diffusers pipeline folder (no pathsegdiff json)."""
    backbone.vae.save_pretrained(folder / "vqvae")
    backbone.unet.save_pretrained(folder / "unet")
    backbone.scheduler.save_pretrained(folder / "scheduler")
    index = {
        "_class_name": "LDMPipeline",
        "vqvae": ["diffusers", "VQModel"],
        "unet": ["diffusers", "UNet2DModel"],
        "scheduler": ["diffusers", "DDIMScheduler"],
    }
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --- building ---------------------------------------------------------------------------------


def test_tiny_backbone_parts(tiny):
    assert type(tiny.vae).__name__ == "AutoencoderKL"
    assert type(tiny.unet).__name__ == "UNet2DConditionModel"
    assert isinstance(tiny.guide, GuideEncoder)
    assert tiny.conditioning == "guide"
    assert tiny.latent_factor == 4
    assert len(tiny.unet.up_blocks) == 3
    assert (tiny.name, tiny.mpp, tiny.tile_size) == ("random-tiny", 0.5, 64)
    assert (tiny.default_timesteps, tiny.default_blocks) == ([50, 150], [1, 2])
    assert re.fullmatch(r"random-tiny@[0-9a-f]{12}", tiny.identity)
    assert tiny.source == "random:tiny@seed0"
    assert not any(p.requires_grad for p in tiny.unet.parameters())


def test_random_weights_follow_the_seed(tiny):
    again = build_random_backbone("tiny", seed=0)
    other = build_random_backbone("tiny", seed=1)
    assert again.identity == tiny.identity
    assert same_weights(again.unet, tiny.unet)
    assert other.identity.split("@")[1] != tiny.identity.split("@")[1]
    assert not same_weights(other.unet, tiny.unet)


def test_random_build_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_random_backbone("tiny", seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_random_config_errors():
    with pytest.raises(ValueError, match="Unknown random backbone config 'huge'"):
        build_random_backbone("huge")
    config = random_config("tiny")
    config["guide"]["embed_dim"] = 16
    with pytest.raises(BackboneError, match="guide embeds into 16 values but the UNet cross-attends to 32"):
        build_random_backbone(config)
    config = random_config("tiny")
    config["unet"]["in_channels"] = 3
    config["unet"]["out_channels"] = 3
    with pytest.raises(BackboneError, match="UNet takes 3 channels but the autoencoder makes 4-channel"):
        build_random_backbone(config)


# --- saving and loading -----------------------------------------------------------------------


def test_save_writes_the_documented_layout(saved, tiny):
    files = sorted(p.relative_to(saved).as_posix() for p in saved.rglob("*") if p.is_file())
    assert files == [
        "guide/config.json",
        "guide/diffusion_pytorch_model.safetensors",
        "pathsegdiff_backbone.json",
        "scheduler/scheduler_config.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    ]
    meta = json.loads((saved / "pathsegdiff_backbone.json").read_text())
    assert meta == {
        "format": 1,
        "name": "random-tiny",
        "mpp": 0.5,
        "tile_size": 64,
        "conditioning": "guide",
        "default_timesteps": [50, 150],
        "default_blocks": [1, 2],
    }


def test_identity_is_the_documented_hash(saved, tiny):
    digest = hashlib.sha256()
    for rel in sorted(p.relative_to(saved).as_posix() for p in saved.rglob("*.safetensors")):
        digest.update(rel.encode())
        digest.update((saved / rel).read_bytes())
    assert backbone_identity(saved) == f"random-tiny@{digest.hexdigest()[:12]}"
    assert tiny.identity == backbone_identity(saved)


def test_load_round_trip(saved, tiny):
    loaded = load_backbone(saved)
    assert loaded.identity == tiny.identity
    assert loaded.source == str(saved.resolve())
    assert (loaded.name, loaded.mpp, loaded.tile_size, loaded.conditioning) == ("random-tiny", 0.5, 64, "guide")
    assert (loaded.default_timesteps, loaded.default_blocks) == ([50, 150], [1, 2])
    for part in ("vae", "unet", "guide"):
        assert same_weights(getattr(loaded, part), getattr(tiny, part))
    assert torch.equal(loaded.scheduler.alphas_cumprod, tiny.scheduler.alphas_cumprod)
    assert not loaded.unet.training


def test_identity_changes_when_a_weight_changes(saved, tmp_path):
    loaded = load_backbone(saved)
    before = loaded.identity
    with torch.no_grad():
        loaded.unet.conv_in.weight[0, 0, 0, 0] += 1.0
    loaded.save(tmp_path / "edited")
    assert loaded.identity == backbone_identity(tmp_path / "edited")
    assert loaded.identity.split("@")[0] == "random-tiny"
    assert loaded.identity != before
    assert backbone_identity(saved) == before


def test_load_in_half_precision(saved):
    half = load_backbone(saved, dtype=torch.float16)
    assert next(half.unet.parameters()).dtype == torch.float16
    assert half.identity == backbone_identity(saved)


def test_default_backbone_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(backbone_module, "default_backbone_folder", lambda: tmp_path / "absent")
    with pytest.raises(BackboneError, match=r"default backbone is not installed.*pathsegdiff backbone train"):
        load_backbone("default")
    with pytest.raises(BackboneError, match="default backbone is not installed"):
        load_backbone()


def test_default_backbone_loads_from_its_folder(saved, monkeypatch):
    monkeypatch.setattr(backbone_module, "default_backbone_folder", lambda: saved)
    loaded = load_backbone("default")
    assert loaded.source == "default"
    assert loaded.identity == backbone_identity(saved)


def test_the_default_folder_lies_in_the_package():
    folder = backbone_module.default_backbone_folder()
    assert folder.parts[-3:] == ("napari_pathsegdiff", "weights", "backbone-default")


def test_plain_pipeline_folder_loads(tmp_path):
    built = build_random_backbone(vq_pipeline_config(), seed=3)
    folder = write_pipeline(built, tmp_path / "ldm-like")
    loaded = load_backbone(folder)
    assert type(loaded.vae).__name__ == "VQModel"
    assert type(loaded.unet).__name__ == "UNet2DModel"
    assert type(loaded.scheduler).__name__ == "DDIMScheduler"
    assert loaded.guide is None
    assert loaded.mpp is None
    assert (loaded.name, loaded.tile_size, loaded.conditioning) == ("ldm-like", 256, "none")
    assert (loaded.default_timesteps, loaded.default_blocks) == ([50, 150], [1])
    assert same_weights(loaded.unet, built.unet)
    assert same_weights(loaded.vae, built.vae)
    assert loaded.identity == backbone_identity(folder)
    assert loaded.identity.startswith("ldm-like@")


def test_pipeline_without_autoencoder_is_an_error(tmp_path):
    folder = write_pipeline(build_random_backbone(vq_pipeline_config()), tmp_path / "p")
    index = json.loads((folder / "model_index.json").read_text())
    del index["vqvae"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(BackboneError, match=r"model_index.json: a backbone needs an autoencoder"):
        load_backbone(folder)


def test_hub_id_loads_from_the_local_cache(saved, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    repo = cache / "models--pathology--tiny-ldm"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(saved, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(cache))
    loaded = load_backbone("pathology/tiny-ldm")
    assert loaded.source == "pathology/tiny-ldm"
    assert loaded.identity == backbone_identity(saved)


def test_hub_id_not_cached_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(
        BackboneError,
        match=r"'someone/some-ldm'.*not in the local hub cache.*huggingface-cli download someone/some-ldm",
    ):
        load_backbone("someone/some-ldm")


def test_unknown_spec_is_a_clear_error():
    with pytest.raises(BackboneError, match=r"'no such thing': there is no such folder, and it is not a hub id"):
        load_backbone("no such thing")


# --- damaged folders: errors that name the file, never random weights ---------------------------


def test_folder_without_metadata_is_an_error(copy):
    (copy / "pathsegdiff_backbone.json").unlink()
    with pytest.raises(BackboneError, match=r"not a backbone folder: it has neither pathsegdiff_backbone.json"):
        load_backbone(copy)


def test_missing_subfolder_is_named(copy):
    shutil.rmtree(copy / "unet")
    with pytest.raises(BackboneError, match=r"missing unet/config.json \(the unet of the backbone\)"):
        load_backbone(copy)


def test_missing_guide_folder_is_named(copy):
    shutil.rmtree(copy / "guide")
    with pytest.raises(BackboneError, match=r"missing guide/config.json"):
        load_backbone(copy)


def test_missing_weights_file_is_named(copy):
    (copy / VAE_WEIGHTS).unlink()
    with pytest.raises(BackboneError, match=re.escape(f"{copy / 'vae'}: missing weights file")):
        load_backbone(copy)


def test_pickle_weights_are_refused(copy):
    (copy / VAE_WEIGHTS).rename(copy / "vae" / "diffusion_pytorch_model.bin")
    with pytest.raises(BackboneError, match=r"only in a pickle format .* never loads"):
        load_backbone(copy)


def test_truncated_weights_are_named(copy):
    data = (copy / UNET_WEIGHTS).read_bytes()
    (copy / UNET_WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(BackboneError, match=re.escape(str(copy / UNET_WEIGHTS)) + ".*truncated or corrupt"):
        load_backbone(copy)


def test_corrupt_header_is_named(copy):
    data = bytearray((copy / VAE_WEIGHTS).read_bytes())
    data[8:40] = b"\xff" * 32
    (copy / VAE_WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(BackboneError, match=re.escape(str(copy / VAE_WEIGHTS)) + ".*truncated or corrupt"):
        load_backbone(copy)


def test_missing_tensor_is_named(copy):
    path = copy / UNET_WEIGHTS
    tensors = load_file(path)
    del tensors["conv_in.weight"]
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(BackboneError, match=re.escape(str(path)) + r" lacks tensors .*conv_in.weight"):
        load_backbone(copy)


def test_unknown_tensor_is_named(copy):
    path = copy / "guide" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(path)
    tensors["extra.weight"] = torch.zeros(2)
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(BackboneError, match=re.escape(str(path)) + r" has unknown tensors .*extra.weight"):
        load_backbone(copy)


def test_mis_shaped_tensor_is_named(copy):
    path = copy / UNET_WEIGHTS
    tensors = load_file(path)
    tensors["conv_in.weight"] = torch.zeros(3, 3)
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(BackboneError, match=re.escape(str(path)) + r".*size mismatch for conv_in.weight"):
        load_backbone(copy)


def test_config_that_does_not_match_the_weights(copy):
    config = json.loads((copy / "unet" / "config.json").read_text())
    config["block_out_channels"] = [16, 24, 40]
    (copy / "unet" / "config.json").write_text(json.dumps(config))
    with pytest.raises(BackboneError, match=re.escape(str(copy / UNET_WEIGHTS))):
        load_backbone(copy)


def test_unsupported_class_is_named(copy):
    config = json.loads((copy / "vae" / "config.json").read_text())
    config["_class_name"] = "AutoencoderTiny"
    (copy / "vae" / "config.json").write_text(json.dumps(config))
    with pytest.raises(BackboneError, match=r"vae/config.json: class 'AutoencoderTiny' is not supported"):
        load_backbone(copy)


def test_bad_metadata_is_named(copy):
    meta = json.loads((copy / "pathsegdiff_backbone.json").read_text())
    meta["default_blocks"] = [1, 7]
    (copy / "pathsegdiff_backbone.json").write_text(json.dumps(meta))
    with pytest.raises(BackboneError, match=r"pathsegdiff_backbone.json: default_blocks \[1, 7\] must be indices"):
        load_backbone(copy)
    meta["default_blocks"] = [1]
    meta["format"] = 2
    (copy / "pathsegdiff_backbone.json").write_text(json.dumps(meta))
    with pytest.raises(BackboneError, match=r"pathsegdiff_backbone.json: unsupported format 2"):
        load_backbone(copy)
    (copy / "pathsegdiff_backbone.json").write_text("{not json")
    with pytest.raises(BackboneError, match=r"pathsegdiff_backbone.json: not readable JSON"):
        load_backbone(copy)
