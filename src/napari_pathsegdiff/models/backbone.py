"""Backbones: autoencoder + denoising UNet + noise schedule (+ guide), loaded from folders.

A backbone is the frozen latent diffusion model whose UNet decoder activations are the
features of :class:`~napari_pathsegdiff.models.diffusion_features.DiffusionFeatures`. The
folder layout is described in ``docs/backbone-format.md``. Weights are read with safetensors
only, and a folder that is incomplete or inconsistent is an error that names the file, never a
silently random model.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.resources
import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .device import resolve_device

META_FILE = "pathsegdiff_backbone.json"
PIPELINE_FILE = "model_index.json"
WEIGHTS = "diffusion_pytorch_model"
FORMAT = 1

_AUTOENCODERS = ("AutoencoderKL", "VQModel")
_UNETS = ("UNet2DConditionModel", "UNet2DModel")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class BackboneError(ValueError):
    """A backbone folder, file or hub id that cannot be used; the message says which and why."""


@dataclass
class Backbone:
    """A frozen latent diffusion model used as a feature extractor.

    Attributes
    ----------
    vae : AutoencoderKL or VQModel
        Encodes RGB tiles in [-1, 1] into latents.
    unet : UNet2DConditionModel or UNet2DModel
        The latent denoiser whose ``up_blocks`` outputs are the features.
    scheduler : SchedulerMixin
        Noise schedule; only its ``alphas_cumprod`` is used.
    guide : GuideEncoder or None
        Encoder of the cross-attention context (``conditioning == "guide"``).
    name : str
        Short name.
    mpp : float or None
        Microns per pixel of the training tiles; ``None`` when unknown.
    tile_size : int
        Side of the training tiles in pixels.
    conditioning : str
        ``"guide"`` (the guide's embedding is the context), ``"ssl"`` (the self-supervised
        conditioning of a converted pathology LDM, see :attr:`ssl`), ``"text-null"`` (a
        cross-attention UNet without a guide: it always gets the null context) or ``"none"``
        (no context).
    default_timesteps, default_blocks : list of int
        Feature settings used unless the user chooses others.
    identity : str
        ``name@<12 hex digits>``, the hash of the weights files (see ``docs/backbone-format.md``).
    source : str
        Where it came from: ``"default"``, a folder or a hub id.
    ssl : SSLConditioning or None
        Embedder (and optional SSL encoder) of the context (``conditioning == "ssl"``).
    """

    vae: Any
    unet: Any
    scheduler: Any
    guide: Any
    name: str
    mpp: float | None
    tile_size: int
    conditioning: str
    default_timesteps: list[int]
    default_blocks: list[int]
    identity: str
    source: str
    ssl: Any = None

    @property
    def latent_factor(self) -> int:
        """Downsampling factor of the autoencoder (4 or 8 for usual backbones)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def to(self, device: str | torch.device) -> Backbone:
        """Move every model to ``device`` (``"cpu"``, ``"cuda"``, ``"auto"``); returns ``self``."""
        device = resolve_device(device)
        for model in self._models().values():
            model.to(device)
        if self.ssl is not None:
            self.ssl.to(device)
        return self

    def save(self, folder: str | Path) -> Path:
        """Write the backbone as a folder in the documented layout.

        Weights go to safetensors files through diffusers ``save_pretrained``; the metadata to
        ``pathsegdiff_backbone.json``. :attr:`identity` is set to the identity of the written
        files, so loading the folder again gives the same identity.

        Parameters
        ----------
        folder : str or Path
            Destination; created if needed. Existing component folders are replaced.

        Returns
        -------
        Path
            The folder.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for sub, model in self._models().items():
            model.save_pretrained(folder / sub, safe_serialization=True)
        self.scheduler.save_pretrained(folder / "scheduler")
        if self.ssl is not None and self.ssl.encoder is not None:
            from .ssl_conditioning import save_ssl_encoder

            save_ssl_encoder(self.ssl.encoder, folder / "ssl_encoder")
        meta = {
            "format": FORMAT,
            "name": self.name,
            "mpp": self.mpp,
            "tile_size": int(self.tile_size),
            "conditioning": self.conditioning if self.conditioning in ("guide", "ssl") else "none",
            "default_timesteps": [int(t) for t in self.default_timesteps],
            "default_blocks": [int(b) for b in self.default_blocks],
        }
        (folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        self.identity = backbone_identity(folder)
        return folder

    def _models(self) -> dict[str, torch.nn.Module]:
        models = {"vae": self.vae, "unet": self.unet}
        if self.guide is not None:
            models["guide"] = self.guide
        if self.ssl is not None:
            models["ssl_embedder"] = self.ssl.embedder
        return models


def default_backbone_folder() -> Path:
    """The folder of the backbone shipped inside the package (it may not be installed)."""
    return Path(str(importlib.resources.files("napari_pathsegdiff") / "weights" / "backbone-default"))


def load_backbone(
    spec: str | Path = "default",
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Backbone:
    """Load a backbone from the package, a folder, or the local hub cache.

    Parameters
    ----------
    spec : str or Path
        ``"default"`` (the backbone shipped in the package), a folder (our layout, or a plain
        diffusers pipeline folder with ``model_index.json``), or a hub id ``"org/name"`` that is
        already in the local cache (nothing is downloaded).
    device : str or torch.device
        ``"cpu"``, ``"cuda"`` or ``"auto"``.
    dtype : torch.dtype
        Precision of the weights in memory.

    Returns
    -------
    Backbone

    Raises
    ------
    BackboneError
        The default backbone is not installed, the folder or hub id is missing, or a file in it
        is missing, corrupt or inconsistent with its config.
    """
    if isinstance(spec, str) and spec == "default":
        folder = default_backbone_folder()
        source = name_hint = "default"
        if not folder.is_dir():
            raise BackboneError(
                "The default backbone is not installed in this copy of napari-pathsegdiff "
                f"(no folder {folder}). Pass a backbone folder or a cached hub id instead "
                "(--backbone PATH), or train one on your own slides with "
                "`pathsegdiff backbone train --data SLIDES --out FOLDER`."
            )
    elif isinstance(spec, Path) or Path(str(spec)).expanduser().exists():
        folder = Path(spec).expanduser().resolve()
        source = str(folder)
        name_hint = folder.name
        if not folder.is_dir():
            raise BackboneError(f"Backbone {folder} is a file: pass the backbone folder itself.")
    elif _HUB_ID.match(str(spec)):
        folder = _cached_snapshot(str(spec))
        source = name_hint = str(spec)
    else:
        raise BackboneError(
            f"Backbone {spec!r}: there is no such folder, and it is not a hub id of the form "
            "'org/name'. Pass 'default', an existing backbone folder or a cached hub id."
        )
    backbone = _load_folder(folder, source=source, name_hint=name_hint, dtype=dtype)
    return backbone.to(device)


def backbone_identity(folder: str | Path) -> str:
    """Identity ``name@<12 hex>`` of a backbone folder (see ``docs/backbone-format.md``).

    The hash is the SHA-256 of the weights files of its components (vae, unet, guide,
    ssl_embedder, ssl_encoder), sorted by relative path, each path (UTF-8, ``/``-separated) followed by the file's bytes.
    """
    folder = Path(folder)
    layout = _layout(folder)
    name = layout["meta"].get("name") or folder.name
    return f"{name}@{_weights_hash(folder, layout['components'])}"


def build_random_backbone(
    config: dict | str = "tiny", *, seed: int = 0, name: str | None = None
) -> Backbone:
    """A backbone with random weights, built from a configuration.

    Only for tests and for the random-weights control of benchmarks: a random backbone is never
    loaded implicitly.

    Parameters
    ----------
    config : {"tiny"} or dict
        ``"tiny"`` (a very small model for tests) or ``{"vae": {...}, "unet": {...},
        "guide": {...} or None, "scheduler": {...}, "meta": {...}}`` where each model config is
        a diffusers config whose optional ``"_class_name"`` picks the class (defaults:
        AutoencoderKL, UNet2DConditionModel, GuideEncoder, DDPMScheduler) and ``meta`` holds
        the keys of ``pathsegdiff_backbone.json``.
    seed : int
        Seed of the weights (the global torch RNG is left untouched).
    name : str, optional
        Name of the backbone; default ``meta["name"]`` or ``"random"``.
    """
    if isinstance(config, str):
        if config not in RANDOM_CONFIGS:
            raise ValueError(
                f"Unknown random backbone config {config!r}; use one of {sorted(RANDOM_CONFIGS)} or a dict."
            )
        label = config
        config = RANDOM_CONFIGS[config]
    else:
        label = "custom"
    missing = {"vae", "unet"} - set(config)
    if missing:
        raise ValueError(f"Random backbone config lacks {sorted(missing)}.")
    from .guide import GuideEncoder

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = _model_class(config["vae"], _AUTOENCODERS, "vae config").from_config(config["vae"])
        unet = _model_class(config["unet"], _UNETS, "unet config").from_config(config["unet"])
        guide = GuideEncoder.from_config(config["guide"]) if config.get("guide") else None
    sched_cfg = dict(config.get("scheduler") or {})
    sched_cls = _scheduler_class(sched_cfg.get("_class_name", "DDPMScheduler"), "scheduler config")
    scheduler = sched_cls.from_config(sched_cfg)
    meta = dict(config.get("meta") or {})
    meta["name"] = name or meta.get("name") or "random"
    backbone = _assemble(
        vae, unet, scheduler, guide, meta, source=f"random:{label}@seed{seed}", where="random config"
    )
    with tempfile.TemporaryDirectory() as tmp:
        backbone.save(tmp)  # the identity of exactly the bytes a save would write
    return backbone


RANDOM_CONFIGS: dict[str, dict] = {
    "tiny": {
        "vae": {
            "_class_name": "AutoencoderKL",
            "in_channels": 3,
            "out_channels": 3,
            "down_block_types": ["DownEncoderBlock2D"] * 3,
            "up_block_types": ["UpDecoderBlock2D"] * 3,
            "block_out_channels": [16, 32, 32],
            "layers_per_block": 1,
            "latent_channels": 4,
            "norm_num_groups": 8,
            "mid_block_add_attention": False,
            "sample_size": 64,
        },
        "unet": {
            "_class_name": "UNet2DConditionModel",
            "sample_size": 16,
            "in_channels": 4,
            "out_channels": 4,
            "block_out_channels": [16, 24, 32],
            "down_block_types": ["DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
            "layers_per_block": 1,
            "cross_attention_dim": 32,
            "attention_head_dim": 4,
            "norm_num_groups": 8,
        },
        "guide": {"widths": [8, 16], "embed_dim": 32, "norm_groups": 4},
        "scheduler": {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000},
        "meta": {
            "name": "random-tiny",
            "mpp": 0.5,
            "tile_size": 64,
            "default_timesteps": [50, 150],
            "default_blocks": [1, 2],
        },
    }
}


# --- loading -------------------------------------------------------------------------------


def _cached_snapshot(repo_id: str) -> Path:
    """The local folder of a hub repository already in the cache; never downloads."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as exc:  # noqa: BLE001 - every failure here means "not usable offline"
        raise BackboneError(
            f"Backbone {repo_id!r}: there is no folder of that name, and as a hub id it is not in "
            f"the local hub cache ({type(exc).__name__}); nothing is downloaded. On a machine "
            f"with internet run `huggingface-cli download {repo_id}` and copy its cache folder "
            "here (or set HF_HUB_CACHE to it), or pass the backbone folder itself."
        ) from exc


