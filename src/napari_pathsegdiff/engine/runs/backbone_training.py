"""Training a backbone in three stages from unlabelled H&E, with exact resume.

1. **guide** — the :class:`~napari_pathsegdiff.models.guide.GuideEncoder` learns a tile
   embedding by contrastive self-supervision (SimCLR: two strongly augmented views of each tile,
   NT-Xent loss through a small projection head that is not part of the backbone). SimCLR needs
   no momentum encoder and no collapse-avoiding tricks, and trains stably with the small batches
   of a CPU.
2. **vae** — the ``AutoencoderKL`` learns to reconstruct random crops (L1 on pixels and on
   image gradients, which keeps nuclear edges sharp, plus a weak KL term). At the end its
   ``scaling_factor`` is set to one over the standard deviation of the latents of the pool.
3. **unet** — the ``UNet2DConditionModel`` learns epsilon prediction on the latents of the
   frozen autoencoder, with the frozen guide's tokens of the tile as cross-attention context,
   replaced by zeros for 10 % of the tiles (condition dropout) so that zeros give the
   unconditional model. Latents and contexts of the pool are computed once per stage. The
   exported UNet is an exponential moving average of the weights.

Everything a step draws (tiles, crops, augmentations, noise, timesteps, dropout) comes from
generators seeded by ``(seed, stage, step)``, so a checkpoint holds only weights, optimizer
state and the step number: a resumed run takes exactly the steps an uninterrupted one would.

Run folder::

    run.json                    settings, architecture and data of the run
    pool-<key>.npz              the pre-extracted tissue tiles (uint8)
    latents-<key>.safetensors   latents and guide contexts of the pool (unet stage)
    checkpoints/<stage>/        model/ (config.json + safetensors), head/ or ema/,
                                optimizer.safetensors, state.json
    losses.jsonl                one line per step: stage, step, loss, lr, seconds
    backbone/                   the exported backbone (docs/backbone-format.md)

Nothing is ever unpickled: weights and optimizer tensors are safetensors, the rest JSON.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ...core.atomic import replace_folder
from ...core.progress import Progress, Work
from ...models.backbone_configs import get_config
from ...models.device import autocast, resolve_device
from . import augment
from .backbone_data import TilePool, batch_indices, build_pool, find_sources, step_seed
from .run_folder import (
    check_resume,
    flatten_optimizer,
    open_checkpoints,
    read_state,
    restore_optimizer,
    save_checkpoint,
    trim_log,
    write_json,
)

STAGES = ("guide", "vae", "unet")
RUN_FILE = "run.json"
LOSS_FILE = "losses.jsonl"
RUN_VERSION = 1


@dataclass
class TrainSettings:
    """Hyper-parameters of a backbone training run (defaults: :data:`DEFAULT_SETTINGS`)."""

    steps_guide: int = 1500
    steps_vae: int = 2500
    steps_unet: int = 200_000
    batch_guide: int = 32
    batch_vae: int = 8
    batch_unet: int = 8
    crop_guide: int = 128
    crop_vae: int = 96
    lr_guide: float = 1e-3
    lr_vae: float = 5e-4
    lr_unet: float = 2e-4
    weight_decay: float = 1e-4
    warmup: int = 200
    temperature: float = 0.2
    projection_dim: int = 128
    edge_weight: float = 0.5
    kl_weight: float = 1e-6
    cond_dropout: float = 0.1
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    checkpoint_every: int = 200
    pool_tiles: int = 2048
    min_tissue: float = 0.5
    seed: int = 0

    def steps(self, stage: str) -> int:
        return int(getattr(self, f"steps_{stage}"))


DEFAULT_SETTINGS: dict[str, dict[str, Any]] = {
    "small": {},
    "tiny": {
        "steps_guide": 3, "steps_vae": 3, "steps_unet": 3, "batch_guide": 4, "batch_vae": 2,
        "batch_unet": 2, "crop_guide": 16, "crop_vae": 16, "warmup": 2, "checkpoint_every": 2,
        "pool_tiles": 16, "projection_dim": 8, "ema_decay": 0.9,
    },
}


def make_settings(config: str, **overrides: Any) -> TrainSettings:
    """Settings of a named configuration with ``overrides`` (``None`` values are ignored)."""
    get_config(config)  # checks the name
    values = dict(DEFAULT_SETTINGS.get(config, {}))
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(values) - set(TrainSettings.__dataclass_fields__)
    if unknown:
        raise ValueError(f"Unknown training settings: {', '.join(sorted(unknown))}.")
    settings = TrainSettings(**values)
    for stage in STAGES:
        if settings.steps(stage) < 0:
            raise ValueError(f"--steps-{stage} must be 0 or more, got {settings.steps(stage)}.")
    return settings


# --- the whole run ------------------------------------------------------------------------


def train_backbone(
    data: Sequence[str | Path],
    out: str | Path,
    *,
    config: str = "small",
    settings: TrainSettings | None = None,
    resume: bool = False,
    device: str = "auto",
    exclude: Sequence[str] = (),
    mpp_map: Sequence[tuple[str, float]] = (),
    default_mpp: float = 0.5,
    export: bool = True,
    should_stop: Callable[[], bool] | None = None,
) -> Work[Path | None]:
    """Train (or continue training) a backbone; a generator of :class:`Progress` records.

    Parameters
    ----------
    data : sequence of path
        Images, slides and folders of them (see :func:`.backbone_data.find_sources`).
    out : path
        The run folder (checkpoints, logs, the pool, the exported backbone).
    config : str
        Architecture name (``"small"`` or ``"tiny"``, :mod:`..models.backbone_configs`).
    settings : TrainSettings, optional
        Hyper-parameters and step budgets; default :func:`make_settings` of ``config``.
    resume : bool
        Continue the run in ``out`` from its checkpoints (a fresh start when ``out`` holds
        no run). Without it, a folder that already holds a run is refused.
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda"`` (bf16 autocast on CUDA).
    exclude, mpp_map, default_mpp
        Passed to :func:`.backbone_data.find_sources`.
    export : bool
        Write ``out/backbone`` when every stage has reached its budget.
    should_stop : callable, optional
        Polled after every step; when it returns true the run checkpoints and returns
        ``None`` (the CLI sets it from SIGINT / SIGTERM).

    Returns
    -------
    Path or None
        The exported backbone folder, or ``None`` when stopped early or ``export`` is false.

    Raises
    ------
    ValueError
        For data without readable tissue, a folder holding another run, or a change of
        settings that a resume cannot honour.
    """
    out = Path(out).expanduser()
    settings = settings or make_settings(config)
    arch = get_config(config)
    dev = resolve_device(device)
    sources = find_sources(data, exclude=exclude, mpp_map=mpp_map, default_mpp=default_mpp)
    tile = int(arch["meta"]["tile_size"])
    pool = yield from build_pool(
        sources, n_tiles=settings.pool_tiles, tile_size=tile, mpp=float(arch["meta"]["mpp"]),
        seed=settings.seed, min_tissue=settings.min_tissue, cache_dir=out,
    )
    run = _open_run(out, config=config, arch=arch, settings=settings, pool=pool, resume=resume, device=dev)
    stop = should_stop or (lambda: False)
    for stage in STAGES:
        finished = yield from _run_stage(stage, run, pool, dev, stop)
        if not finished:
            return None
    if not export:
        return None
    yield Progress("export", 0, 1, "writing the backbone folder")
    folder = export_backbone(out, out / "backbone")
    yield Progress("export", 1, 1, f"backbone written to {folder}")
    return folder


@dataclass
class _Run:
    folder: Path
    config: str
    arch: dict
    settings: TrainSettings
    meta: dict = field(default_factory=dict)


def _open_run(out: Path, *, config, arch, settings: TrainSettings, pool: TilePool, resume: bool, device) -> _Run:
    run_file = out / RUN_FILE
    identity = {
        "version": RUN_VERSION,
        "config": config,
        "models": {k: v for k, v in arch.items() if k != "meta"},  # meta may be retuned later
        "seed": settings.seed,
        "pool_key": pool.key,
        "pool_tiles": settings.pool_tiles,
    }
    check_resume(run_file, identity, resume=resume, what="training run")
    open_checkpoints([out / "checkpoints" / s for s in STAGES])
    progress = {s: _checkpoint_state(out, s).get("step", 0) for s in STAGES}
    kept = {}
    for i, stage in enumerate(STAGES):
        # a stage that later stages were built on is never trained further
        if any(progress[s] > 0 for s in STAGES[i + 1 :]) and settings.steps(stage) != progress[stage]:
            kept[stage] = progress[stage]
    if kept:
        settings = TrainSettings(**{**asdict(settings), **{f"steps_{k}": v for k, v in kept.items()}})
    run = _Run(out, config, arch, settings)
    record = dict(identity)
    record.update({
        "architecture": arch,
        "settings": asdict(settings),
        "device": str(device),
        "data": pool.sources,
        "skipped": pool.skipped,
        "mpp": pool.mpp,
        "kept_budgets": kept,
    })
    out.mkdir(parents=True, exist_ok=True)
    write_json(run_file, record)
    trim_log(out / LOSS_FILE, lambda rec: rec.get("step", 0) <= progress.get(rec.get("stage"), 0))
    run.meta = record
    return run


# --- one stage ----------------------------------------------------------------------------


class _Stage:
    """Models, optimizer and step function of one stage."""

    def __init__(self, stage: str, run: _Run, pool: TilePool, device: torch.device):
        self.stage, self.run, self.pool, self.device = stage, run, pool, device
        s = run.settings
        self.extra: dict[str, torch.nn.Module] = {}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(step_seed(s.seed, stage, 2**31 - 1))  # initial weights
            self.model = _build(stage, run.arch)
            if stage == "guide":
                dim = run.arch["guide"]["embed_dim"]
                self.extra["head"] = torch.nn.Sequential(
                    torch.nn.Linear(dim, dim), torch.nn.SiLU(), torch.nn.Linear(dim, s.projection_dim)
                )
        if stage == "unet":
            self.extra["ema"] = copy.deepcopy(self.model).requires_grad_(False)
            self._prepare_unet()
        self.model.to(device).train()
        for m in self.extra.values():
            m.to(device)
        params = [p for m in [self.model, self.extra.get("head")] if m is not None for p in m.parameters()]
        self.params = params
        self.optimizer = torch.optim.AdamW(params, lr=self.base_lr, weight_decay=s.weight_decay)

    @property
    def base_lr(self) -> float:
        return float(getattr(self.run.settings, f"lr_{self.stage}"))

    def lr(self, step: int) -> float:
        """Linear warm-up, then cosine decay to 10 % over the budget (guide, vae) or constant (unet)."""
        s = self.run.settings
        warm = min(1.0, (step + 1) / max(1, s.warmup))
        if self.stage == "unet":
            return self.base_lr * warm
        progress = min(1.0, step / max(1, s.steps(self.stage)))
        return self.base_lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    # --- stage inputs -------------------------------------------------------------------
    def _tiles(self, idx: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(self.pool.tiles[idx]).permute(0, 3, 1, 2).float() / 255.0
        return x

    def _prepare_unet(self) -> None:
        self.scheduler = _scheduler(self.run.arch)
        self.latents, self.contexts = None, None  # filled by prepare() (it yields progress)

    def prepare(self) -> Work[None]:
        """Stage inputs that need a loop (the unet stage's latents and contexts)."""
        if self.stage != "unet":
            return None
        self.latents, self.contexts = yield from _pool_latents(self.run, self.pool, self.device)
        return None

    # --- one step -----------------------------------------------------------------------
    def step(self, step: int) -> dict[str, float]:
        s = self.run.settings
        gen = torch.Generator().manual_seed(step_seed(s.seed, self.stage, step))
        batch = getattr(s, f"batch_{self.stage}")
        idx = batch_indices(len(self.pool), batch, seed=s.seed, stage=self.stage, step=step)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr(step)
        with autocast(self.device):
            loss, metrics = getattr(self, f"_loss_{self.stage}")(idx, gen)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.params, s.grad_clip)
        self.optimizer.step()
        if "ema" in self.extra:
            decay = min(s.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for pe, p in zip(self.extra["ema"].parameters(), self.model.parameters()):
                    pe.lerp_(p, 1 - decay)
        metrics = {"loss": float(loss.detach()), **metrics, "grad_norm": float(norm), "lr": self.lr(step)}
        return metrics

    def _loss_guide(self, idx, gen):
        s = self.run.settings
        x = self._tiles(idx)
        views = torch.cat([augment.ssl_view(x, gen, crop=s.crop_guide), augment.ssl_view(x, gen, crop=s.crop_guide)])
        z = self.extra["head"](self.model(views.to(self.device) * 2 - 1))
        loss, acc = nt_xent(z.float(), s.temperature)
        return loss, {"top1": acc}

    def _loss_vae(self, idx, gen):
        s = self.run.settings
        x = augment.flip_rot90(augment.random_crop(self._tiles(idx), s.crop_vae, gen), gen)
        x = x.to(self.device) * 2 - 1
        post = self.model.encode(x).latent_dist
        eps = torch.randn(post.mean.shape, generator=gen).to(self.device, post.mean.dtype)
        rec = self.model.decode(post.mean + post.std * eps).sample.float()
        l1 = (rec - x).abs().mean()
        edge = _edge_l1(rec, x)
        kl = post.kl().float().mean()
        loss = l1 + s.edge_weight * edge + s.kl_weight * kl
        return loss, {"l1": float(l1.detach()), "edge": float(edge.detach()), "kl": float(kl.detach())}

    def _loss_unet(self, idx, gen):
        s = self.run.settings
        mean, std = self.latents
        index = torch.from_numpy(np.asarray(idx))
        eps = torch.randn((len(idx), *mean.shape[1:]), generator=gen)
        z = mean[index] + std[index] * eps
        ctx = self.contexts[index]
        z, ctx = augment.flip_rot90(z, gen, tokens=ctx)
        keep = (torch.rand(len(idx), generator=gen) >= s.cond_dropout).float().view(-1, 1, 1)
        ctx = ctx * keep
        noise = torch.randn(z.shape, generator=gen)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (len(idx),), generator=gen)
        zt = self.scheduler.add_noise(z, noise, t)
        pred = self.model(zt.to(self.device), t.to(self.device), encoder_hidden_states=ctx.to(self.device)).sample
        loss = F.mse_loss(pred.float(), noise.to(self.device))
        return loss, {"dropped": float(1 - keep.mean())}

    # --- checkpoints --------------------------------------------------------------------
    def save(self, step: int, *, wall_s: float, finished: bool, last: dict[str, float]) -> None:
        tensors, opt_meta = flatten_optimizer(self.optimizer)
        state = {
            "stage": self.stage, "step": step, "budget": self.run.settings.steps(self.stage),
            "finished": finished, "wall_s": wall_s, "last": last, "optimizer": opt_meta,
            "torch": torch.__version__,
        }

        def write(tmp: Path) -> None:
            self.model.save_pretrained(tmp / "model", safe_serialization=True)
            for name, module in self.extra.items():
                if isinstance(module, torch.nn.Sequential):
                    weights = {k: v.contiguous() for k, v in module.state_dict().items()}
                    save_file(weights, str(tmp / f"{name}.safetensors"))
                else:
                    module.save_pretrained(tmp / name, safe_serialization=True)
            save_file(tensors, str(tmp / "optimizer.safetensors"))

        save_checkpoint(self.run.folder / "checkpoints" / self.stage, write, state)

    def load(self) -> dict:
        folder = self.run.folder / "checkpoints" / self.stage
        state = json.loads((folder / "state.json").read_text())
        _load_weights(self.model, folder / "model")
        for name, module in self.extra.items():
            if isinstance(module, torch.nn.Sequential):
                module.load_state_dict(load_file(str(folder / f"{name}.safetensors")))
            else:
                _load_weights(module, folder / name)
        if self.stage == "vae":
            self.model.register_to_config(**_config_updates(folder / "model"))
        restore_optimizer(self.optimizer, load_file(str(folder / "optimizer.safetensors")), state["optimizer"])
        return state


