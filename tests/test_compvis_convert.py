"""Converting CompVis checkpoints of the pathology LDM (Graikos et al.) into backbone folders.

Two kinds of tests:

- *fast*, on a fresh clone: a CompVis checkpoint written inside the test from random diffusers
  models through the key layout of the original code (the inverse of the conversion, written
  here from the layout rules, not from diffusers' converter), converted back and compared
  weight for weight and output for output; bad inputs; the CLI.
- *oracle*: against outputs of the original module code in ``../shared/reference/compvis-ldm``
  (tiny model with the released structure; key lists of the released BRCA 20x and CRC 20x
  models), skipped with the reason when that folder is absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from napari_pathsegdiff.cli import main as cli_main
from napari_pathsegdiff.models.backbone import BackboneError, load_backbone
from napari_pathsegdiff.models.compvis_convert import (
    CompVisConversionError,
    convert_compvis_checkpoint,
    convert_state_dict,
    embedder_state,
    read_checkpoint,
    unet_config,
    vq_config,
)
from napari_pathsegdiff.models.diffusion_features import DiffusionFeatures
from napari_pathsegdiff.models.ssl_conditioning import ConditioningEmbedder

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "compvis-ldm"


@pytest.fixture(scope="module")
def reference() -> Path:
    """The oracle folder beside the project; its tests are skipped without it."""
    if not REFERENCE.is_dir():
        pytest.skip(f"CompVis oracle folder {REFERENCE.parent.name}/{REFERENCE.name} beside the project is absent (fresh clone)")
    return REFERENCE


# --- a CompVis checkpoint made here --------------------------------------------------------

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}  # fmt: skip
_VQ_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _compvis_yaml(model_channels=32, mult=(1, 1, 2, 2), context=64, patch=96, region=None, vq_ch=32, vq_mult=(1, 2, 2),
                  latent=16, n_embed=64):
    """A CompVis yaml of the released structure (PatchEmbedder, or SSLEmbedder with ``region``)."""
    if region is None:
        cond = {"target": "ldm.modules.encoders.modules.PatchEmbedder",
                "params": {"patch_ssl_key": "feat_patch", "patch_embed_dim": patch, "target_dim": context, "normalize_ssl": True}}  # fmt: skip
    else:
        cond = {"target": "ldm.modules.encoders.modules.SSLEmbedder",
                "params": {"patch_embed_dim": patch, "region_embed_dim": region, "normalize_ssl": True}}  # fmt: skip
    return {"model": {"target": "ldm.models.diffusion.ddpm.LatentDiffusion", "params": {
        "linear_start": 0.0015, "linear_end": 0.0195, "timesteps": 1000, "image_size": latent, "channels": 3,
        "conditioning_key": "crossattn", "cond_stage_key": "hybrid",
        "unet_config": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": {
            "image_size": latent, "in_channels": 3, "out_channels": 3, "model_channels": model_channels,
            "attention_resolutions": [8, 4, 2], "num_res_blocks": 2, "channel_mult": list(mult),
            "num_heads": 1, "use_spatial_transformer": True, "transformer_depth": 1, "context_dim": context}},
        "first_stage_config": {"target": "ldm.models.autoencoder.VQModelInterface", "params": {
            "embed_dim": 3, "n_embed": n_embed, "ddconfig": {
                "double_z": False, "z_channels": 3, "resolution": latent * 4, "in_channels": 3, "out_ch": 3,
                "ch": vq_ch, "ch_mult": list(vq_mult), "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}}},
        "cond_stage_config": cond}}}  # fmt: skip


def _unet_to_compvis(key: str, n_up_with_attn: set[int]) -> str:
    """A diffusers UNet key → the original ``openaimodel.UNetModel`` key (layers_per_block 2)."""
    parts = key.split(".")
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}  # fmt: skip
    head = ".".join(parts[:-1])
    if head in fixed:
        return f"{fixed[head]}.{parts[-1]}"
    rest = ".".join(parts[4:])
    if parts[0] == "mid_block":
        index = {"resnets.0": 0, "attentions.0": 1, "resnets.1": 2}[".".join(parts[1:3])]
        return f"middle_block.{index}.{_resnet_name(parts[1], '.'.join(parts[3:]))}"
    block, kind, j = int(parts[1]), parts[2], int(parts[3])
    if parts[0] == "down_blocks":
        if kind == "downsamplers":
            return f"input_blocks.{3 * (block + 1)}.0.op.{parts[-1]}"
        return f"input_blocks.{3 * block + j + 1}.{0 if kind == 'resnets' else 1}.{_resnet_name(kind, rest)}"
    if kind == "upsamplers":
        return f"output_blocks.{3 * block + 2}.{2 if block in n_up_with_attn else 1}.conv.{parts[-1]}"
    return f"output_blocks.{3 * block + j}.{0 if kind == 'resnets' else 1}.{_resnet_name(kind, rest)}"


def _resnet_name(kind: str, rest: str) -> str:
    if kind != "resnets":
        return rest
    first, _, tail = rest.partition(".")
    return f"{_RESNET[first]}.{tail}"


def _vq_to_compvis(key: str, n_levels: int) -> str:
    """A diffusers VQModel key → the original ``VQModelInterface`` key."""
    k = key
    for coder in ("encoder", "decoder"):
        for i in (0, 1):
            k = k.replace(f"{coder}.mid_block.resnets.{i}.", f"{coder}.mid.block_{i + 1}.")
        if k.startswith(f"{coder}.mid_block.attentions.0."):
            tail = k[len(f"{coder}.mid_block.attentions.0.") :]
            name, _, param = tail.rpartition(".")
            k = f"{coder}.mid.attn_1.{_VQ_ATTN[name]}.{param}"
    k = k.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
    if k.startswith("encoder.down_blocks."):
        p = k.split(".")
        k = ".".join(["encoder", "down", p[2]] + (["downsample"] + p[5:] if p[3] == "downsamplers" else ["block"] + p[4:]))
    if k.startswith("decoder.up_blocks."):
        p = k.split(".")
        level = str(n_levels - 1 - int(p[2]))
        k = ".".join(["decoder", "up", level] + (["upsample"] + p[5:] if p[3] == "upsamplers" else ["block"] + p[4:]))
    return k


def _schedule(start=0.0015, end=0.0195, steps=1000) -> dict[str, torch.Tensor]:
    betas = np.linspace(start**0.5, end**0.5, steps, dtype=np.float64) ** 2
    alphas_cumprod = np.cumprod(1.0 - betas)
    return {"betas": torch.tensor(betas, dtype=torch.float32), "alphas_cumprod": torch.tensor(alphas_cumprod, dtype=torch.float32)}


def make_compvis_checkpoint(folder: Path, *, seed: int = 0, region: int | None = None, extra: dict | None = None):
    """Write ``model.ckpt`` + ``config.yaml`` of a tiny random pathology LDM; return them and the source models."""
    from diffusers import UNet2DConditionModel, VQModel

    config = _compvis_yaml(region=region)
    torch.manual_seed(seed)
    probe = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 3, 3, 3)}
    unet = UNet2DConditionModel(**unet_config(config, probe)).eval()
    vq = VQModel(**vq_config(config)).eval()
    with torch.no_grad():  # zero-initialised layers would hide mapping errors
        for p in list(unet.parameters()) + list(vq.parameters()):
            p.add_(torch.randn_like(p) * 0.05)
    with_attn = {i for i, t in enumerate(unet.config.up_block_types) if t.startswith("CrossAttn")}
    state = dict(_schedule())
    for k, v in unet.state_dict().items():
        state["model.diffusion_model." + _unet_to_compvis(k, with_attn)] = v.clone()
    n_levels = len(vq.config.block_out_channels)
    for k, v in vq.state_dict().items():
        name = _vq_to_compvis(k, n_levels)
        state["first_stage_model." + name] = v.clone()[:, :, None, None] if ".attn_1." in name and v.ndim == 2 else v.clone()
    layers = [("patch_fc", 96)] + ([("region_fc", region)] if region else [])
    emb = {}
    for name, width in layers:
        emb[name] = torch.nn.Linear(width, 64)
        state[f"cond_stage_model.{name}.weight"] = emb[name].weight.detach().clone()
        state[f"cond_stage_model.{name}.bias"] = emb[name].bias.detach().clone()
    state.update(extra or {})
    ckpt, cfg = folder / "model.ckpt", folder / "config.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state}, ckpt)
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    return ckpt, cfg, {"unet": unet, "vq": vq, "embedder": emb, "state": state, "config": config}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    folder = tmp_path_factory.mktemp("compvis")
    ckpt, cfg, models = make_compvis_checkpoint(folder / "src")
    out = convert_compvis_checkpoint(ckpt, cfg, folder / "converted", name="made")
    return {"ckpt": ckpt, "cfg": cfg, "out": out, **models}


# --- fast tests ------------------------------------------------------------------------------


def test_made_checkpoint_converts_weight_for_weight(made):
    bb = load_backbone(made["out"])
    for ours, source in ((bb.unet, made["unet"]), (bb.vae, made["vq"])):
        want, got = source.state_dict(), ours.state_dict()
        assert set(got) == set(want)
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=k)
    assert bb.conditioning == "ssl" and bb.ssl is not None and bb.ssl.encoder is None
    assert (bb.tile_size, bb.mpp, bb.default_timesteps, bb.default_blocks) == (64, 0.5, [50, 150], [2, 3])
    assert type(bb.scheduler).__name__ == "DDIMScheduler"
    torch.testing.assert_close(bb.scheduler.alphas_cumprod, made["state"]["alphas_cumprod"], rtol=0, atol=1e-6)


def test_made_checkpoint_gives_the_same_outputs(made):
    bb = load_backbone(made["out"])
    g = torch.Generator().manual_seed(3)
    x = torch.rand((2, 3, 64, 64), generator=g) * 2 - 1
    feats = torch.randn((2, 96), generator=g)
    with torch.no_grad():
        fc = made["embedder"]["patch_fc"]
        want_c = fc(torch.nn.functional.normalize(feats, dim=-1)).unsqueeze(1)
        torch.testing.assert_close(bb.ssl.embedder([feats]), want_c, rtol=0, atol=1e-6)
        torch.testing.assert_close(bb.ssl.unconditional(2), fc.bias.expand(2, 1, -1), rtol=0, atol=0)
        z = made["vq"].encode(x).latents
        torch.testing.assert_close(bb.vae.encode(x).latents, z, rtol=0, atol=0)
        t = torch.tensor([50, 150])
        want = made["unet"](z, t, encoder_hidden_states=want_c).sample
        torch.testing.assert_close(bb.unet(z, t, encoder_hidden_states=want_c).sample, want, rtol=0, atol=0)


def test_card_and_metadata(made):
    import hashlib

    card = (made["out"] / "MODEL_CARD.md").read_text()
    assert hashlib.sha256(made["ckpt"].read_bytes()).hexdigest() in card
    assert "unconditional tokens" in card and "schedule buffers (2 tensors)" in card
    meta = json.loads((made["out"] / "pathsegdiff_backbone.json").read_text())
    assert meta == {"format": 1, "name": "made", "mpp": 0.5, "tile_size": 64, "conditioning": "ssl",
                    "default_timesteps": [50, 150], "default_blocks": [2, 3]}  # fmt: skip
    assert sorted(p.name for p in made["out"].iterdir()) == [
        "MODEL_CARD.md", "pathsegdiff_backbone.json", "scheduler", "ssl_embedder", "unet", "vae"]  # fmt: skip
    assert not list(made["out"].rglob("*.ckpt")) and not list(made["out"].rglob("*.bin"))


def test_features_use_the_unconditional_tokens(made):
    bb = load_backbone(made["out"])
    fx = DiffusionFeatures(bb, timesteps=[50], blocks=[2, 3])
    tiles = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    feats = fx.extract(tiles)
    assert [f.shape for f in feats] == [(2, 32, 16, 16), (2, 32, 16, 16)]
    # the same pass by hand, with the embedder's biases as the context
    x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    captured = {}
    hooks = [bb.unet.up_blocks[i].register_forward_hook(lambda m, a, o, i=i: captured.__setitem__(i, o)) for i in (2, 3)]
    with torch.no_grad():
        z0 = bb.vae.encode(x).latents
        a = float(bb.scheduler.alphas_cumprod[50])
        zt = a**0.5 * z0 + (1 - a) ** 0.5 * fx._noise_like(z0)
        bb.unet(zt, torch.tensor([50, 50]), encoder_hidden_states=bb.ssl.unconditional(2))
    for h in hooks:
        h.remove()
    for feat, i in zip(feats, (2, 3)):
        np.testing.assert_allclose(feat.astype(np.float32), captured[i].numpy(), rtol=1e-2, atol=1e-2)
    assert fx.config()["context"] == "ssl-unconditional"
    assert fx.identity.endswith(":cond=0")


def test_cli_convert_says_unconditional(tmp_path, capsys):
    ckpt, cfg, _ = make_compvis_checkpoint(tmp_path / "src", region=48)
    out = tmp_path / "bb"
    assert cli_main(["backbone", "convert", "--checkpoint", str(ckpt), "--config", str(cfg), "--out", str(out), "--mpp", "2.0"]) == 0
    printed = capsys.readouterr().out
    assert f"backbone written to {out}" in printed and "unconditional tokens" in printed
    bb = load_backbone(out)
    assert bb.mpp == 2.0 and bb.name == "model" and bb.ssl.num_tokens == 2
    assert bb.ssl.embedder.config.source_class == "SSLEmbedder"


def test_ssl_embedder_two_tokens_and_missing_region():
    emb = ConditioningEmbedder(feature_dims=[4, 6], context_dim=8, source_class="SSLEmbedder", feature_names=["patch", "region"])
    patch = torch.randn(3, 4)
    tokens = emb([patch, None])
    assert tokens.shape == (3, 2, 8)
    torch.testing.assert_close(tokens[:, 1], emb.fcs[1].bias.expand(3, -1))
    torch.testing.assert_close(emb([torch.zeros(3, 4), torch.zeros(3, 6)]), emb.unconditional(3))
    with pytest.raises(ValueError, match=r"expected \(3, 4\)"):
        emb([torch.randn(3, 5), None])


# --- bad input -----------------------------------------------------------------------------


def _convert_fails(ckpt, cfg, out, match, **kwargs):
    with pytest.raises(CompVisConversionError, match=match):
        convert_compvis_checkpoint(ckpt, cfg, out, **kwargs)
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")], "a partial folder was left"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    ckpt, cfg, models = make_compvis_checkpoint(folder / "src")
    return ckpt, cfg, models["state"], models["config"]


def test_stable_diffusion_like_checkpoint_is_refused(source, tmp_path):
    ckpt, cfg, state, _ = source
    sd = {k: v for k, v in state.items() if not k.startswith(("cond_stage_model.", "first_stage_model.quantize"))}
    sd["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"] = torch.zeros(4, 8)
    torch.save({"state_dict": sd}, tmp_path / "sd.ckpt")
    _convert_fails(tmp_path / "sd.ckpt", cfg, tmp_path / "out", r"sd\.ckpt.*no VQ codebook.*Stable Diffusion")
    kl_yaml = yaml.safe_load(cfg.read_text())
    kl_yaml["model"]["params"]["first_stage_config"]["target"] = "ldm.models.autoencoder.AutoencoderKL"
    (tmp_path / "sd.yaml").write_text(yaml.safe_dump(kl_yaml))
    _convert_fails(ckpt, tmp_path / "sd.yaml", tmp_path / "out", r"sd\.yaml.*not a VQ autoencoder")


def test_unconditional_ldm_is_refused(source, tmp_path):
    ckpt, cfg, state, config = source
    torch.save({"state_dict": {k: v for k, v in state.items() if not k.startswith("cond_stage_model.")}}, tmp_path / "u.ckpt")
    _convert_fails(tmp_path / "u.ckpt", cfg, tmp_path / "out", r"u\.ckpt.*unconditional LDM")
    config = json.loads(json.dumps(config))
    config["model"]["params"]["cond_stage_config"] = "__is_unconditional__"
    config["model"]["params"]["conditioning_key"] = None
    (tmp_path / "u.yaml").write_text(yaml.safe_dump(config))
    _convert_fails(ckpt, tmp_path / "u.yaml", tmp_path / "out", r"u\.yaml.*unconditional")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda p: p["unet_config"]["params"].__setitem__("channel_mult", [1, 2, 2, 4]), r"does not match the yaml: the unet (lacks|has)"),
        (lambda p: p["unet_config"]["params"].__setitem__("num_res_blocks", 1), r"does not match the yaml"),
        (lambda p: p["first_stage_config"]["params"]["ddconfig"].__setitem__("ch_mult", [1, 2]), r"does not match the yaml"),
        (lambda p: p["unet_config"]["params"].__setitem__("channel_mult", [1, 1, 2]), r"does not match the yaml"),
        (lambda p: p["cond_stage_config"]["params"].__setitem__("patch_embed_dim", 768), r"widths \[96\], the yaml says \[768\]"),
        (lambda p: p.__setitem__("linear_end", 0.012), r"noise schedule .* differs"),
    ],
)
def test_mismatched_yaml_is_refused(source, tmp_path, change, match):
    ckpt, _, _, config = source
    config = json.loads(json.dumps(config))
    change(config["model"]["params"])
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(config))
    _convert_fails(ckpt, tmp_path / "other.yaml", tmp_path / "out", rf"model\.ckpt with .*other\.yaml.*{match}")


def test_truncated_checkpoint_is_refused(source, tmp_path):
    ckpt, cfg, _, _ = source
    data = ckpt.read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    _convert_fails(tmp_path / "cut.ckpt", cfg, tmp_path / "out", r"cut\.ckpt cannot be read: it is truncated")


_SIDE_EFFECTS: list[str] = []


def _side_effect(*args):
    _SIDE_EFFECTS.append("ran")
    return {}


class _Callback:
    """Stands for a Lightning callback object: unpickling it calls a function of this module."""

    def __reduce__(self):
        return (_side_effect, ())


def test_pickle_refused_by_the_safe_loader_needs_trust(source, tmp_path):
    ckpt, cfg, state, _ = source
    torch.save({"state_dict": state, "callbacks": {"ModelCheckpoint": _Callback()}}, tmp_path / "lightning.ckpt")
    _convert_fails(tmp_path / "lightning.ckpt", cfg, tmp_path / "out", r"lightning\.ckpt holds objects .*--trust-checkpoint")
    out = convert_compvis_checkpoint(tmp_path / "lightning.ckpt", cfg, tmp_path / "out", trust_checkpoint=True)
    assert _SIDE_EFFECTS == [], "trusted unpickling ran code named by the file"
    assert load_backbone(out).identity.split("@")[1] == load_backbone(
        convert_compvis_checkpoint(ckpt, cfg, tmp_path / "plain")
    ).identity.split("@")[1]
    with pytest.raises(CompVisConversionError, match=r"already exists"):
        convert_compvis_checkpoint(ckpt, cfg, tmp_path / "out")


def test_cli_reports_bad_input_cleanly(source, tmp_path, capsys):
    _, cfg, _, _ = source
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    code = cli_main(["backbone", "convert", "--checkpoint", str(tmp_path / "junk.ckpt"), "--config", str(cfg), "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert "junk.ckpt cannot be read" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_read_checkpoint_plain_state_dict_and_safetensors(source, tmp_path):
    from safetensors.torch import save_file

    _, _, state, _ = source
    torch.save(state, tmp_path / "plain.pt")
    assert set(read_checkpoint(tmp_path / "plain.pt")) == set(state)
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "m.safetensors")
    assert set(read_checkpoint(tmp_path / "m.safetensors")) == set(state)
    with pytest.raises(CompVisConversionError, match="no such file"):
        read_checkpoint(tmp_path / "absent.ckpt")


def test_ssl_folder_without_embedder_is_an_error(made, tmp_path):
    import shutil

    broken = tmp_path / "bb"
    shutil.copytree(made["out"], broken)
    shutil.rmtree(broken / "ssl_embedder")
    with pytest.raises(BackboneError, match=r"missing ssl_embedder/config\.json"):
        load_backbone(broken)


# --- against the original code (../shared/reference/compvis-ldm) --------------------------


@pytest.fixture(scope="module")
def oracle(reference, tmp_path_factory):
    tiny = reference / "tiny"
    out = convert_compvis_checkpoint(tiny / "model.ckpt", tiny / "config.yaml", tmp_path_factory.mktemp("oracle") / "bb")
    gold = dict(np.load(tiny / "golden.npz"))
    return load_backbone(out), {k: torch.from_numpy(v) for k, v in gold.items()}


def _close(got, want, atol):
    torch.testing.assert_close(got, want, rtol=0, atol=atol)


@torch.no_grad()
def test_oracle_embedder_and_unet_eps(oracle):
    bb, g = oracle
    c = bb.ssl.embedder([g["e"]])
    _close(c, g["c"], 1e-6)
    _close(bb.ssl.unconditional(2), g["c_uncond"], 1e-6)
    for t in (50, 150):
        _close(bb.unet(g[f"t{t}_zt"], g[f"t{t}_timesteps"], encoder_hidden_states=c).sample, g[f"t{t}_eps"], 1e-5)
    _close(bb.unet(g["t50_zt"], g["t50_timesteps"], encoder_hidden_states=bb.ssl.unconditional(2)).sample, g["t50_eps_uncond"], 1e-5)
    _close(bb.unet(g["t50_zt"], g["t50_timesteps"], encoder_hidden_states=g["c_2tok"]).sample, g["t50_eps_2tok"], 1e-5)


@torch.no_grad()
def test_oracle_block_outputs(oracle):
    bb, g = oracle
    unet, seen, hooks = bb.unet, {}, []

    def keep(name):
        return lambda m, a, o: seen.__setitem__(name, o[0] if isinstance(o, tuple) else o)

    # output_blocks[3k + j]: attentions[j] / resnets[j] of up_blocks[k] for j < 2, the up block itself for j = 2
    for k, block in enumerate(unet.up_blocks):
        hooks.append(block.register_forward_hook(keep(f"output_block_{3 * k + 2}")))
        for j in (0, 1):
            part = block.attentions[j] if hasattr(block, "attentions") else block.resnets[j]
            hooks.append(part.register_forward_hook(keep(f"output_block_{3 * k + j}")))
    for k, block in enumerate(unet.down_blocks):
        hooks.append(block.register_forward_hook(keep(f"input_block_{3 * k + 3 if k < 3 else 11}")))
    hooks.append(unet.mid_block.register_forward_hook(keep("middle_block")))
    hooks.append(unet.time_embedding.register_forward_hook(keep("temb")))
    try:
        unet(g["t50_zt"], g["t50_timesteps"], encoder_hidden_states=g["c"])
    finally:
        for h in hooks:
            h.remove()
    _close(seen.pop("temb"), g["t50_temb"], 1e-6)
    assert len(seen) == 12 + 4 + 1
    for name, got in seen.items():
        _close(got, g[f"t50_{name}"], 2e-5)


@torch.no_grad()
def test_oracle_vq(oracle):
    bb, g = oracle
    h = bb.vae.encode(g["x"]).latents
    _close(h, g["h"], 1e-5)
    quant, _, (_, _, indices) = bb.vae.quantize(h)
    _close(quant, g["quant"], 1e-5)
    assert torch.equal(indices.reshape(g["indices"].shape), g["indices"])
    _close(bb.vae.decode(g["h"]).sample, g["dec"], 1e-4)
    _close(bb.vae.decode(g["h"], force_not_quantize=True).sample, g["dec_noquant"], 1e-4)
    assert bb.vae.config.scaling_factor == 1.0
    _close(bb.scheduler.alphas_cumprod, g["alphas_cumprod"], 1e-6)


@torch.no_grad()
def test_oracle_two_token_ssl_embedder(reference):
    state = read_checkpoint(reference / "tiny" / "ssl_embedder.ckpt")
    cond = yaml.safe_load((reference / "tiny" / "ssl_embedder.yaml").read_text())["cond_stage_config"]
    config, sd = embedder_state(state, cond)
    emb = ConditioningEmbedder(**config)
    emb.load_state_dict(sd, strict=True)
    g = {k: torch.from_numpy(v) for k, v in np.load(reference / "tiny" / "golden.npz").items() if k.startswith("ssl_")}
    _close(emb([g["ssl_patch"], g["ssl_region"]]), g["ssl_c"], 1e-6)
    _close(emb([g["ssl_patch"], None]), g["ssl_c_region_zero"], 1e-6)
    _close(emb.unconditional(2), g["ssl_c_uncond"], 1e-6)


@torch.no_grad()
def test_oracle_ddim_with_guidance(oracle, reference):
    bb, _ = oracle
    d = {k: torch.from_numpy(v) for k, v in np.load(reference / "tiny" / "golden_ddim.npz").items()}
    scheduler = bb.scheduler
    scheduler.set_timesteps(5)
    assert scheduler.timesteps.tolist() == d["timesteps"].tolist() == [801, 601, 401, 201, 1]
    x, s = d["x_T"], float(d["guidance_scale"])
    for i, t in enumerate(scheduler.timesteps):
        eps_u, eps_c = bb.unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([d["c_uncond"], d["c"]])).sample.chunk(2)
        x = scheduler.step(eps_u + s * (eps_c - eps_u), t, x).prev_sample
        _close(x, d["x_inter"][i + 1], 2e-4)
    _close(bb.vae.decode(x).sample, d["image"], 1e-4)
    _close(bb.vae.decode(x, force_not_quantize=True).sample, d["image_noquant"], 1e-4)


@pytest.mark.parametrize(("name", "region", "dropped"), [("brca20x", 768, {"inception": 564}), ("crc20x", None, {})])
def test_full_size_key_lists_map_without_loss(reference, name, region, dropped):
    doc = json.loads((reference / "full" / f"keys_{name}.json").read_text())
    patch = 384 if region else 768
    config = _compvis_yaml(model_channels=192, mult=(1, 2, 3, 5), context=512, patch=patch, region=region,
                           vq_ch=128, vq_mult=(1, 2, 4), latent=64, n_embed=8192)  # fmt: skip
    state = {e["key"]: torch.empty(e["shape"], dtype=getattr(torch, e["dtype"]), device="meta") for e in doc["keys"]}
    converted = convert_state_dict(state, config, where=name)  # builds both models on meta: raises on any gap
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**converted["configs"]["unet"])
    for key, value in doc["diffusers_unet_config"].items():  # the oracle's configs, sample_size 64 included
        got = unet.config[key]
        assert (list(got) if isinstance(got, tuple) else got) == value, key
    assert converted["configs"]["vqvae"] == doc["diffusers_vqmodel_config"]
    for entry in doc["keys"]:
        if entry["diffusers"] is None:
            continue
        component, target = entry["diffusers"]
        tensor = converted[component][target]
        assert tensor is state[entry["key"]] or tensor._base is state[entry["key"]], entry["key"]
    assert converted["dropped"] == {"schedule buffers": 12, **dropped}
    assert converted["configs"]["embedder"]["feature_dims"] == ([384, 768] if region else [768])


# --- with an SSL encoder (a transformers folder) ---------------------------------------------


def _tiny_vit(folder: Path, width: int, seed: int = 0) -> Path:
    transformers = pytest.importorskip("transformers", reason="the SSL encoder path needs transformers (testing extra)")
    torch.manual_seed(seed)
    config = transformers.ViTConfig(hidden_size=width, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=32, image_size=32, patch_size=16)  # fmt: skip
    transformers.ViTModel(config).save_pretrained(folder, safe_serialization=True)
    return folder


def test_ssl_encoder_conditions_the_features(made, tmp_path):
    from napari_pathsegdiff.models.ssl_conditioning import IMAGENET_MEAN, IMAGENET_STD

    vit = _tiny_vit(tmp_path / "vit", width=96)
    out = convert_compvis_checkpoint(made["ckpt"], made["cfg"], tmp_path / "bb", ssl_encoder=vit)
    assert {p.name for p in (out / "ssl_encoder").iterdir()} >= {"config.json", "model.safetensors", "preprocessor_config.json"}
    assert f"`{vit}`" in (out / "MODEL_CARD.md").read_text()
    bb, plain = load_backbone(out), load_backbone(made["out"])
    assert bb.ssl.conditioned and bb.identity != plain.identity
    tiles = np.random.default_rng(1).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():  # the encoder's class token, from tiles resized to its 32 px, ImageNet-normalised
        small = torch.nn.functional.interpolate((x + 1) / 2, size=(32, 32), mode="bilinear", antialias=True)
        small = (small - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        cls = bb.ssl.encoder.model(pixel_values=small).last_hidden_state[:, 0]
        _close(bb.ssl.context(x), bb.ssl.embedder([cls]), 1e-6)
        assert not torch.allclose(bb.ssl.context(x), bb.ssl.unconditional(2), atol=1e-3)
    conditioned = DiffusionFeatures(bb, timesteps=[50], blocks=[3])
    unconditioned = DiffusionFeatures(bb, timesteps=[50], blocks=[3], conditioned=False)
    assert conditioned.config()["context"] == "ssl-encoder" and conditioned.identity.endswith(":cond=1")
    assert unconditioned.config()["context"] == "ssl-unconditional" and unconditioned.identity.endswith(":cond=0")
    plain_features = DiffusionFeatures(plain, timesteps=[50], blocks=[3]).extract(tiles)[0]
    np.testing.assert_array_equal(unconditioned.extract(tiles)[0], plain_features)
    assert np.abs(conditioned.extract(tiles)[0].astype(np.float32) - plain_features).max() > 1e-3


def test_ssl_encoder_of_the_wrong_width_is_refused(made, tmp_path):
    vit = _tiny_vit(tmp_path / "vit", width=64)
    with pytest.raises(ValueError, match=r"embeds into 64 values but the conditioning embedder \(PatchEmbedder\) takes 96"):
        convert_compvis_checkpoint(made["ckpt"], made["cfg"], tmp_path / "bb", ssl_encoder=vit)
    assert not (tmp_path / "bb").exists()


def test_ssl_encoder_hub_id_not_in_cache_is_refused(made, tmp_path):
    pytest.importorskip("transformers", reason="the SSL encoder path needs transformers (testing extra)")
    with pytest.raises(ValueError, match=r"not in the local hub cache; nothing is downloaded"):
        convert_compvis_checkpoint(made["ckpt"], made["cfg"], tmp_path / "bb", ssl_encoder="pathsegdiff-tests/absent-encoder")
    assert not (tmp_path / "bb").exists()


def test_widget_notes_the_unconditional_tokens(made):
    from napari_pathsegdiff._widgets._model_section import _context_note
    from napari_pathsegdiff.models.backbone import build_random_backbone

    assert _context_note(DiffusionFeatures(load_backbone(made["out"]))) == " · unconditional tokens (no SSL encoder)"
    assert _context_note(DiffusionFeatures(build_random_backbone("tiny"))) == ""
