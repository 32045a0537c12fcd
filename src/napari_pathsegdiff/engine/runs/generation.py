"""Generating image/mask pairs with a style generator: layouts in, styled tiles out.

Output folder::

    images/00000.png ...      generated RGB tiles
    masks/00000.png ...       their masks: exactly the layouts they were generated from
    generation.json           generator identity, settings, and per tile its layout, style
                              tiles (source, position) and seed

The folder is a training set as it is: ``pathsegdiff train --synthetic DIR``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ...core.images import IMAGE_SUFFIXES, write_labels
from ...core.progress import Progress, Work
from ...models.generator import GeneratorError, StyleGenerator
from .backbone_data import SLIDE_SUFFIXES, TilePool, build_pool, find_sources

RECORD_FILE = "generation.json"


def style_pool(paths: Sequence[str | Path], *, tile_size: int, mpp: float | None, n_tiles: int,
               seed: int = 0, min_tissue: float = 0.5, cache_dir: str | Path | None = None) -> Work[TilePool]:
    """Tissue tiles of the style sources (images, slides, folders), ``tile_size`` px at ``mpp``.

    With ``cache_dir`` the pool is kept in ``cache_dir/pool-<key>.npz`` (see
    :func:`.backbone_data.build_pool`).

    Raises
    ------
    FileNotFoundError
        When a path does not exist.
    ValueError
        When a folder holds no image or slide, or no tissue tile can be drawn; the message
        names the ``--style`` path.
    """
    suffixes = tuple(IMAGE_SUFFIXES) + SLIDE_SUFFIXES
    if not paths:
        raise ValueError("--style: give at least one image, slide or folder of style sources.")
    for p in paths:
        p = Path(p).expanduser()
        if not p.exists():
            raise FileNotFoundError(f"--style {p}: no such file or folder.")
        if p.is_dir() and not any(f.is_file() and f.suffix.lower() in suffixes for f in p.rglob("*")):
            raise ValueError(
                f"--style {p}: this folder holds no images (PNG, JPEG, TIFF) or slides; give "
                "a folder of H&E images or slide files whose style the tiles should take."
            )
    try:
        sources = find_sources(paths)
        pool = yield from build_pool(sources, n_tiles=n_tiles, tile_size=tile_size, mpp=float(mpp or 0.5),
                                     seed=seed, min_tissue=min_tissue, cache_dir=cache_dir)
    except ValueError as exc:
        raise ValueError(str(exc).replace("--data", "--style")) from exc
    return pool


def generate_pairs(
    generator: StyleGenerator,
    layouts: Sequence[tuple[str, np.ndarray]],
    pool: TilePool | None,
    out: str | Path,
    *,
    style_k: int = 3,
    steps: int = 25,
    guidance: float = 2.0,
    seed: int = 0,
    batch_size: int = 4,
    identity: str | None = None,
) -> Work[Path]:
    """Generate one tile per layout in the style of ``style_k`` random tiles of ``pool``.

    Parameters
    ----------
    generator : StyleGenerator
    layouts : sequence of (str, ndarray)
        ``(description, class ids)``; every layout is checked before anything is generated.
    pool : TilePool or None
        Style tiles; ``None`` generates without style (the null context).
    out : path
        Output folder (``images/``, ``masks/``, ``generation.json``).
    style_k : int
        Style tiles per generated tile.
    steps, guidance : int, float
        DDIM steps and classifier-free guidance scale.
    seed : int
        Seed of everything: tile ``i`` depends only on (seed, i), not on the batch size.
    batch_size : int
        Tiles generated together.
    identity : str, optional
        Identity of the generator folder, recorded in ``generation.json``.

    Raises
    ------
    GeneratorError
        For a layout with classes the generator does not know or a bad size (named).
    """
    out = Path(out).expanduser()
    encoded = [generator.encode_layout(m, name=f"Layout {d}") for d, m in layouts]
    if style_k < 1:
        raise GeneratorError(f"style_k must be 1 or more, got {style_k}.")
    rng = np.random.default_rng([seed, 0x57E])
    picks = [rng.integers(len(pool), size=style_k) if pool is not None else None for _ in layouts]
    seeds = [int(np.random.SeedSequence([seed, i]).generate_state(1)[0]) for i in range(len(layouts))]
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    device = generator.device
    items = []
    t0 = time.perf_counter()
    n = len(layouts)
    yield Progress("generate", 0, n, f"{n} tiles")
    i = 0
    while i < n:
        j = i + 1
        while j < n and j - i < batch_size and encoded[j].shape == encoded[i].shape:
            j += 1
        lay = torch.from_numpy(np.stack(encoded[i:j]))
        styles = None
        if pool is not None:
            tiles = np.stack([pool.tiles[picks[q]] for q in range(i, j)])  # (B, K, S, S, 3)
            styles = torch.from_numpy(tiles).permute(0, 1, 4, 2, 3).float().to(device) / 127.5 - 1
        images = generator.sample(lay, styles, steps=steps, guidance=guidance, seed=seeds[i:j])
        for q in range(i, j):
            name = f"{q:05d}.png"
            _write_rgb(out / "images" / name, images[q - i])
            write_labels(out / "masks" / name, np.asarray(layouts[q][1], dtype=np.uint8))
            item = {"file": name, "layout": layouts[q][0], "seed": seeds[q]}
            if pool is not None:
                item["style"] = [
                    {"source": Path(pool.sources[int(pool.source_index[p])]["path"]).name,
                     "y": int(pool.positions[p][0]), "x": int(pool.positions[p][1])}
                    for p in picks[q]
                ]
            items.append(item)
        i = j
        yield Progress("generate", i, n, f"{i}/{n} tiles")
    record = {
        "generator": identity,
        "backbone": generator.config.backbone_identity,
        "mpp": generator.config.mpp,
        "class_ids": generator.class_ids,
        "class_names": generator.class_names,
        "class_colors": generator.class_colors,
        "steps": steps,
        "guidance": guidance,
        "style_k": style_k if pool is not None else 0,
        "seed": seed,
        "seconds": round(time.perf_counter() - t0, 3),
        "style_sources": [Path(s["path"]).name for s in pool.sources] if pool is not None else [],
        "tiles": items,
    }
    (out / RECORD_FILE).write_text(json.dumps(record, indent=1) + "\n")
    return out


def read_record(folder: str | Path) -> dict:
    """``generation.json`` of an output folder, or ``{}`` when there is none."""
    path = Path(folder) / RECORD_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_rgb(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(image), mode="RGB").save(path)
