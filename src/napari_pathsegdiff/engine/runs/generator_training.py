"""Training the style generator from labelled images, their masks and unlabelled style sources.

What a training sample is:

- a **labelled** tile: a crop of a labelled image (resampled to the backbone's µm/px), its
  mask as the layout, and ``K`` style tiles (``K`` drawn in ``1..style_k`` at each step);
- an **unlabelled** tile (a share ``unlabelled_fraction`` of each batch, when ``--style``
  sources are given): a tissue tile of an unlabelled image or slide, with an empty layout (all
  class channels zero) and style tiles of the same source, so the unlabelled stains and
  scanners are learnt too.

Where the style tiles come from is the comparison of the paper (``style_mode``):
``"nearby"`` crops of the same image or slide within ``nearby`` pixels of the target;
``"same"`` crops of the target tile itself; ``"augment"`` crops of the target under stain and
colour jitter; ``"other"`` crops of other images or slides (style then says little about the
target: the control). Every style crop is flipped and rotated at random.

The frozen autoencoder encodes every training tile once (cached in the run folder). Each step
draws its tiles, crops, flips, noise, timesteps and style dropout from generators seeded by
``(seed, step)``; a checkpoint holds weights, the moving average, optimizer state and the step,
so a resumed run takes exactly the steps an uninterrupted one would. Checkpoints are
safetensors and JSON, never pickles.

Run folder::

    run.json                  settings, classes, data and backbone of the run
    pool-<key>.npz            unlabelled tissue tiles (when --style is given)
    latents-<key>.safetensors latents of the labelled and unlabelled tiles
    checkpoints/              model/, ema/, optimizer.safetensors, state.json
    losses.jsonl              one line per step
    generator/                the exported generator (EMA weights) with MODEL_CARD.md
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ...core.atomic import replace_folder
from ...core.hashing import file_sha256 as _sha256
from ...core.images import check_same_shape, pair_images_and_masks, read_mask, read_rgb
from ...core.progress import Progress, Work
from ...models.device import autocast, resolve_device
from ...models.generator import UNET_CONFIGS, StyleGenerator, build_generator, save_generator
from . import augment
from .generation import style_pool
from .backbone_data import TilePool
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

RUN_FILE = "run.json"
LOSS_FILE = "losses.jsonl"
RUN_VERSION = 1
STYLE_MODES = ("nearby", "same", "augment", "other")


@dataclass
class GeneratorSettings:
    """Hyper-parameters of a generator run (defaults per architecture: :data:`DEFAULTS`)."""

    config: str = "small"
    steps: int = 20_000
    batch: int = 8
    lr: float = 2e-4
    weight_decay: float = 1e-4
    warmup: int = 200
    aggregation: str = "mean"
    style_mode: str = "nearby"
    style_k: int = 3
    style_size: int = 128
    style_dropout: float = 0.1
    unlabelled_fraction: float = 0.25
    nearby: int = 512
    tile_size: int | None = None
    images_mpp: float | None = None
    pair_tiles: int = 1024
    style_tiles: int = 1024
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    checkpoint_every: int = 200
    seed: int = 0


DEFAULTS: dict[str, dict[str, Any]] = {
    "small": {},
    "tiny": {"config": "tiny", "steps": 4, "batch": 2, "warmup": 2, "style_size": 16, "nearby": 32,
             "pair_tiles": 8, "style_tiles": 8, "checkpoint_every": 2, "ema_decay": 0.9},
}
#: Settings that may change when a run is resumed (budgets and logging).
RESUMABLE = ("steps", "checkpoint_every")


def make_settings(config: str = "small", **overrides: Any) -> GeneratorSettings:
    """Settings of an architecture (``"small"`` or ``"tiny"``) with ``overrides`` (``None`` ignored).

    Raises
    ------
    ValueError
        For an unknown architecture, setting, style mode or aggregation, or a value out of range.
    """
    if config not in UNET_CONFIGS:
        raise ValueError(f"Unknown generator architecture {config!r}: choose one of {', '.join(UNET_CONFIGS)}.")
    values = {"config": config, **DEFAULTS.get(config, {})}
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(values) - set(GeneratorSettings.__dataclass_fields__)
    if unknown:
        raise ValueError(f"Unknown generator settings: {', '.join(sorted(unknown))}.")
    s = GeneratorSettings(**values)
    if s.style_mode not in STYLE_MODES:
        raise ValueError(f"style mode must be one of {', '.join(STYLE_MODES)}, got {s.style_mode!r}.")
    if s.aggregation not in ("mean", "attention"):
        raise ValueError(f"aggregation must be 'mean' or 'attention', got {s.aggregation!r}.")
    if s.steps < 0 or s.batch < 1 or s.style_k < 1:
        raise ValueError(f"steps must be >= 0, batch and style_k >= 1 (got {s.steps}, {s.batch}, {s.style_k}).")
    if not 0 <= s.unlabelled_fraction < 1 or not 0 <= s.style_dropout <= 1:
        raise ValueError("unlabelled_fraction must lie in [0, 1) and style_dropout in [0, 1].")
    return s


# --- data -----------------------------------------------------------------------------------


@dataclass
class LabelledSet:
    """Labelled images resampled to the generator's scale, and training crops of them."""

    images: list[np.ndarray]  # (h, w, 3) uint8
    masks: list[np.ndarray]  # (h, w) uint8 class ids
    names: list[str]
    files: list[dict]
    source: np.ndarray  # (N,) image index of each crop
    positions: np.ndarray  # (N, 2) top-left (y, x)
    key: str

    def crop(self, i: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        y, x = self.positions[i]
        s = int(self.source[i])
        return self.images[s][y : y + size, x : x + size], self.masks[s][y : y + size, x : x + size]


def load_labelled(
    images: str | Path, masks: str | Path, *, tile_size: int, n_tiles: int, seed: int,
    images_mpp: float | None, mpp: float | None,
) -> LabelledSet:
    """Read image/mask pairs, resample them to ``mpp`` and draw ``n_tiles`` crop positions.

    Raises
    ------
    ValueError
        When an image is smaller than a tile at the generator's scale (the message names it).
    """
    from skimage.transform import resize

    pairs = pair_images_and_masks(images, masks)
    factor = 1.0 if images_mpp is None or mpp is None else float(images_mpp) / float(mpp)
    imgs, msks, names, files = [], [], [], []
    for img_path, mask_path in pairs:
        img, mask = read_rgb(img_path), read_mask(mask_path)
        check_same_shape(img, mask, img_path, mask_path)
        if factor != 1.0:
            shape = (int(round(img.shape[0] * factor)), int(round(img.shape[1] * factor)))
            img = np.clip(np.rint(resize(img, shape, order=1, anti_aliasing=factor < 1, preserve_range=True)), 0, 255).astype(np.uint8)
            mask = resize(mask, shape, order=0, anti_aliasing=False, preserve_range=True).astype(np.uint8)
        if img.shape[0] < tile_size or img.shape[1] < tile_size:
            raise ValueError(
                f"Image {img_path} is {img.shape[0]}x{img.shape[1]} px at the generator's scale, "
                f"smaller than its {tile_size}-px tiles: give larger images (or their µm/px)."
            )
        imgs.append(img)
        msks.append(mask)
        names.append(img_path.name)
        files.append({"image": img_path.name, "mask": mask_path.name, "bytes": img_path.stat().st_size,
                      "sha256": _sha256(img_path), "mask_sha256": _sha256(mask_path)})
    area = np.array([(m.shape[0] - tile_size + 1) * (m.shape[1] - tile_size + 1) for m in msks], float)
    rng = np.random.default_rng([seed, 0x9E7])
    source = rng.choice(len(imgs), size=n_tiles, p=np.sqrt(area) / np.sqrt(area).sum())
    pos = np.array([[rng.integers(0, msks[s].shape[0] - tile_size + 1), rng.integers(0, msks[s].shape[1] - tile_size + 1)]
                    for s in source], dtype=np.int64).reshape(-1, 2)
    key = hashlib.sha256(json.dumps([files, tile_size, n_tiles, seed, factor]).encode()).hexdigest()[:12]
    return LabelledSet(imgs, msks, names, files, source.astype(np.int64), pos, key)


# --- the run --------------------------------------------------------------------------------


def train_generator(
    images: str | Path,
    masks: str | Path,
    out: str | Path,
    *,
    backbone,
    style: Sequence[str | Path] = (),
    settings: GeneratorSettings | None = None,
    class_ids: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    class_colors: Sequence[str] | None = None,
    resume: bool = False,
    device: str = "auto",
    export: bool = True,
    should_stop: Callable[[], bool] | None = None,
) -> Work[Path | None]:
    """Train (or continue) a style generator; a generator of :class:`Progress` records.

    Parameters
    ----------
    images, masks : path
        Folders of labelled images and same-named masks (class ids).
    out : path
        Run folder (checkpoints, log, pools, the exported generator).
    backbone : Backbone
        Gives the autoencoder, the schedule, the guide (start of the style encoder), the tile
        size and the µm/px.
    style : sequence of path
        Unlabelled images, slides or folders whose stains the generator should learn.
    settings : GeneratorSettings, optional
        Default :func:`make_settings` ``("small")``.
    class_ids, class_names, class_colors : optional
        Classes; default the ids found in the masks.
    resume : bool
        Continue the run in ``out`` (a new one when there is none). Without it a folder that
        holds a run is refused.
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    export : bool
        Write ``out/generator`` when the budget is reached.
    should_stop : callable, optional
        Polled after each step; when true the run checkpoints and returns ``None``.

    Returns
    -------
    Path or None
        The exported generator folder, or ``None`` when stopped early or not exported.
    """
    out = Path(out).expanduser()
    s = settings or make_settings("small")
    dev = resolve_device(device)
    tile = int(s.tile_size or backbone.tile_size)
    if tile % 8:
        raise ValueError(f"tile size {tile} must be a multiple of 8.")
    yield Progress("data", 0, 1, "reading labelled images")
    labelled = load_labelled(images, masks, tile_size=tile, n_tiles=s.pair_tiles, seed=s.seed,
                             images_mpp=s.images_mpp, mpp=backbone.mpp)
    found = sorted({int(v) for m in labelled.masks for v in np.unique(m)})
    ids = [int(c) for c in class_ids] if class_ids is not None else found
    if set(found) - set(ids):
        raise ValueError(f"The masks hold class id(s) {sorted(set(found) - set(ids))} not among the classes {ids}.")
    pool = None
    if style:
        pool = yield from style_pool(style, tile_size=tile, mpp=backbone.mpp, n_tiles=s.style_tiles, seed=s.seed,
                                     cache_dir=out)
    run = _open_run(out, s, backbone, labelled, pool, ids, resume, dev)
    trainer = _Trainer(run, s, backbone, labelled, pool, ids, class_names, class_colors, tile, dev)
    state = _state(out)
    step, wall = 0, 0.0
    if state:
        trainer.load()
        step, wall = int(state["step"]), float(state["wall_s"])
    yield from trainer.prepare()
    stop = should_stop or (lambda: False)
    every = max(1, s.checkpoint_every)
    last: dict[str, float] = dict(state.get("last", {})) if state else {}
    with open(out / LOSS_FILE, "a") as log:
        try:
            while step < s.steps:
                t0 = time.perf_counter()
                last = trainer.step(step)
                step += 1
                wall += time.perf_counter() - t0
                log.write(json.dumps({"step": step, **last, "wall_s": round(wall, 3)}) + "\n")
                log.flush()
                if step % every == 0 or step == s.steps:
                    trainer.save(step, wall, last)
                if stop() and step < s.steps:
                    trainer.save(step, wall, last)
                    yield Progress("train", step, s.steps, f"stopped at step {step}", {"loss": last["loss"]})
                    return None
                yield Progress("train", step, s.steps, f"step {step}", {"loss": last["loss"]})
        except GeneratorExit:
            trainer.save(step, wall, last)
            raise
    if not export:
        return None
    if not state and s.steps == 0:
        trainer.save(0, 0.0, {})
    yield Progress("export", 0, 1, "writing the generator folder")
    folder = export_generator(out, out / "generator")
    yield Progress("export", 1, 1, f"generator written to {folder}")
    return folder


@dataclass
class _Run:
    folder: Path
    record: dict


def _open_run(out: Path, s: GeneratorSettings, backbone, labelled: LabelledSet, pool, ids, resume: bool, device) -> _Run:
    identity = {
        "version": RUN_VERSION,
        "backbone": backbone.identity,
        "class_ids": list(ids),
        "labelled_key": labelled.key,
        "pool_key": pool.key if pool is not None else None,
        "settings": {k: v for k, v in asdict(s).items() if k not in RESUMABLE},
    }
    run_file = out / RUN_FILE
    check_resume(run_file, identity, resume=resume, what="generator run")
    record = {**identity, "all_settings": asdict(s), "device": str(device), "backbone_source": backbone.source,
              "mpp": backbone.mpp, "labelled": labelled.files,
              "style_sources": pool.sources if pool is not None else [], "style_skipped": pool.skipped if pool else []}
    out.mkdir(parents=True, exist_ok=True)
    write_json(run_file, record)
    open_checkpoints([out / "checkpoints"])
    step = _state(out).get("step", 0)
    trim_log(out / LOSS_FILE, lambda rec: rec.get("step", 0) <= step)
    return _Run(out, record)


class _Trainer:
    """Model, moving average, optimizer and one training step."""

    def __init__(self, run: _Run, s: GeneratorSettings, backbone, labelled: LabelledSet, pool: TilePool | None,
                 ids, names, colors, tile: int, device):
        self.run, self.s, self.labelled, self.pool, self.tile, self.device = run, s, labelled, pool, tile, device
        self.model = build_generator(
            backbone, class_ids=ids, class_names=names, class_colors=colors, config=s.config,
            aggregation=s.aggregation, style_size=s.style_size, seed=_seed(s.seed, 2**31 - 1),
        )
        self.model.register_to_config(tile_size=tile)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.model.to(device).train()
        self.model.vae.eval()
        self.ema.to(device).eval()
        self.params = self.model.trainable_parameters()
        self.optimizer = torch.optim.AdamW(self.params, lr=s.lr, weight_decay=s.weight_decay)
        from diffusers import DDPMScheduler

        self.scheduler = DDPMScheduler.from_config(dict(self.model.config.scheduler_config))
        self.latents: dict[str, torch.Tensor] = {}
        self.unlabelled = int(round(s.batch * s.unlabelled_fraction)) if pool is not None and len(pool) else 0

    # --- inputs ------------------------------------------------------------------------
    def prepare(self) -> Work[None]:
        """Latents of every training tile, computed once and cached in the run folder."""
        h = hashlib.sha256(json.dumps([self.labelled.key, self.pool.key if self.pool else None,
                                       self.run.record["backbone"], self.tile]).encode())
        cache = self.run.folder / f"latents-{h.hexdigest()[:12]}.safetensors"
        if cache.exists():
            self.latents = load_file(str(cache))
            yield Progress("latents", 1, 1, "latents loaded")
            return None
        for old in self.run.folder.glob("latents-*.safetensors"):
            old.unlink()
        tiles = [self.labelled.crop(i, self.tile)[0] for i in range(len(self.labelled.source))]
        groups = {"labelled": np.stack(tiles)}
        if self.pool is not None:
            groups["unlabelled"] = self.pool.tiles
        total = sum(len(v) for v in groups.values())
        done = 0
        out: dict[str, torch.Tensor] = {}
        for name, arr in groups.items():
            means, stds = [], []
            for start in range(0, len(arr), 8):
                x = torch.from_numpy(arr[start : start + 8]).permute(0, 3, 1, 2).float().to(self.device) / 127.5 - 1
                with autocast(self.device):
                    m, sd = self.model.encode_images(x)
                means.append(m.float().cpu())
                stds.append(sd.float().cpu())
                done += len(x)
                yield Progress("latents", done, total, "encoding the training tiles")
            out[f"{name}_mean"] = torch.cat(means).contiguous()
            out[f"{name}_std"] = torch.cat(stds).contiguous()
        save_file(out, str(cache))
        self.latents = out
        return None

    def _styles(self, kind: str, idx: int, k: int, rng: np.random.Generator, gen: torch.Generator) -> torch.Tensor:
        """``k`` style crops ``(k, 3, S, S)`` in [0, 1] for sample ``idx`` of ``kind``."""
        s, size, t = self.s, self.s.style_size, self.tile
        if kind == "labelled":
            src = int(self.labelled.source[idx])
            y0, x0 = self.labelled.positions[idx]
            target = self.labelled.crop(idx, t)[0]
            n_src = len(self.labelled.images)
        else:
            src = int(self.pool.source_index[idx])
            y0, x0 = self.pool.positions[idx]
            target = self.pool.tiles[idx]
            n_src = len(self.pool.sources)
        crops = []
        for _ in range(k):
            mode = s.style_mode
            if mode == "other" and n_src < 2 and kind == "labelled" and self.pool is not None:
                crops.append(_random_crop(self.pool.tiles[rng.integers(len(self.pool))], size, rng))
                continue
            if mode in ("same", "augment") or (mode == "other" and n_src < 2):
                crops.append(_random_crop(target, size, rng))
            elif kind == "labelled":
                img = self.labelled.images[src]
                if mode == "other":
                    img = self.labelled.images[(src + 1 + rng.integers(n_src - 1)) % n_src]
                    crops.append(_random_crop(img, size, rng))
                else:  # nearby: a crop of the same image within `nearby` px of the target
                    crops.append(_nearby_crop(img, y0, x0, t, size, s.nearby, rng))
            else:
                same = self.pool.source_index == src
                if mode == "other":
                    cand = np.flatnonzero(~same)
                else:
                    d = np.abs(self.pool.positions - np.array([y0, x0])).max(axis=1)
                    cand = np.flatnonzero(same & (d <= s.nearby))
                    cand = cand if len(cand) else np.flatnonzero(same)
                crops.append(_random_crop(self.pool.tiles[cand[rng.integers(len(cand))]], size, rng))
        x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0
        if s.style_mode == "augment":
            x = augment.color_jitter(augment.hed_jitter(x, gen), gen)
        return augment.flip_rot90(x, gen)

    # --- one step ----------------------------------------------------------------------
    def step(self, step: int) -> dict[str, float]:
        s = self.s
        gen = torch.Generator().manual_seed(_seed(s.seed, step))
        rng = np.random.default_rng([s.seed, 0x5ED, step])
        n_unl = min(self.unlabelled, s.batch - 1) if self.unlabelled else 0
        lab = rng.choice(len(self.labelled.source), size=s.batch - n_unl, replace=s.batch - n_unl > len(self.labelled.source))
        unl = rng.choice(len(self.pool), size=n_unl, replace=n_unl > len(self.pool)) if n_unl else np.zeros(0, int)
        k = int(rng.integers(1, s.style_k + 1))
        lt = torch.from_numpy(lab)
        mean = self.latents["labelled_mean"][lt]
        std = self.latents["labelled_std"][lt]
        layouts = torch.from_numpy(np.stack([self.model.encode_layout(self.labelled.crop(int(i), self.tile)[1]) for i in lab]))
        cond = self.model.layout_condition(layouts)
        if n_unl:
            ut = torch.from_numpy(unl)
            mean = torch.cat([mean, self.latents["unlabelled_mean"][ut]])
            std = torch.cat([std, self.latents["unlabelled_std"][ut]])
            cond = torch.cat([cond, torch.zeros((n_unl, *cond.shape[1:]))])
        styles = torch.stack([self._styles("labelled", int(i), k, rng, gen) for i in lab]
                             + [self._styles("unlabelled", int(i), k, rng, gen) for i in unl])
        eps = torch.randn(mean.shape, generator=gen)
        z = mean + std * eps
        both = augment.flip_rot90(torch.cat([z, cond], dim=1), gen)
        z, cond = both[:, : z.shape[1]], both[:, z.shape[1] :]
        keep = (torch.rand(len(z), generator=gen) >= s.style_dropout).float().view(-1, 1, 1)
        noise = torch.randn(z.shape, generator=gen)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (len(z),), generator=gen)
        zt = self.scheduler.add_noise(z, noise, t)
        lr = s.lr * min(1.0, (step + 1) / max(1, s.warmup))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        dev = self.device
        with autocast(dev):
            ctx = self.model.style_context(styles.to(dev) * 2 - 1)
            k_ = keep.to(dev)
            ctx = ctx * k_ + self.model.null(len(z)) * (1 - k_)
            pred = self.model(zt.to(dev), t.to(dev), cond.to(dev), ctx)
        loss = F.mse_loss(pred.float(), noise.to(dev))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.params, s.grad_clip)
        self.optimizer.step()
        decay = min(s.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for (name, pe), p in zip(self.ema.named_parameters(), self.model.parameters()):
                if not name.startswith("vae."):
                    pe.lerp_(p, 1 - decay)
        return {"loss": float(loss.detach()), "grad_norm": float(norm), "lr": lr, "k": k,
                "unlabelled": n_unl, "dropped": float(1 - keep.mean())}

    # --- checkpoints -------------------------------------------------------------------
    def save(self, step: int, wall: float, last: dict) -> None:
        tensors, opt_meta = flatten_optimizer(self.optimizer)
        state = {"step": step, "budget": self.s.steps, "finished": step >= self.s.steps,
                 "wall_s": wall, "last": last, "optimizer": opt_meta, "torch": torch.__version__}

        def write(tmp: Path) -> None:
            save_generator(self.model, tmp / "model")
            save_generator(self.ema, tmp / "ema")
            save_file(tensors, str(tmp / "optimizer.safetensors"))

        save_checkpoint(self.run.folder / "checkpoints", write, state)

    def load(self) -> None:
        folder = self.run.folder / "checkpoints"
        state = json.loads((folder / "state.json").read_text())
        for module, sub in ((self.model, "model"), (self.ema, "ema")):
            module.load_state_dict(load_file(str(folder / sub / "diffusion_pytorch_model.safetensors")))
        restore_optimizer(self.optimizer, load_file(str(folder / "optimizer.safetensors")), state["optimizer"])


def _seed(seed: int, step: int) -> int:
    """A 63-bit seed that depends only on (seed, step)."""
    return int(np.random.SeedSequence([seed, 0x6E7, step]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def _random_crop(img: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    if h < size or w < size:
        raise ValueError(f"style crops of {size} px need tiles of at least that size (got {h}x{w}).")
    y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    return img[y : y + size, x : x + size]


def _nearby_crop(img, y0, x0, tile, size, reach, rng) -> np.ndarray:
    """A crop of ``img`` whose top-left lies within ``reach`` px of the target tile."""
    h, w = img.shape[:2]
    y_lo, y_hi = max(0, y0 - reach), min(h - size, y0 + tile - size + reach)
    x_lo, x_hi = max(0, x0 - reach), min(w - size, x0 + tile - size + reach)
    y = int(rng.integers(y_lo, max(y_lo, y_hi) + 1))
    x = int(rng.integers(x_lo, max(x_lo, x_hi) + 1))
    return img[y : y + size, x : x + size]


def _state(folder: Path) -> dict:
    return read_state(Path(folder) / "checkpoints")


# --- export ---------------------------------------------------------------------------------


def export_generator(run: str | Path, out: str | Path) -> Path:
    """Write the generator folder (EMA weights) and its MODEL_CARD.md from a run's checkpoint.

    Raises
    ------
    ValueError
        When ``run`` holds no generator run or no checkpoint yet.
    """
    from ...models.generator import generator_identity, load_generator

    run, out = Path(run).expanduser(), Path(out).expanduser()
    if not (run / RUN_FILE).exists():
        raise ValueError(f"{run} holds no generator training run ({RUN_FILE} is missing).")
    state = _state(run)
    if not state:
        raise ValueError(f"{run}: no checkpoint yet; export once the run has checkpointed.")
    record = json.loads((run / RUN_FILE).read_text())
    gen = load_generator(run / "checkpoints" / "ema")

    def write(tmp: Path) -> None:
        save_generator(gen, tmp)
        _model_card(tmp, gen, record, state, run / LOSS_FILE, generator_identity(tmp))

    replace_folder(out, write)
    return out


def _model_card(folder: Path, gen: StyleGenerator, record: dict, state: dict, log: Path, identity: str) -> None:
    s = record["all_settings"]
    losses = [json.loads(ln)["loss"] for ln in log.read_text().splitlines() if ln.strip()] if log.exists() else []
    tail = losses[-100:]
    counts = {
        name: sum(p.numel() for p in getattr(gen, name).parameters()) / 1e6
        for name in ("unet", "style_encoder", "style_proj", "aggregator", "vae")
    }
    lines = [
        f"# Style generator `{identity}`",
        "",
        "A latent diffusion model that makes H&E tiles for a given layout (class ids per pixel) in "
        "the style of given tiles (after Style-Extracting Diffusion Models, ECCV 2024).",
        "",
        f"- Backbone (autoencoder, schedule, start of the style encoder): `{record['backbone']}`",
        f"- Classes: {gen.describe_classes()}",
        f"- Tiles: {gen.config.tile_size} px at {gen.config.mpp} µm/px; style tiles {gen.config.style_size} px",
        f"- Aggregation of style tiles: {gen.config.aggregation}; style mode in training: {s['style_mode']}",
        "",
        "## Parameters (millions)",
        "",
        "| part | M |",
        "|---|---|",
        *[f"| {k} | {v:.2f}{' (frozen copy)' if k == 'vae' else ''} |" for k, v in counts.items()],
        "",
        "## Training",
        "",
        f"Steps {state['step']} of {state['budget']}, {state['wall_s'] / 3600:.2f} h on {record['device']}, "
        f"torch {torch.__version__}. "
        + (f"First loss {losses[0]:.4f}, mean of the last {len(tail)} {float(np.mean(tail)):.4f}. " if losses else "")
        + f"Weights: moving average (decay {s['ema_decay']}).",
        "",
        "```json",
        json.dumps(s, indent=1),
        "```",
        "",
        "## Data",
        "",
        "Labelled images (layouts from their masks):",
        "",
        "| image | mask | bytes | sha256 |",
        "|---|---|---|---|",
        *[f"| {f['image']} | {f['mask']} | {f['bytes']} | `{f['sha256'][:16]}…` |" for f in record["labelled"]],
        "",
        "Unlabelled style sources:" if record["style_sources"] else "No unlabelled style sources.",
        "",
        *[f"- {Path(d['path']).name}: {d.get('tiles', 0)} tiles, `{d.get('sha256', '')[:16]}…`" for d in record["style_sources"]],
        "",
        "Weights derived from data are bound by the terms of that data: check them before sharing "
        "this folder.",
    ]
    (folder / "MODEL_CARD.md").write_text("\n".join(lines) + "\n")