def _run_stage(stage: str, run: _Run, pool: TilePool, device, stop) -> Work[bool]:
    """Train one stage up to its budget; returns False when stopped early."""
    budget = run.settings.steps(stage)
    state = _checkpoint_state(run.folder, stage)
    if budget == 0 and not state:
        return True
    if state.get("finished") and state.get("step") == budget:
        yield Progress(stage, budget, budget, f"{stage}: done ({budget} steps)")
        return True
    trainer = _Stage(stage, run, pool, device)
    step, wall = 0, 0.0
    if state:
        state = trainer.load()
        step, wall = int(state["step"]), float(state["wall_s"])
    if step >= budget and state:
        trainer.save(step, wall_s=wall, finished=True, last=state.get("last", {}))
        return True
    yield from trainer.prepare()
    every = max(1, run.settings.checkpoint_every)
    last: dict[str, float] = {}
    log = open(run.folder / LOSS_FILE, "a")
    try:
        while step < budget:
            t0 = time.perf_counter()
            last = trainer.step(step)
            step += 1
            wall += time.perf_counter() - t0
            log.write(json.dumps({"stage": stage, "step": step, **last, "wall_s": round(wall, 3)}) + "\n")
            log.flush()
            if stage == "vae" and step == budget:
                trainer.model.register_to_config(scaling_factor=_latent_scale(trainer, pool))
            if step % every == 0 or step == budget:
                trainer.save(step, wall_s=wall, finished=step == budget, last=last)
            if stop() and step < budget:
                trainer.save(step, wall_s=wall, finished=False, last=last)
                yield Progress(stage, step, budget, f"{stage}: stopped at step {step}", {"loss": last["loss"]})
                return False
            yield Progress(stage, step, budget, f"{stage} step {step}", {"loss": last["loss"]})
    except GeneratorExit:
        trainer.save(step, wall_s=wall, finished=step == budget, last=last)
        raise
    finally:
        log.close()
    return True


