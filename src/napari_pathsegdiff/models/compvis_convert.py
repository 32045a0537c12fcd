"""Convert a CompVis latent-diffusion checkpoint of the pathology LDM into a backbone folder.

The pathology LDMs of Graikos et al. (CVPR 2024; BRCA 20x, CRC 20x, ...) are Lightning
checkpoints of the CompVis ``LatentDiffusion`` class with a project yaml: an
``openaimodel.UNetModel`` with spatial transformers (``model.diffusion_model.*``), a VQ-f4
autoencoder (``first_stage_model.*``) and a ``PatchEmbedder`` or ``SSLEmbedder``
(``cond_stage_model.*``). :func:`convert_compvis_checkpoint` turns one into a backbone folder
(``docs/backbone-format.md``) in numbered steps:

1. read the yaml and check that it describes this family;
2. read the checkpoint safely (``torch.load(weights_only=True)``, or safetensors);
3. check that the checkpoint is of this family and matches the yaml;
4. UNet: diffusers' own LDM config and key mapping (``single_file_utils``), with the real
   ``sample_size``;
5. VQModel: a config made here, diffusers' VAE key mapping plus the codebook, scaling 1.0;
6. the conditioning embedder (:class:`~.ssl_conditioning.ConditioningEmbedder`), and the SSL
   encoder when one is given;
7. the DDIM scheduler of the CompVis schedule, checked against the checkpoint's buffers;
8. write everything to a temporary folder beside ``out``, load it back with the strict
   backbone loader, and rename it to ``out``.
"""

from __future__ import annotations

import datetime
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..core.atomic import replace_folder
from ..core.hashing import file_sha256 as _sha256
from .backbone import Backbone, _assemble, load_backbone
from .ssl_conditioning import ConditioningEmbedder, SSLConditioning, load_ssl_encoder

UNET_PREFIX = "model.diffusion_model."
VQ_PREFIX = "first_stage_model."
COND_PREFIX = "cond_stage_model."
CODEBOOK = "quantize.embedding.weight"
#: Persistent schedule buffers of ``LatentDiffusion`` (used to check the scheduler, then dropped).
SCHEDULE_KEYS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
    "posterior_mean_coef1", "posterior_mean_coef2",
)  # fmt: skip
#: Key prefixes with no counterpart in a backbone: the FID Inception of ``track_fid``, the EMA
#: copy (``use_ema``; the released models have none) and non-persistent extras.
DROPPED_PREFIXES = ("inception.", "model_ema.", "logvar", "lvlb_weights", "scale_factor")
EMBEDDERS = {
    "PatchEmbedder": ("patch_fc",),
    "SSLEmbedder": ("patch_fc", "region_fc"),
}
#: Feature defaults for this architecture (4 up blocks: 960×16², 576×32², 384×64², 192×64²
#: for a 256-px tile); see docs/backbone-format.md.
DEFAULT_TIMESTEPS = [50, 150]
DEFAULT_BLOCKS = [2, 3]

Log = Callable[[str], None]


class CompVisConversionError(ValueError):
    """A checkpoint or yaml that cannot be converted; the message names the file and what to do."""


# --- 1. the yaml ---------------------------------------------------------------------------