def _load_folder(folder: Path, *, source: str, name_hint: str, dtype: torch.dtype) -> Backbone:
    from .guide import GuideEncoder

    layout = _layout(folder)
    comps = layout["components"]
    vae = _load_model(folder / comps["vae"], _AUTOENCODERS, dtype)
    unet = _load_model(folder / comps["unet"], _UNETS, dtype)
    guide = None
    if "guide" in comps:
        guide = _load_model(folder / comps["guide"], ("GuideEncoder",), dtype, cls=GuideEncoder)
    scheduler = _load_scheduler(folder / comps["scheduler"])
    ssl = _load_ssl(folder, comps, dtype) if "ssl_embedder" in comps else None
    meta = dict(layout["meta"])
    meta.setdefault("name", name_hint)
    backbone = _assemble(vae, unet, scheduler, guide, meta, source=source, where=str(layout["meta_file"]), ssl=ssl)
    backbone.identity = f"{backbone.name}@{_weights_hash(folder, comps)}"
    return backbone


def _load_ssl(folder: Path, comps: dict[str, str], dtype: torch.dtype):
    """The SSL conditioning of a converted pathology LDM: embedder, and encoder when present."""
    from .ssl_conditioning import ConditioningEmbedder, SSLConditioning, SSLEncoderError, load_ssl_encoder

    embedder = _load_model(folder / comps["ssl_embedder"], ("ConditioningEmbedder",), dtype, cls=ConditioningEmbedder)
    encoder = None
    if "ssl_encoder" in comps:
        try:
            encoder = load_ssl_encoder(folder / comps["ssl_encoder"], dtype=dtype)
        except SSLEncoderError as exc:
            raise BackboneError(str(exc)) from exc
    try:
        return SSLConditioning(embedder, encoder)
    except SSLEncoderError as exc:
        raise BackboneError(f"Backbone {folder}: {exc}") from exc


