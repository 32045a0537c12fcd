"""Synthetic image/mask pairs for one annotation session: a style generator trained on the
session's corrected regions, tiles generated from their layouts in the style of open slides,
and those tiles as weighted training samples of the next "Train on my edits".

Everything lives in the session folder (see :mod:`.session_folder`)::

    generator-pairs/images, masks   the corrected regions as pairs (training data of a generator)
    generators/run-<time>/          one generator run each (``generator/`` when it finished)
    synthetic/                      the last generated set (images/, masks/, generation.json)

Layouts. A *corrected layout* is a square of the analysis level inside a chunk the person
painted in, every pixel of which is labelled in the merged view (predictions with the
corrections over them): what the person has seen and corrected. Masks hold store ids (1..255),
so generated masks need no translation.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from ...core.atomic import folder_replaced
from ...core.progress import Progress, Work
from ...core.region import Region
from .annotation import AnnotationError

GENERATOR_PAIRS = "generator-pairs"
GENERATORS = "generators"
SYNTHETIC = "synthetic"
SYNTHETIC_WEIGHT = 0.5
"""Loss weight of a generated pair relative to a painted pixel."""

WIDGET_SETTINGS = {"steps": 1500, "batch": 4, "tile_size": 64, "style_size": 32, "checkpoint_every": 100}
"""Settings of "Train a generator on my labels" (small architecture; a short run)."""
CPU_SECONDS_PER_STEP = 0.2
"""Seconds per step of :data:`WIDGET_SETTINGS` on a 2-core CPU with one torch thread (measured:
median 0.17 s over 40 steps of the small generator on a 0.5 µm/px backbone, the other core
busy); the run adds a few seconds for the style tiles and the latents."""


@dataclass
class GeneratedSet:
    """What :func:`generate_session_pairs` returns.

    Attributes
    ----------
    folder : Path
        ``<session>/synthetic`` (images/, masks/, generation.json).
    images : ndarray of uint8, shape (N, T, T, 3)
    masks : ndarray of uint8, shape (N, T, T)
        Store class ids.
    seconds : float
    """

    folder: Path
    images: np.ndarray
    masks: np.ndarray
    seconds: float = 0.0


# --- layouts ------------------------------------------------------------------------------


def analysis_side(session, tile: int, mpp: float | None) -> int:
    """Side (analysis pixels) of a square that covers a ``tile``-px tile at ``mpp`` µm/px."""
    store_mpp = session.store.mpp
    if mpp is None or store_mpp is None:
        return int(tile)
    return max(1, int(math.ceil(tile * float(mpp) / float(store_mpp) - 1e-6)))


def corrected_layouts(session, side: int, *, stride: int | None = None) -> list[tuple[Region, np.ndarray]]:
    """Fully labelled ``side`` x ``side`` squares (merged view) of the chunks the person painted in.

    Raises
    ------
    AnnotationError
        When there is none (nothing painted, or no painted chunk holds such a square).
    """
    stride = int(stride or max(1, side // 2))
    out = []
    for y0, x0, h, w in session.store.edited_windows():
        merged = session.store.read(y0, x0, h, w, which="merged")
        if h < side or w < side:
            continue
        for y in _starts(h, side, stride):
            for x in _starts(w, side, stride):
                crop = merged[y : y + side, x : x + side]
                if crop.all():
                    out.append((Region(session.level, y0 + y, x0 + x, side, side), np.ascontiguousarray(crop)))
    if not out:
        raise AnnotationError(
            f"No corrected region holds a fully labelled {side}x{side}-px square: segment a region "
            "with the head, correct it with the brush, then try again (layouts and training pairs "
            "are cut from the segmented regions you corrected)."
        )
    return out


def _starts(n: int, side: int, stride: int) -> list[int]:
    starts = list(range(0, n - side + 1, stride))
    if starts[-1] != n - side:
        starts.append(n - side)
    return starts


def check_generator_classes(generator, classes, used: Sequence[int]) -> None:
    """Refuse a generator made for other classes than the session's.

    Every class id in ``used`` (ids of the layouts) must be one of the generator's, and every
    id the two share must have the same class name.

    Raises
    ------
    AnnotationError
        Naming both class lists and what to do.
    """
    names = {int(i): n for i, n in zip(generator.class_ids, generator.class_names)}
    table = {c.id: c.name for c in classes}
    missing = sorted(int(i) for i in set(used) - set(names))
    renamed = sorted(i for i in set(names) & set(table) if names[i].strip().lower() != table[i].strip().lower())
    if missing or renamed:
        theirs = ", ".join(f"{i} ({n})" for i, n in sorted(names.items()))
        ours = ", ".join(f"{i} ({n})" for i, n in sorted(table.items()))
        raise AnnotationError(
            f"This generator was trained for other classes ({theirs}) than this slide's ({ours}): "
            "its tiles would not match the masks. Train a generator on your labels, or open one "
            "trained for these classes."
        )


# --- training a generator on the session ------------------------------------------------------


def export_training_pairs(session, folder: str | Path, side: int) -> int:
    """Write the corrected layouts and their pixels (analysis level) as PNG pairs in
    ``folder/images`` and ``folder/masks`` (what was there before is replaced); returns how many."""
    from PIL import Image

    from ...core.images import write_labels

    layouts = corrected_layouts(session, side, stride=side)
    folder = Path(folder)
    for sub in ("images", "masks"):
        shutil.rmtree(folder / sub, ignore_errors=True)
        (folder / sub).mkdir(parents=True)
    for i, (region, mask) in enumerate(layouts):
        name = f"{i:05d}.png"
        Image.fromarray(session.slide.read_region(region)).save(folder / "images" / name)
        write_labels(folder / "masks" / name, mask)
    return len(layouts)


def session_backbone(extractor, spec: str | Path | None = None):
    """The backbone a generator for the session is built on: ``spec`` when given, else that of
    the session's diffusion features, else the default backbone.

    Raises
    ------
    AnnotationError
        When none is available (the message says how to choose one).
    """
    from ...models.backbone import BackboneError, load_backbone

    if spec is None and getattr(extractor, "backbone", None) is not None:
        return extractor.backbone
    try:
        return load_backbone(spec or "default")
    except BackboneError as exc:
        raise AnnotationError(
            f"A generator is built on a backbone's autoencoder, and none is at hand ({exc}). Choose "
            "the features of a backbone (Model > Features: default backbone or backbone folder), "
            "then train the generator again."
        ) from exc


def train_session_generator(
    session,
    backbone,
    *,
    style: Sequence[str | Path] = (),
    settings=None,
    device: str = "auto",
    now: str | None = None,
    threads: int | None = 1,
) -> Work[Path]:
    """Train a style generator on the session's corrected regions (a progress generator).

    The run goes to a new folder ``<session>/generators/run-<time>``; earlier runs are kept.
    Closing the generator stops after the step under way (the run is checkpointed); the edits
    are only read.

    Parameters
    ----------
    session : AnnotationSession
    backbone : Backbone
        See :func:`session_backbone`.
    style : sequence of path
        Slides or images whose stains the generator should also learn (the open slides).
    settings : GeneratorSettings, optional
        Default :data:`WIDGET_SETTINGS` on the small architecture.
    device : str
    now : str, optional
        Name of the run folder after ``run-`` (default the current time).
    threads : int or None
        Torch threads while a step runs (``None``: leave as is). Small steps run faster on one
        thread, and much faster when the other core is busy.

    Returns
    -------
    Path
        The generator folder.
    """
    from ..runs.generator_training import make_settings, train_generator

    s = settings or make_settings("small", **WIDGET_SETTINGS)
    tile = int(s.tile_size or backbone.tile_size)
    side = analysis_side(session, tile, backbone.mpp)
    yield Progress("data", 0, 1, "collecting the corrected regions")
    pairs = session.folder / GENERATOR_PAIRS
    export_training_pairs(session, pairs, side)
    if session.store.mpp is not None and backbone.mpp is not None:
        s = replace(s, images_mpp=float(session.store.mpp))
    table = sorted(session.classes, key=lambda c: c.id)
    used = sorted({int(v) for p in (pairs / "masks").iterdir() for v in _unique_ids(p)})
    chosen = [c for c in table if c.id in used]
    out = session.folder / GENERATORS / f"run-{now or time.strftime('%Y%m%d-%H%M%S')}"
    base, k = out, 1
    while out.exists():  # never continue or overwrite an earlier run
        k += 1
        out = base.with_name(f"{base.name}-{k}")
    folder = yield from with_threads(train_generator(
        pairs / "images", pairs / "masks", out, backbone=backbone, style=list(style), settings=s,
        class_ids=[c.id for c in chosen], class_names=[c.name for c in chosen],
        class_colors=[c.color for c in chosen], device=device,
    ), threads)
    return folder


def with_threads(work: Work, threads: int | None) -> Work:
    """``work`` advanced with ``threads`` torch threads, the previous number restored at each
    yield (so other work in the process is not slowed while it waits)."""
    from ..training.fit_fcn import torch_threads

    try:
        while True:
            with torch_threads(threads):
                try:
                    record = next(work)
                except StopIteration as stop:
                    return stop.value
            yield record
    finally:
        with torch_threads(threads):
            work.close()


def latest_session_generator(session_folder: str | Path) -> Path | None:
    """The generator of the newest finished run in the session folder, or None."""
    runs = (Path(session_folder) / GENERATORS).glob("run-*/generator/config.json")
    newest = max(runs, key=lambda p: p.stat().st_mtime, default=None)
    return newest.parent if newest is not None else None


def _unique_ids(mask_path: Path) -> list[int]:
    from ...core.images import read_mask

    return np.unique(read_mask(mask_path)).tolist()


# --- style tiles ------------------------------------------------------------------------------


def style_tiles(
    sources: Sequence[tuple[object, Region | None]],
    *,
    size: int,
    mpp: float | None,
    n_tiles: int,
    seed: int = 0,
    min_tissue: float = 0.5,
) -> Work:
    """Tissue tiles of slides (whole, or a region each) as a style pool; a progress generator.

    Parameters
    ----------
    sources : sequence of (Slide, Region or None)
        A slide and the part to take tiles from (any level), or None for the whole slide.
    size : int
        Tile side in pixels at ``mpp``.
    mpp : float or None
        µm/px of the tiles (the generator's); None or a slide of unknown µm/px reads level 0.
    n_tiles : int
    seed : int
    min_tissue : float
        Lowest tissue share of a tile.

    Returns
    -------
    TilePool

    Raises
    ------
    AnnotationError
        When no source gives a tissue tile.
    """
    from ...core.tissue import tissue_mask
    from ..runs.backbone_data import TilePool, read_tile

    rng = np.random.default_rng([seed, 0x57F])
    found: list[tuple[int, int, int, np.ndarray]] = []
    infos = []
    tries = 40 * n_tiles
    for k, (slide, region) in enumerate(sources):
        yield Progress("style", k, len(sources), f"style tiles of {_name(slide)}")
        at = mpp if (mpp and slide.mpp) else None
        scale = (slide.mpp / at) if at else 1.0  # tile pixels per level-0 pixel
        box = region.to_level(0, slide.downsamples) if region is not None else Region(0, 0, 0, *slide.shape)
        y0, x0 = int(box.y * scale), int(box.x * scale)
        h, w = int(box.height * scale), int(box.width * scale)
        infos.append({"path": _name(slide)})
        if h < size or w < size:
            continue
        kept = 0
        for _ in range(tries):
            y, x = y0 + int(rng.integers(0, h - size + 1)), x0 + int(rng.integers(0, w - size + 1))
            if at:
                tile = read_tile(slide, y=y, x=x, size=size, mpp=at)
            else:
                tile = slide.read_region(Region(0, y, x, size, size))
            if tissue_mask(tile).mean() >= min_tissue:
                found.append((k, y, x, tile))
                kept += 1
                if kept >= n_tiles:
                    break
        infos[-1]["tiles"] = kept
    if not found:
        raise AnnotationError(
            "No tissue tile was found for the style: show tissue in the view (or choose the whole "
            "slides) and try again."
        )
    picks = rng.permutation(len(found))[:n_tiles]
    chosen = [found[i] for i in picks]
    yield Progress("style", len(sources), len(sources), f"{len(chosen)} style tiles")
    return TilePool(
        tiles=np.stack([t for *_, t in chosen]),
        source_index=np.array([k for k, *_ in chosen], np.int64),
        positions=np.array([[y, x] for _, y, x, _ in chosen], np.int64).reshape(-1, 2),
        sources=infos, skipped=[], mpp=float(mpp or 0.0), key=f"session-style-{seed}",
    )


def _name(slide) -> str:
    return Path(slide.path).name if getattr(slide, "path", None) else "in-memory image"


# --- generating ---------------------------------------------------------------------------------


def generate_session_pairs(
    session,
    generator_folder: str | Path,
    *,
    n: int,
    style: Sequence[tuple[object, Region | None]] = (),
    seed: int = 0,
    steps: int = 25,
    guidance: float = 2.0,
    style_k: int = 3,
    batch_size: int = 4,
    device: str = "cpu",
) -> Work[GeneratedSet]:
    """Generate ``n`` tiles from the session's corrected layouts in the style of ``style``.

    The set replaces ``<session>/synthetic`` only once complete: closing the generator early
    leaves the previous set (and the edits) as they were.

    Raises
    ------
    AnnotationError
        No corrected layout, a generator for other classes, or no style tissue.
    FileNotFoundError, GeneratorError
        The generator folder is missing or unreadable.
    """
    from skimage.transform import resize

    from ...core.images import read_mask, read_rgb
    from ...models.generator import generator_identity, load_generator
    from ..runs.generation import generate_pairs

    if n < 1:
        raise AnnotationError(f"The number of tiles must be 1 or more, got {n}.")
    t0 = time.perf_counter()
    yield Progress("load", 0, 1, "loading the generator")
    gen = load_generator(generator_folder, device=device)
    tile = int(gen.config.tile_size)
    side = analysis_side(session, tile, gen.config.mpp)
    layouts = corrected_layouts(session, side)
    check_generator_classes(gen, session.classes, sorted({int(v) for _, m in layouts for v in np.unique(m)}))
    rng = np.random.default_rng([seed, 0x5E5])
    order = np.concatenate([rng.permutation(len(layouts)) for _ in range(math.ceil(n / len(layouts)))])[:n]
    chosen = []
    for i in order:
        region, mask = layouts[int(i)]
        if side != tile:
            mask = resize(mask, (tile, tile), order=0, preserve_range=True, anti_aliasing=False).astype(np.uint8)
        chosen.append((f"y={region.y}, x={region.x} (level {region.level})", mask))
    pool = None
    if style:
        pool = yield from style_tiles(style, size=int(gen.config.style_size), mpp=gen.config.mpp,
                                      n_tiles=max(16, min(256, n * style_k)), seed=seed)
    out = session.folder / SYNTHETIC
    with folder_replaced(out) as part:
        yield from generate_pairs(gen, chosen, pool, part, style_k=style_k, steps=steps, guidance=guidance,
                                  seed=seed, batch_size=batch_size, identity=generator_identity(generator_folder))
    names = [f"{i:05d}.png" for i in range(n)]
    images = np.stack([read_rgb(out / "images" / f) for f in names])
    masks = np.stack([read_mask(out / "masks" / f) for f in names])
    return GeneratedSet(out, images, masks, seconds=time.perf_counter() - t0)


def mosaic(tiles: np.ndarray, *, fill: int = 0, gap: int = 2) -> np.ndarray:
    """Tiles ``(N, T, T[, C])`` side by side in a near-square grid, ``gap`` px of ``fill`` between.

    Examples
    --------
    >>> mosaic(np.ones((3, 2, 2), np.uint8), gap=1).shape
    (5, 5)
    """
    n, t = len(tiles), tiles.shape[1]
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    step = t + gap
    out = np.full((rows * step - gap, cols * step - gap, *tiles.shape[3:]), fill, dtype=tiles.dtype)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        out[r * step : r * step + t, c * step : c * step + t] = tile
    return out


# --- training the head with them ------------------------------------------------------------------


def synthetic_samples(session, *, weight: float = SYNTHETIC_WEIGHT) -> list:
    """The generated pairs of ``<session>/synthetic`` as weighted training samples (empty when
    none were generated).

    Raises
    ------
    AnnotationError
        A generated mask holds a class id that is not in the session's class table.
    """
    from ...core.images import pair_images_and_masks, read_mask, read_rgb
    from ..runs.generation import read_record
    from ..training.train_head import TrainSample

    folder = session.folder / SYNTHETIC
    if not (folder / "images").is_dir() or not (folder / "masks").is_dir():
        return []
    mpp = read_record(folder).get("mpp")
    table = {c.id for c in session.classes}
    out = []
    for image_path, mask_path in pair_images_and_masks(folder / "images", folder / "masks"):
        mask = read_mask(mask_path)
        unknown = sorted(set(np.unique(mask).tolist()) - table - {0})
        if unknown:
            raise AnnotationError(
                f"The generated mask {mask_path} holds class id(s) {unknown} that are not in the "
                "class table: generate the tiles again, or leave \"Include in next training\" off."
            )
        out.append(TrainSample(read_rgb(image_path), mask, name=f"generated {mask_path.name}", mpp=mpp,
                               weight=float(weight)))
    return out