def read_compvis_config(path: str | Path) -> dict:
    """Read a CompVis project yaml and check that it is a cross-attention LDM of this family.

    Parameters
    ----------
    path : str or Path
        The yaml given with the checkpoint (e.g. ``configs/latent-diffusion/crc/only_patch_20x.yaml``).

    Returns
    -------
    dict
        The whole yaml (``{"model": {"target": ..., "params": {...}}, ...}``).

    Raises
    ------
    CompVisConversionError
        Not readable, not a ``LatentDiffusion`` yaml, or another architecture.
    """
    import yaml

    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise CompVisConversionError(f"{path}: not a readable yaml file ({_one_line(exc)}).") from exc
    params = _dig(config, ("model", "params"), path)
    target = str(_dig(config, ("model", "target"), path))
    if not target.endswith("LatentDiffusion"):
        raise CompVisConversionError(
            f"{path}: model.target is {target!r}; this converter reads the yaml of a CompVis "
            "LatentDiffusion model (the pathology LDM of Graikos et al.)."
        )
    cond = params.get("cond_stage_config")
    cond_target = str(cond.get("target") if isinstance(cond, dict) else cond)
    if params.get("conditioning_key") != "crossattn" or cond_target.endswith("__is_unconditional__"):
        raise CompVisConversionError(
            f"{path}: an unconditional or non-cross-attention LDM (conditioning_key "
            f"{params.get('conditioning_key')!r}, cond stage {cond_target!r}); this converter needs "
            "the self-supervised conditioning of the pathology LDM (PatchEmbedder or SSLEmbedder)."
        )
    _embedder_kind(cond_target, path)
    first = str(_dig(config, ("model", "params", "first_stage_config", "target"), path))
    if not first.split(".")[-1].startswith("VQModel"):
        raise CompVisConversionError(
            f"{path}: the first stage is {first!r}, not a VQ autoencoder (VQModelInterface); a "
            "KL autoencoder means a Stable Diffusion-like model, which this converter does not read."
        )
    ddconfig = _dig(config, ("model", "params", "first_stage_config", "params", "ddconfig"), path)
    if ddconfig.get("attn_resolutions"):
        raise CompVisConversionError(
            f"{path}: the first stage has attention at resolutions {ddconfig['attn_resolutions']}; "
            "diffusers' VQModel has attention only in its mid block, as the pathology LDM's."
        )
    unet = _dig(config, ("model", "params", "unet_config", "params"), path)
    if not unet.get("use_spatial_transformer") or not unet.get("context_dim"):
        raise CompVisConversionError(f"{path}: the UNet has no spatial transformer with a context_dim.")
    schedule = params.get("beta_schedule", "linear")
    if schedule != "linear":
        raise CompVisConversionError(f"{path}: beta_schedule {schedule!r} is not supported (only 'linear').")
    if params.get("parameterization", "eps") not in ("eps", "v"):
        raise CompVisConversionError(f"{path}: parameterization {params.get('parameterization')!r} is not supported.")
    return config


def _embedder_kind(target: str, where: Path | str) -> str:
    kind = target.split(".")[-1]
    if kind not in EMBEDDERS:
        raise CompVisConversionError(
            f"{where}: cond stage {target!r} is not a PatchEmbedder or SSLEmbedder (the "
            "self-supervised conditioning of the pathology LDM); a FrozenCLIPEmbedder means a "
            "Stable Diffusion model, which this converter does not read."
        )
    return kind


def _dig(config: Any, keys: tuple[str, ...], path: Path) -> Any:
    node = config
    for i, key in enumerate(keys):
        if not isinstance(node, dict) or key not in node:
            raise CompVisConversionError(
                f"{path}: no '{'.'.join(keys[: i + 1])}'; expected a CompVis latent-diffusion yaml."
            )
        node = node[key]
    return node


# --- 2. the checkpoint ---------------------------------------------------------------------


