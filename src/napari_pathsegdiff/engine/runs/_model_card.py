"""The MODEL_CARD.md written next to an exported backbone: data, steps, settings, losses,
time and hashes, from the run record and its loss log."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ...core.hashing import file_sha256 as _sha256




def _final_losses(log: Path, n: int = 100) -> dict[str, dict[str, float]]:
    """Mean loss of the last ``n`` logged steps of each stage, and the first step's loss."""
    per: dict[str, list[dict]] = {}
    if log.exists():
        for line in log.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            per.setdefault(rec["stage"], []).append(rec)
    out = {}
    for stage, recs in per.items():
        tail = recs[-n:]
        out[stage] = {
            "first": recs[0]["loss"],
            "last_mean": sum(r["loss"] for r in tail) / len(tail),
            "last_n": len(tail),
        }
    return out


def _relative_names(paths: list[str]) -> list[str]:
    """Paths relative to their common folder (so the card names no machine folders)."""
    if not paths:
        return []
    common = os.path.commonpath([str(Path(p).parent) for p in paths])
    base = Path(common).parent if len(paths) > 1 else Path(common)
    return [Path(p).relative_to(base).as_posix() for p in paths]


def write_model_card(folder: Path, *, record: dict, states: dict, log: Path, models: dict, dtype: str) -> Path:
    """Write ``folder/MODEL_CARD.md`` for an exported backbone: what it is, its architecture,
    its training, its data and the checksums of its files."""
    from ...models.backbone import backbone_identity

    meta, settings = record["architecture"]["meta"], record["settings"]
    lines = [
        f"# {meta['name']}",
        "",
        f"Identity: `{backbone_identity(folder)}`",
        "",
        "A small latent diffusion model of H&E histopathology, used as a frozen feature "
        "extractor: a self-supervised tile encoder (the guide), an `AutoencoderKL` and a "
        "`UNet2DConditionModel` that cross-attends to the guide's tokens (condition dropout "
        f"{settings['cond_dropout']:.0%}, so zeros give the unconditional model). Tiles of "
        f"{meta['tile_size']} px at {meta['mpp']} µm/px.",
    ]
    lines += _architecture_section(folder, record, models, dtype)
    lines += _training_section(record, states, _final_losses(log))
    lines += _data_section(record)
    lines += _files_section(folder)
    out = folder / "MODEL_CARD.md"
    out.write_text("\n".join(lines) + "\n")
    return out


def _architecture_section(folder: Path, record: dict, models: dict, dtype: str) -> list[str]:
    meta = record["architecture"]["meta"]
    lines = ["", "## Architecture", "", "| part | class | parameters | MB as saved |", "|---|---|---|---|"]
    for name, model in models.items():
        n = sum(p.numel() for p in model.parameters())
        size = sum(f.stat().st_size for f in (folder / name).glob("*.safetensors")) / 1e6
        lines.append(f"| {name} | {type(model).__name__} | {n / 1e6:.2f} M | {size:.1f} |")
    return lines + [
        "",
        f"Weights in {dtype}. Defaults: timesteps {meta['default_timesteps']}, UNet up blocks "
        f"{meta['default_blocks']}. Architecture configuration: `{record['config']}`.",
    ]


def _training_section(record: dict, states: dict, losses: dict) -> list[str]:
    settings = record["settings"]
    lines = [
        "",
        "## Training",
        "",
        "| stage | objective | steps | budget | finished | wall time | first loss | final loss (mean of last steps) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    objectives = {
        "guide": f"SimCLR NT-Xent (τ = {settings['temperature']}), batch {settings['batch_guide']} × 2 views of {settings['crop_guide']} px",
        "vae": f"L1 + {settings['edge_weight']} × gradient L1 + {settings['kl_weight']:g} × KL, batch {settings['batch_vae']} crops of {settings['crop_vae']} px",
        "unet": f"epsilon MSE on scaled latents, batch {settings['batch_unet']}, EMA {settings['ema_decay']}",
    }
    for stage in ("guide", "vae", "unet"):
        st = states.get(stage, {})
        lo = losses.get(stage, {})
        first = f"{lo['first']:.4f}" if lo else "–"
        final = f"{lo['last_mean']:.4f} ({lo['last_n']})" if lo else "–"
        lines.append(
            f"| {stage} | {objectives[stage]} | {st.get('step', 0)} | {st.get('budget', '–')} | "
            f"{'yes' if st.get('finished') else 'no'} | {st.get('wall_s', 0) / 3600:.2f} h | {first} | {final} |"
        )
    return lines + [
        "",
        f"Device: {record.get('device')}. torch {torch.__version__}. Seed {settings['seed']}. "
        "Batches, crops, augmentations and noise of step k depend only on (seed, stage, k).",
        "",
        "Hyper-parameters:",
        "",
        "```json",
        json.dumps(settings, indent=1),
        "```",
    ]


def _data_section(record: dict) -> list[str]:
    settings, data = record["settings"], record["data"]
    lines = [
        "",
        "## Data",
        "",
        f"{settings['pool_tiles']} tiles drawn from tissue (at least {settings['min_tissue']:.0%} of a tile, "
        "low-resolution optical-density mask), sources weighted by the square root of their "
        "tissue area, resampled to the training µm/px. Augmentations: dihedral flips and "
        "rotations everywhere; for the guide also random crops, HED stain jitter, brightness / "
        "contrast / saturation jitter and blur. Images only: no labels were used.",
        "",
        "| file | kind | µm/px | from | tiles | bytes | sha256 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, d in zip(_relative_names([d["path"] for d in data]), data):
        lines.append(
            f"| {name} | {d['kind']} | {d['mpp']:g} | {d['mpp_origin']} | {d.get('tiles', 0)} | "
            f"{d.get('bytes', '')} | `{d.get('sha256', '')[:16]}…` |"
        )
    if record.get("skipped"):
        lines += ["", "Sources that gave no tile:", ""]
        lines += [f"- {Path(s['path']).name}: {s['reason']}" for s in record["skipped"]]
    return lines


def _files_section(folder: Path) -> list[str]:
    lines = ["", "## Files", "", "| file | sha256 |", "|---|---|"]
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != "MODEL_CARD.md":
            lines.append(f"| {path.relative_to(folder).as_posix()} | `{_sha256(path)}` |")
    return lines