def _layout(folder: Path) -> dict:
    """Component subfolders and metadata of a backbone folder; errors name what is missing."""
    meta_file = folder / META_FILE
    index_file = folder / PIPELINE_FILE
    if meta_file.is_file():
        meta = _read_json(meta_file)
        if meta.get("format") != FORMAT:
            raise BackboneError(
                f"{meta_file}: unsupported format {meta.get('format')!r}; this version reads format {FORMAT}."
            )
        comps = {"vae": "vae", "unet": "unet", "scheduler": "scheduler"}
        if (folder / "guide").exists() or meta.get("conditioning") == "guide":
            comps["guide"] = "guide"
        if meta.get("conditioning") == "ssl":
            comps["ssl_embedder"] = "ssl_embedder"
            if (folder / "ssl_encoder").exists():
                comps["ssl_encoder"] = "ssl_encoder"
    elif index_file.is_file():
        index = _read_json(index_file)
        meta_file = index_file
        meta = {}
        ae = next((k for k in ("vae", "vqvae") if k in index), None)
        if ae is None or "unet" not in index or "scheduler" not in index:
            raise BackboneError(
                f"{index_file}: a backbone needs an autoencoder ('vae' or 'vqvae'), a 'unet' and "
                f"a 'scheduler'; this pipeline lists {sorted(k for k in index if not k.startswith('_'))}."
            )
        comps = {"vae": ae, "unet": "unet", "scheduler": "scheduler"}
    else:
        raise BackboneError(
            f"{folder} is not a backbone folder: it has neither {META_FILE} nor {PIPELINE_FILE}. "
            "See docs/backbone-format.md for the layout."
        )
    for role, sub in comps.items():
        config = "scheduler_config.json" if role == "scheduler" else "config.json"
        if not (folder / sub / config).is_file():
            raise BackboneError(f"Backbone {folder}: missing {sub}/{config} (the {role} of the backbone).")
    return {"components": comps, "meta": meta, "meta_file": meta_file}


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BackboneError(f"{path}: not readable JSON ({exc}).") from exc
    if not isinstance(data, dict):
        raise BackboneError(f"{path}: expected a JSON object.")
    return data