# --- the pieces ---------------------------------------------------------------------------


def nt_xent(z: torch.Tensor, temperature: float) -> tuple[torch.Tensor, float]:
    """SimCLR's normalized temperature-scaled cross entropy of ``2B`` projections, where
    rows ``i`` and ``i + B`` are two views of one tile; also the top-1 accuracy of finding
    the partner view."""
    z = F.normalize(z, dim=1)
    n = z.shape[0] // 2
    sim = z @ z.t() / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    loss = F.cross_entropy(sim, target)
    acc = float((sim.argmax(dim=1) == target).float().mean())
    return loss, acc


def _edge_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    dy = lambda x: x[..., 1:, :] - x[..., :-1, :]  # noqa: E731
    dx = lambda x: x[..., :, 1:] - x[..., :, :-1]  # noqa: E731
    return (dy(a) - dy(b)).abs().mean() + (dx(a) - dx(b)).abs().mean()


def _build(stage: str, arch: dict) -> torch.nn.Module:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from ...models.guide import GuideEncoder

    cls = {"guide": GuideEncoder, "vae": AutoencoderKL, "unet": UNet2DConditionModel}[stage]
    return cls.from_config(arch[stage])


def _scheduler(arch: dict):
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(arch["scheduler"])


def _load_weights(model: torch.nn.Module, folder: Path) -> None:
    weights = folder / "diffusion_pytorch_model.safetensors"
    if not weights.exists():
        raise ValueError(f"{weights}: checkpoint weights are missing; the run folder is incomplete.")
    model.load_state_dict(load_file(str(weights)))