def read_checkpoint(path: str | Path, *, trust: bool = False) -> dict[str, torch.Tensor]:
    """The state dict of a CompVis checkpoint, read without running code from the file.

    Parameters
    ----------
    path : str or Path
        A Lightning ``.ckpt`` (``{"state_dict": ...}``), a plain state dict saved by
        ``torch.save``, or a ``.safetensors`` file.
    trust : bool
        When the safe loader refuses the file (a Lightning checkpoint can hold callback
        objects), read it with the same safe loader after registering, for every other class
        or function the file names, an inert stand-in of that name
        (``torch.serialization.safe_globals``): nothing named by the file is imported or run,
        and Lightning need not be installed. Still, give it only for a file you trust.

    Raises
    ------
    CompVisConversionError
        Missing, truncated or not a checkpoint; or refused by the safe loader without ``trust``.
    """
    path = Path(path)
    if not path.is_file():
        raise CompVisConversionError(f"Checkpoint {path}: no such file.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as exc:  # noqa: BLE001 - whatever safetensors raises, the file is bad
            raise CompVisConversionError(f"Checkpoint {path}: not a readable safetensors file ({_one_line(exc)}).") from exc
    try:
        if trust:
            data = _load_with_stand_ins(path)
        else:
            data = _safe_load(path)
    except pickle.UnpicklingError as exc:
        if trust or "Unsupported global" not in str(exc):  # not an object the safe loader refused: bad bytes
            raise CompVisConversionError(
                f"Checkpoint {path} cannot be read: it is truncated, damaged or not a PyTorch "
                f"checkpoint ({_first_sentence(exc)}). Download it again and compare its SHA-256."
            ) from exc
        raise CompVisConversionError(
            f"Checkpoint {path} holds objects other than tensors (for example Lightning callback "
            f"state), which the safe loader refuses ({_first_sentence(exc)}). If you trust this "
            "file, run again with --trust-checkpoint: the safe loader then reads it with inert "
            "stand-ins for those objects, and everything written is safetensors."
        ) from exc
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
        raise CompVisConversionError(
            f"Checkpoint {path} cannot be read: it is truncated, damaged or not a PyTorch "
            f"checkpoint ({_one_line(exc)}). Download it again and compare its SHA-256."
        ) from exc
    state = data.get("state_dict", data) if isinstance(data, dict) else None
    if not isinstance(state, dict) or not state:
        raise CompVisConversionError(f"Checkpoint {path}: no state dict (expected a dict with 'state_dict').")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if len(tensors) != len(state):
        odd = sorted(k for k in state if k not in tensors)[:3]
        raise CompVisConversionError(f"Checkpoint {path}: state dict entries that are not tensors ({odd}).")
    return tensors


def _safe_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``, memory-mapped when the file allows it (zip format)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


class _StandIn:
    """An inert object standing for a class the checkpoint refers to (never its code)."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def _load_with_stand_ins(path: Path) -> Any:
    """The safe loader, with an inert :class:`_StandIn` for every global it would refuse.

    The globals come from ``torch.serialization.get_unsafe_globals_in_checkpoint`` (read from
    the file's pickle opcodes, nothing executed); each stand-in carries the refused
    ``module.name`` so the safe loader's allowlist matches it.
    """
    names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    stand_ins = []
    for full in names:
        module, _, name = full.rpartition(".")
        stand_ins.append(type(name, (_StandIn,), {"__module__": module, "__qualname__": name}))
    with torch.serialization.safe_globals(stand_ins):
        return torch.load(path, map_location="cpu", weights_only=True)


# --- 3.-6. mapping -------------------------------------------------------------------------


def check_family(state: dict[str, Any], where: str | Path) -> str:
    """Check a state dict's keys belong to the pathology LDM; returns the embedder kind.

    Raises
    ------
    CompVisConversionError
        Another architecture (Stable Diffusion, an unconditional LDM, a bare UNet), with what
        was recognised.
    """
    keys = list(state)
    if not any(k.startswith(UNET_PREFIX) for k in keys):
        raise CompVisConversionError(
            f"Checkpoint {where}: no '{UNET_PREFIX}*' keys, so it is not a CompVis LatentDiffusion "
            f"checkpoint (first keys: {keys[:3]})."
        )
    if not any(k.startswith(VQ_PREFIX) for k in keys):
        raise CompVisConversionError(f"Checkpoint {where}: no '{VQ_PREFIX}*' keys (no autoencoder).")
    if VQ_PREFIX + CODEBOOK not in state:
        raise CompVisConversionError(
            f"Checkpoint {where}: the autoencoder has no VQ codebook ({VQ_PREFIX}{CODEBOOK}); a KL "
            "autoencoder means a Stable Diffusion-like checkpoint, which this converter does not read."
        )
    if any(k.startswith(COND_PREFIX + "transformer.") or k.startswith(COND_PREFIX + "model.") for k in keys):
        raise CompVisConversionError(
            f"Checkpoint {where}: its cond stage is a text encoder (CLIP), so it is a text-to-image "
            "LDM, not the pathology LDM with self-supervised conditioning."
        )
    cond = {k[len(COND_PREFIX) :].split(".")[0] for k in keys if k.startswith(COND_PREFIX)}
    for kind, layers in EMBEDDERS.items():
        if cond == set(layers):
            return kind
    if not cond:
        raise CompVisConversionError(
            f"Checkpoint {where}: no '{COND_PREFIX}*' keys, so it is an unconditional LDM; this "
            "converter needs the self-supervised conditioning (PatchEmbedder or SSLEmbedder)."
        )
    raise CompVisConversionError(f"Checkpoint {where}: cond stage layers {sorted(cond)} are not a PatchEmbedder or SSLEmbedder.")


def unet_config(config: dict, state: dict[str, Any]) -> dict:
    """The diffusers ``UNet2DConditionModel`` config: diffusers' own derivation, real sample size."""
    from diffusers.loaders.single_file_utils import create_unet_diffusers_config_from_ldm

    cfg = create_unet_diffusers_config_from_ldm(config, state)
    unet = config["model"]["params"]["unet_config"]["params"]
    cfg["sample_size"] = int(unet.get("image_size") or config["model"]["params"]["image_size"])
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}


def vq_config(config: dict) -> dict:
    """The diffusers ``VQModel`` config of a ``VQModelInterface`` (diffusers has no derivation of its own)."""
    params = config["model"]["params"]
    first = params["first_stage_config"]["params"]
    dd = first["ddconfig"]
    n = len(dd["ch_mult"])
    return {
        "in_channels": dd["in_channels"],
        "out_channels": dd["out_ch"],
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "block_out_channels": [dd["ch"] * m for m in dd["ch_mult"]],
        "layers_per_block": dd["num_res_blocks"],
        "act_fn": "silu",
        "latent_channels": dd["z_channels"],
        "sample_size": dd["resolution"],
        "num_vq_embeddings": first["n_embed"],
        "norm_num_groups": 32,
        "vq_embed_dim": first["embed_dim"],
        "scaling_factor": float(params.get("scale_factor", 1.0)),
        "norm_type": "group",
        "mid_block_add_attention": True,
        "lookup_from_codebook": False,
        "force_upcast": False,
    }


def scheduler_config(config: dict) -> dict:
    """A diffusers ``DDIMScheduler`` config that reproduces the CompVis schedule and DDIM steps.

    CompVis' ``"linear"`` schedule (``linspace(sqrt(start), sqrt(end), T)**2``) is diffusers'
    ``"scaled_linear"``; ``steps_offset`` 1 with ``"leading"`` spacing gives CompVis' DDIM
    timesteps (e.g. 801, 601, 401, 201, 1 for 5 steps).
    """
    params = config["model"]["params"]
    prediction = {"eps": "epsilon", "v": "v_prediction"}[params.get("parameterization", "eps")]
    return {
        "_class_name": "DDIMScheduler",
        "num_train_timesteps": int(params.get("timesteps", 1000)),
        "beta_start": float(params.get("linear_start", 1e-4)),
        "beta_end": float(params.get("linear_end", 2e-2)),
        "beta_schedule": "scaled_linear",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "prediction_type": prediction,
    }


def convert_state_dict(state: dict[str, Any], config: dict, *, where: str = "checkpoint") -> dict[str, dict]:
    """Map a CompVis state dict onto diffusers keys, checked against models built on ``meta``.

    Parameters
    ----------
    state : dict
        The checkpoint's state dict (tensors may be on the ``meta`` device).
    config : dict
        The yaml from :func:`read_compvis_config`.
    where : str
        Names the files in error messages.

    Returns
    -------
    dict
        ``{"unet": {...}, "vqvae": {...}, "embedder": {...}}`` state dicts, plus
        ``"configs"`` (the three model configs) and ``"dropped"`` (source keys with no
        counterpart, by prefix, with their counts).

    Raises
    ------
    CompVisConversionError
        The state dict does not match the yaml: missing, unexpected, mis-shaped or unused keys.
    """
    from diffusers import UNet2DConditionModel, VQModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    kind = check_family(state, where)
    ucfg = unet_config(config, state)
    vcfg = vq_config(config)
    try:
        with _quiet_diffusers():
            unet_sd = convert_ldm_unet_checkpoint(state, ucfg)
            vq_sd = convert_ldm_vae_checkpoint(state, vcfg)
    except (KeyError, IndexError, ValueError, RuntimeError) as exc:
        raise CompVisConversionError(
            f"{where}: the checkpoint does not match the yaml: mapping its keys onto the models the "
            f"yaml describes failed ({type(exc).__name__}: {_one_line(exc)}). Use the yaml released "
            "with this checkpoint."
        ) from exc
    vq_sd["quantize.embedding.weight"] = state[VQ_PREFIX + CODEBOOK]
    cond = config["model"]["params"]["cond_stage_config"]
    if _embedder_kind(str(cond.get("target")), where) != kind:
        raise CompVisConversionError(
            f"{where}: the checkpoint does not match the yaml: the yaml's cond stage is a "
            f"{cond.get('target')}, the checkpoint's a {kind}."
        )
    ecfg, emb_sd = embedder_state(state, cond, where=where)
    if ecfg["context_dim"] != ucfg["cross_attention_dim"]:
        raise CompVisConversionError(
            f"{where}: the checkpoint does not match the yaml: its {kind} makes "
            f"{ecfg['context_dim']}-wide tokens, the yaml's UNet attends to {ucfg['cross_attention_dim']}."
        )
    with torch.device("meta"):
        models = {
            "unet": UNet2DConditionModel(**ucfg),
            "vqvae": VQModel(**vcfg),
            "embedder": ConditioningEmbedder(**ecfg),
        }
    converted = {"unet": unet_sd, "vqvae": vq_sd, "embedder": emb_sd}
    for name, model in models.items():
        _check_keys(model, converted[name], name, where)
    dropped = _unused_keys(state, converted, where)
    converted["configs"] = {"unet": ucfg, "vqvae": vcfg, "embedder": ecfg}
    converted["dropped"] = dropped
    return converted


def embedder_state(state: dict[str, Any], cond_stage_config: dict, *, where: str | Path = "checkpoint") -> tuple[dict, dict]:
    """Config and state dict of the :class:`~.ssl_conditioning.ConditioningEmbedder` of a cond stage.

    Parameters
    ----------
    state : dict
        A state dict with ``cond_stage_model.patch_fc.*`` (and ``region_fc.*`` for an SSLEmbedder).
    cond_stage_config : dict
        The yaml's ``cond_stage_config`` (``target`` and ``params``).
    where : str or Path
        Names the files in error messages.

    Returns
    -------
    config, state_dict : dict, dict
        ``ConditioningEmbedder(**config)`` takes ``state_dict`` with ``strict=True``.
    """
    kind = _embedder_kind(str(cond_stage_config.get("target")), where)
    layers = EMBEDDERS[kind]
    names = [f"{COND_PREFIX}{layer}.{p}" for layer in layers for p in ("weight", "bias")]
    missing = [n for n in names if n not in state]
    if missing:
        raise CompVisConversionError(f"{where}: the yaml's cond stage is a {kind}, but the checkpoint lacks {missing}.")
    params = cond_stage_config.get("params") or {}
    weights = [state[f"{COND_PREFIX}{layer}.weight"] for layer in layers]
    dims = [int(w.shape[1]) for w in weights]
    expected = [params.get("patch_embed_dim"), params.get("region_embed_dim")][: len(layers)]
    if any(e is not None and int(e) != d for e, d in zip(expected, dims)):
        raise CompVisConversionError(
            f"{where}: the checkpoint does not match the yaml: its {kind} takes embeddings of "
            f"widths {dims}, the yaml says {expected}."
        )
    if len({int(w.shape[0]) for w in weights}) != 1:
        raise CompVisConversionError(f"{where}: the {kind}'s layers make tokens of different widths.")
    config = {
        "feature_dims": dims,
        "context_dim": int(weights[0].shape[0]),
        "normalize": bool(params.get("normalize_ssl", True)),
        "source_class": kind,
        "feature_names": [layer.split("_")[0] for layer in layers],
    }
    sd = {}
    for i, layer in enumerate(layers):
        sd[f"fcs.{i}.weight"] = state[f"{COND_PREFIX}{layer}.weight"]
        sd[f"fcs.{i}.bias"] = state[f"{COND_PREFIX}{layer}.bias"]
    return config, sd


def _check_keys(model: torch.nn.Module, converted: dict, name: str, where) -> None:
    ref = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(ref) - set(converted))
    unexpected = sorted(set(converted) - set(ref))
    shapes = sorted(
        f"{k} {tuple(converted[k].shape)} vs {ref[k]}" for k in set(ref) & set(converted) if tuple(converted[k].shape) != ref[k]
    )
    for what, bad in (("lacks", missing), ("has unexpected", unexpected), ("has mis-shaped (checkpoint vs yaml)", shapes)):
        if bad:
            shown = "; ".join(bad[:4]) + ("; ..." if len(bad) > 4 else "")
            raise CompVisConversionError(
                f"{where}: the checkpoint does not match the yaml: the {name} {what} tensors "
                f"({len(bad)}: {shown}). Use the yaml released with this checkpoint."
            )