def _weights_files(component: Path, weights: str = WEIGHTS) -> tuple[list[Path], str | None]:
    """The safetensors files of one component folder and the diffusers variant they are.

    ``weights`` is the file stem: diffusers' ``diffusion_pytorch_model``, or ``model`` for the
    transformers SSL encoder.
    """
    single = component / f"{weights}.safetensors"
    if single.is_file():
        return [single], None
    for variant in (None, "fp16", "bf16"):
        stem = weights if variant is None else f"{weights}.{variant}"
        index = component / f"{stem}.safetensors.index.json"
        if index.is_file():
            weight_map = _read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise BackboneError(f"{index}: no 'weight_map'.")
            shards = [component / name for name in sorted(set(weight_map.values()))]
            for shard in shards:
                if not shard.is_file():
                    raise BackboneError(f"{index} lists {shard.name}, which is missing.")
            return shards, variant
        if variant is not None and (component / f"{stem}.safetensors").is_file():
            return [component / f"{stem}.safetensors"], variant
    if any(component.glob("*.bin")) or any(component.glob("*.ckpt")) or any(component.glob("*.pt")):
        raise BackboneError(
            f"{component}: weights are only in a pickle format (.bin/.ckpt/.pt), which this program "
            f"never loads because unpickling can run code. Convert them to {weights}.safetensors."
        )
    raise BackboneError(f"{component}: missing weights file {weights}.safetensors.")