def _config_updates(folder: Path) -> dict:
    cfg = json.loads((folder / "config.json").read_text())
    return {"scaling_factor": cfg.get("scaling_factor", 1.0)}


def _frozen(stage: str, run: _Run, device) -> torch.nn.Module:
    folder = run.folder / "checkpoints" / stage / "model"
    model = _build(stage, run.arch)
    _load_weights(model, folder)
    if stage == "vae":
        model.register_to_config(**_config_updates(folder))
    return model.to(device).eval().requires_grad_(False)


@torch.no_grad()
def _latent_scale(trainer: _Stage, pool: TilePool, n: int = 256) -> float:
    """One over the standard deviation of posterior samples of up to ``n`` pool tiles."""
    vae = trainer.model.eval()
    gen = torch.Generator().manual_seed(step_seed(trainer.run.settings.seed, "latents", 0))
    idx = np.arange(min(n, len(pool)))
    zs = []
    for chunk in np.array_split(idx, max(1, len(idx) // 8)):
        x = trainer._tiles(chunk).to(trainer.device) * 2 - 1
        with autocast(trainer.device):
            post = vae.encode(x).latent_dist
        eps = torch.randn(post.mean.shape, generator=gen).to(post.mean)
        zs.append((post.mean + post.std * eps).float().cpu())
    vae.train()
    return float(1.0 / torch.cat(zs).std().clamp_min(1e-6))


def _pool_latents(run: _Run, pool: TilePool, device) -> Work[tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """Scaled posterior mean and std of every pool tile, and the guide's context of each;
    computed once and cached in the run folder, keyed by the weights they came from."""
    import hashlib

    h = hashlib.sha256(pool.key.encode())
    for stage in ("vae", "guide"):
        h.update((run.folder / "checkpoints" / stage / "model" / "diffusion_pytorch_model.safetensors").read_bytes())
    cache = run.folder / f"latents-{h.hexdigest()[:12]}.safetensors"
    if cache.exists():
        t = load_file(str(cache))
        yield Progress("latents", len(pool), len(pool), "latents loaded")
        return (t["mean"], t["std"]), t["context"]
    for old in run.folder.glob("latents-*.safetensors"):
        old.unlink()
    vae, guide = _frozen("vae", run, device), _frozen("guide", run, device)
    scale = float(vae.config.scaling_factor)
    means, stds, ctxs = [], [], []
    chunks = np.array_split(np.arange(len(pool)), max(1, math.ceil(len(pool) / 8)))
    done = 0
    with torch.no_grad():
        for chunk in chunks:
            x = torch.from_numpy(pool.tiles[chunk]).permute(0, 3, 1, 2).float().to(device) / 127.5 - 1
            with autocast(device):
                post = vae.encode(x).latent_dist
                ctx = guide.context(x)
            means.append((post.mean.float() * scale).cpu())
            stds.append((post.std.float() * scale).cpu())
            ctxs.append(ctx.float().cpu())
            done += len(chunk)
            yield Progress("latents", done, len(pool), "encoding the pool")
    out = {k: torch.cat(v).contiguous() for k, v in (("mean", means), ("std", stds), ("context", ctxs))}
    save_file(out, str(cache))
    return (out["mean"], out["std"]), out["context"]


def _checkpoint_state(folder: Path, stage: str) -> dict:
    return read_state(Path(folder) / "checkpoints" / stage)


# --- export -------------------------------------------------------------------------------


def export_backbone(run: str | Path, out: str | Path, *, dtype: str = "float16",
                    timesteps: list[int] | None = None, blocks: list[int] | None = None) -> Path:
    """Write the backbone folder (``docs/backbone-format.md``) from a run's latest checkpoints.

    Works at any moment of a run once every stage has written a checkpoint, so a partly
    trained backbone can be benchmarked. The UNet is the moving average of its weights.

    Parameters
    ----------
    run : path
        The run folder given to ``backbone train --out``.
    out : path
        Destination folder (replaced).
    dtype : {"float16", "float32"}
        Precision of the written weights.
    timesteps, blocks : list of int, optional
        Default timesteps and UNet up blocks of the backbone's diffusion features, written to
        ``pathsegdiff_backbone.json`` (chosen by measurement, ``scripts/sweep_diffusion_features.py``);
        by default those of the architecture.

    Raises
    ------
    ValueError
        When the run folder has no run or a stage has no checkpoint yet, or a timestep or block
        is out of range.
    """
    from ._model_card import write_model_card

    run, out = Path(run).expanduser(), Path(out).expanduser()
    if not (run / RUN_FILE).exists():
        raise ValueError(f"{run} holds no backbone training run ({RUN_FILE} is missing).")
    if dtype not in ("float16", "float32"):
        raise ValueError(f"dtype must be 'float16' or 'float32', got {dtype!r}.")
    record = json.loads((run / RUN_FILE).read_text())
    arch = record["architecture"]
    states = {}
    for stage in STAGES:
        states[stage] = _checkpoint_state(run, stage)
        if not states[stage]:
            raise ValueError(
                f"{run}: stage '{stage}' has no checkpoint yet; export once every stage has "
                "checkpointed (the log shows the progress)."
            )
    fake = _Run(run, record["config"], arch, TrainSettings(**record["settings"]))
    torch_dtype = getattr(torch, dtype)

    def write(tmp: Path) -> None:
        models = {"guide": _frozen("guide", fake, "cpu"), "vae": _frozen("vae", fake, "cpu")}
        unet = _build("unet", arch)
        ema = run / "checkpoints" / "unet" / "ema"
        _load_weights(unet, ema if ema.exists() else run / "checkpoints" / "unet" / "model")
        models["unet"] = unet
        for name, model in models.items():
            model.to(torch_dtype).save_pretrained(tmp / name, safe_serialization=True)
        _scheduler(arch).save_pretrained(tmp / "scheduler")
        meta = dict(arch["meta"])
        n_t, n_up = int(_scheduler(arch).config.num_train_timesteps), len(unet.up_blocks)
        for key, values, top in (("default_timesteps", timesteps, n_t), ("default_blocks", blocks, n_up)):
            if values:
                if not all(0 <= int(v) < top for v in values):
                    raise ValueError(f"{key[8:]} {list(values)}: each must be in 0..{top - 1}.")
                meta[key] = sorted({int(v) for v in values})
        write_json(tmp / "pathsegdiff_backbone.json", meta)
        card_record = {**record, "architecture": {**arch, "meta": meta}}
        write_model_card(tmp, record=card_record, states=states, log=run / LOSS_FILE, models=models, dtype=dtype)

    replace_folder(out, write)
    return out