def _unused_keys(state: dict, converted: dict[str, dict], where) -> dict[str, int]:
    """Source keys that no converted tensor came from: an error under the mapped prefixes."""
    used: set[int] = set()
    for sd in converted.values():
        for tensor in sd.values():
            used.add(id(tensor))
            if tensor._base is not None:
                used.add(id(tensor._base))
    unused = [k for k, v in state.items() if id(v) not in used]
    bad = [k for k in unused if k.startswith((UNET_PREFIX, VQ_PREFIX, COND_PREFIX))]
    if bad:
        shown = ", ".join(bad[:4]) + (", ..." if len(bad) > 4 else "")
        raise CompVisConversionError(
            f"{where}: the checkpoint does not match the yaml: {len(bad)} of its tensors have no "
            f"place in the models the yaml describes ({shown}). Use the yaml released with this checkpoint."
        )
    dropped: dict[str, int] = {}
    for k in unused:
        if k in SCHEDULE_KEYS:
            group = "schedule buffers"
        else:
            group = next((p.rstrip(".") for p in DROPPED_PREFIXES if k.startswith(p)), k.split(".")[0])
        dropped[group] = dropped.get(group, 0) + 1
    return dropped


# --- 7. scheduler ---------------------------------------------------------------------------


def build_scheduler(config: dict, state: dict[str, Any], where) -> Any:
    """The DDIM scheduler, checked against the checkpoint's ``alphas_cumprod`` when it has one."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(scheduler_config(config))
    saved = state.get("alphas_cumprod")
    if saved is not None and saved.device.type != "meta":
        if saved.shape != scheduler.alphas_cumprod.shape:
            raise CompVisConversionError(
                f"{where}: the checkpoint's schedule has {saved.shape[0]} steps, the yaml's {scheduler.alphas_cumprod.shape[0]}."
            )
        diff = (saved.double() - scheduler.alphas_cumprod.double()).abs().max().item()
        if diff > 1e-5:
            raise CompVisConversionError(
                f"{where}: the yaml's noise schedule (linear_start/linear_end/timesteps) differs from the "
                f"checkpoint's alphas_cumprod by {diff:.2g}; use the yaml released with this checkpoint."
            )
    return scheduler


# --- 8. the folder --------------------------------------------------------------------------


def convert_compvis_checkpoint(
    checkpoint: str | Path,
    config: str | Path,
    out: str | Path,
    *,
    mpp: float | None = 0.5,
    name: str | None = None,
    ssl_encoder: str | Path | None = None,
    trust_checkpoint: bool = False,
    dtype: torch.dtype = torch.float32,
    log: Log | None = None,
) -> Path:
    """Write a backbone folder from a CompVis checkpoint of the pathology LDM and its yaml.

    Parameters
    ----------
    checkpoint : str or Path
        The ``.ckpt`` (or ``.safetensors``) file.
    config : str or Path
        Its project yaml.
    out : str or Path
        The backbone folder to write; it must not exist yet (or be empty).
    mpp : float or None
        µm/px of the training tiles (0.5 for the 20x models, 2.0 for 5x).
    name : str, optional
        Backbone name; default the checkpoint's file stem.
    ssl_encoder : str or Path, optional
        The self-supervised encoder the model was trained with, as a transformers folder or a
        cached hub id; it is copied into the backbone (``ssl_encoder/``). Without it, features
        use the unconditional tokens.
    trust_checkpoint : bool
        Read a checkpoint the safe loader refuses, with inert stand-ins for its other objects
        (see :func:`read_checkpoint`).
    dtype : torch.dtype
        Precision of the written weights.
    log : callable, optional
        Receives one line per step.

    Returns
    -------
    Path
        ``out``, written whole: nothing is left there when a step fails.
    """
    log = log or (lambda line: None)
    checkpoint, config_path, out = Path(checkpoint), Path(config), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CompVisConversionError(f"--out {out} already exists; choose a new folder or remove it.")
    if mpp is not None and not mpp > 0:
        raise CompVisConversionError(f"--mpp must be positive, got {mpp}.")
    # 1.-2. read
    yaml_config = read_compvis_config(config_path)
    log(f"reading {checkpoint}")
    state = read_checkpoint(checkpoint, trust=trust_checkpoint)
    where = f"{checkpoint} with {config_path}"
    encoder = None
    if ssl_encoder is not None:
        log(f"loading SSL encoder {ssl_encoder}")
        encoder = load_ssl_encoder(ssl_encoder, dtype=dtype)
    # 3.-6. map and build
    converted = convert_state_dict(state, yaml_config, where=where)
    scheduler = build_scheduler(yaml_config, state, where)
    models = _build_models(converted, dtype)
    del state
    ssl = SSLConditioning(models["embedder"], encoder)
    meta = _metadata(yaml_config, converted["configs"], mpp=mpp, name=name or checkpoint.stem)
    backbone = _assemble(models["vqvae"], models["unet"], scheduler, None, meta, source=str(out), where=where, ssl=ssl)
    # 8. write beside out, check by loading, rename
    loaded = []

    def write(tmp: Path) -> None:
        log(f"writing {out}")
        backbone.save(tmp)
        _write_card(tmp, checkpoint, config_path, backbone, converted, ssl_encoder)
        loaded.append(load_backbone(tmp))

    replace_folder(out, write)
    loaded = loaded[0]
    log(f"identity {loaded.identity.split('@')[0]}@{loaded.identity.split('@')[1]}")
    return out


def _build_models(converted: dict, dtype: torch.dtype) -> dict[str, torch.nn.Module]:
    """The three models on the CPU, their weights assigned from the converted state dicts."""
    from diffusers import UNet2DConditionModel, VQModel

    classes = {"unet": UNet2DConditionModel, "vqvae": VQModel, "embedder": ConditioningEmbedder}
    models = {}
    for name, cls in classes.items():
        with torch.device("meta"):
            model = cls(**converted["configs"][name])
        weights = {k: v.to(dtype).contiguous() for k, v in converted[name].items()}
        model.load_state_dict(weights, strict=True, assign=True)
        models[name] = model.eval().requires_grad_(False)
    return models


def _metadata(config: dict, configs: dict, *, mpp: float | None, name: str) -> dict:
    params = config["model"]["params"]
    factor = 2 ** (len(configs["vqvae"]["block_out_channels"]) - 1)
    return {
        "name": name,
        "mpp": mpp,
        "tile_size": int(params["image_size"]) * factor,
        "default_timesteps": [t for t in DEFAULT_TIMESTEPS if t < int(params.get("timesteps", 1000))],
        "default_blocks": [b for b in DEFAULT_BLOCKS if b < len(configs["unet"]["up_block_types"])],
    }


def _write_card(folder: Path, checkpoint: Path, config: Path, backbone: Backbone, converted: dict, ssl_encoder) -> None:
    emb = converted["configs"]["embedder"]
    n_unet = sum(p.numel() for p in backbone.unet.parameters())
    n_vq = sum(p.numel() for p in backbone.vae.parameters())
    dropped = ", ".join(f"{k} ({v} tensors)" for k, v in sorted(converted["dropped"].items())) or "none"
    if ssl_encoder is None:
        conditioning = (
            "**unconditional tokens**: no SSL encoder was given, so every tile gets the tokens of "
            "zero embeddings (the embedder's biases), i.e. the unconditional model of training with "
            "condition dropout."
        )
    else:
        conditioning = f"the SSL encoder `{ssl_encoder}` (copied into `ssl_encoder/`) feeds the `{emb['feature_names'][0]}` input."
    lines = [
        f"# {backbone.name}",
        "",
        "Converted from a CompVis latent-diffusion checkpoint of the pathology LDM of Graikos et al.",
        "(CVPR 2024) by `pathsegdiff backbone convert`.",
        "",
        "| | |",
        "|---|---|",
        f"| source checkpoint | `{checkpoint.name}`, {checkpoint.stat().st_size} bytes |",
        f"| source SHA-256 | `{_sha256(checkpoint)}` |",
        f"| source yaml | `{config.name}`, SHA-256 `{_sha256(config)}` |",
        f"| converted | {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} |",
        f"| UNet | UNet2DConditionModel, {n_unet:,} parameters, blocks {backbone.unet.config.block_out_channels} |",
        f"| autoencoder | VQModel, {n_vq:,} parameters, scaling factor {backbone.vae.config.scaling_factor} |",
        f"| conditioning | {emb['source_class']}: {len(emb['feature_dims'])} token(s) from embeddings of widths {emb['feature_dims']} |",
        f"| tiles | {backbone.tile_size} px at {backbone.mpp} µm/px |",
        f"| feature defaults | timesteps {backbone.default_timesteps}, up blocks {backbone.default_blocks} |",
        f"| dropped keys | {dropped} |",
        "",
        f"Conditioning: {conditioning}",
        "",
        "The released weights carry no stated licence; check with their authors before sharing this folder.",
        "",
    ]
    (folder / "MODEL_CARD.md").write_text("\n".join(lines))




def _quiet_diffusers():
    from .backbone import _quiet_diffusers as quiet

    return quiet()


def _one_line(exc: BaseException, limit: int = 240) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_sentence(exc: BaseException) -> str:
    """The part of the safe loader's long message that names the refused object."""
    text = " ".join(str(exc).split())
    for marker in ("Unsupported global:", "WeightsUnpickler error:"):
        i = text.find(marker)
        if i >= 0:
            return text[i:].split(". ")[0].split(" Check the documentation")[0][:200].strip()
    return text[:200]


__all__ = [
    "CompVisConversionError",
    "check_family",
    "convert_compvis_checkpoint",
    "convert_state_dict",
    "embedder_state",
    "read_checkpoint",
    "read_compvis_config",
    "scheduler_config",
    "unet_config",
    "vq_config",
]