def _weights_hash(folder: Path, comps: dict[str, str]) -> str:
    files: list[Path] = []
    for role, sub in comps.items():
        if role != "scheduler":
            files += _weights_files(folder / sub, "model" if role == "ssl_encoder" else WEIGHTS)[0]
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.relative_to(folder).as_posix()):
        digest.update(path.relative_to(folder).as_posix().encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:12]


def _model_class(config: dict, allowed: tuple[str, ...], where: str, default: str | None = None):
    import diffusers

    name = config.get("_class_name", default or allowed[0])
    if name not in allowed:
        raise BackboneError(
            f"{where}: class {name!r} is not supported here; expected one of {list(allowed)}."
        )
    return getattr(diffusers, name)


def _load_model(component: Path, allowed: tuple[str, ...], dtype: torch.dtype, cls=None):
    """Load one diffusers model strictly: every tensor present, with the configured shape."""
    config_file = component / "config.json"
    config = _read_json(config_file)
    if cls is None:
        cls = _model_class(config, allowed, str(config_file), default="")
    elif config.get("_class_name") != cls.__name__:
        raise BackboneError(f"{config_file}: class {config.get('_class_name')!r}, expected {cls.__name__!r}.")
    files, variant = _weights_files(component)
    try:
        with _quiet_diffusers():  # its "newly initialized" warnings are turned into errors below
            model, info = cls.from_pretrained(
                component,
                use_safetensors=True,
                variant=variant,
                local_files_only=True,
                low_cpu_mem_usage=False,  # never leave missing tensors on the meta device
                ignore_mismatched_sizes=False,
                output_loading_info=True,
                torch_dtype=dtype,
            )
    except Exception as exc:  # noqa: BLE001 - whatever diffusers raises, the file is the cause
        names = ", ".join(str(f) for f in files)
        raise BackboneError(
            f"{names}: cannot load the weights of {cls.__name__} with {config_file.name} "
            f"({type(exc).__name__}: {_first_line(exc)}). The file may be truncated or corrupt, or "
            "not match its config."
        ) from exc
    names = ", ".join(str(f) for f in files)
    problems = {"missing_keys": "lacks", "unexpected_keys": "has unknown", "mismatched_keys": "has mis-shaped"}
    for key, what in problems.items():
        bad = sorted(str(b[0] if isinstance(b, tuple) else b) for b in info.get(key) or [])
        if bad:
            shown = ", ".join(bad[:5]) + (", ..." if len(bad) > 5 else "")
            raise BackboneError(
                f"{names} {what} tensors for {cls.__name__} ({len(bad)}: {shown}); "
                "the weights do not match config.json."
            )
    if info.get("error_msgs"):
        raise BackboneError(f"{names}: {info['error_msgs'][0]}")
    return model.eval().requires_grad_(False)


@contextlib.contextmanager
def _quiet_diffusers():
    from diffusers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def _scheduler_class(name: str, where: str):
    import diffusers

    cls = getattr(diffusers, name, None)
    if cls is None or not issubclass(cls, diffusers.SchedulerMixin):
        raise BackboneError(f"{where}: {name!r} is not a diffusers scheduler.")
    return cls


def _load_scheduler(component: Path):
    config_file = component / "scheduler_config.json"
    config = _read_json(config_file)
    cls = _scheduler_class(str(config.get("_class_name")), str(config_file))
    try:
        scheduler = cls.from_config(config)
    except Exception as exc:  # noqa: BLE001
        raise BackboneError(f"{config_file}: cannot build {cls.__name__} ({_first_line(exc)}).") from exc
    if getattr(scheduler, "alphas_cumprod", None) is None:
        raise BackboneError(f"{config_file}: {cls.__name__} has no beta schedule (alphas_cumprod).")
    return scheduler


def _first_line(exc: BaseException, limit: int = 300) -> str:
    """The message of an exception on one line, shortened to ``limit`` characters."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- checks shared by loading and building --------------------------------------------------


def _assemble(vae, unet, scheduler, guide, meta: dict, *, source: str, where: str, ssl=None) -> Backbone:
    """Check that the parts fit together and fill defaults from the UNet."""
    unet_cls = type(unet).__name__
    cond_unet = unet_cls == "UNet2DConditionModel"
    cfg = unet.config
    if cond_unet and (cfg.get("class_embed_type") or cfg.get("addition_embed_type")):
        raise BackboneError(f"{where}: UNets with class or added embeddings (e.g. SDXL) are not supported.")
    if not cond_unet and (cfg.get("class_embed_type") or cfg.get("num_class_embeds")):
        raise BackboneError(f"{where}: class-conditional UNets are not supported.")
    if cfg.in_channels != vae.config.latent_channels:
        raise BackboneError(
            f"{where}: the UNet takes {cfg.in_channels} channels but the autoencoder makes "
            f"{vae.config.latent_channels}-channel latents."
        )
    declared = meta.get("conditioning")
    if guide is not None:
        if not cond_unet:
            raise BackboneError(f"{where}: a guide needs a cross-attention UNet, this one is {unet_cls}.")
        if context_dim(unet) != guide.config.embed_dim:
            raise BackboneError(
                f"{where}: the guide embeds into {guide.config.embed_dim} values but the UNet "
                f"cross-attends to {context_dim(unet)}."
            )
        conditioning = "guide"
    elif declared == "guide":
        raise BackboneError(f"{where}: conditioning is 'guide' but there is no guide/ folder.")
    elif ssl is not None:
        if not cond_unet or context_dim(unet) != ssl.embedder.config.context_dim:
            raise BackboneError(
                f"{where}: the SSL embedder makes {ssl.embedder.config.context_dim}-wide tokens but "
                f"the UNet ({unet_cls}) cross-attends to {context_dim(unet)}."
            )
        conditioning = "ssl"
    else:
        conditioning = "text-null" if cond_unet else "none"
    if declared not in (None, "guide", "ssl", "none"):
        raise BackboneError(f"{where}: conditioning must be 'guide', 'ssl' or 'none', got {declared!r}.")

    n_up = len(unet.up_blocks)
    n_t = int(scheduler.config.num_train_timesteps)
    blocks = meta.get("default_blocks") or (list(range(1, n_up)) if n_up > 1 else [0])
    timesteps = meta.get("default_timesteps") or [t for t in (50, 150) if t < n_t] or [0]
    if not all(isinstance(b, int) and 0 <= b < n_up for b in blocks):
        raise BackboneError(
            f"{where}: default_blocks {blocks} must be indices of the UNet's {n_up} up blocks."
        )
    if not all(isinstance(t, int) and 0 <= t < n_t for t in timesteps):
        raise BackboneError(f"{where}: default_timesteps {timesteps} must lie in [0, {n_t}).")
    mpp = meta.get("mpp")
    if mpp is not None and not (isinstance(mpp, (int, float)) and mpp > 0):
        raise BackboneError(f"{where}: mpp must be a positive number or null, got {mpp!r}.")
    tile_size = meta.get("tile_size", 256)
    if not (isinstance(tile_size, int) and tile_size > 0):
        raise BackboneError(f"{where}: tile_size must be a positive integer, got {tile_size!r}.")
    return Backbone(
        vae=vae.eval().requires_grad_(False),
        unet=unet.eval().requires_grad_(False),
        scheduler=scheduler,
        guide=None if guide is None else guide.eval().requires_grad_(False),
        name=str(meta.get("name") or "backbone"),
        mpp=None if mpp is None else float(mpp),
        tile_size=tile_size,
        conditioning=conditioning,
        default_timesteps=sorted(set(timesteps)),
        default_blocks=sorted(set(blocks)),
        identity="",
        source=source,
        ssl=ssl,
    )


def context_dim(unet) -> int | None:
    """Width of the cross-attention context a UNet expects (``None`` for a UNet2DModel)."""
    cfg = unet.config
    if type(unet).__name__ != "UNet2DConditionModel":
        return None
    dim = cfg.get("encoder_hid_dim") or cfg.cross_attention_dim
    if isinstance(dim, (list, tuple)):
        dim = dim[0]
    return int(dim)


def random_config(name: str = "tiny") -> dict:
    """A deep copy of a named random-backbone config (to modify in tests and benchmarks)."""
    return copy.deepcopy(RANDOM_CONFIGS[name])
