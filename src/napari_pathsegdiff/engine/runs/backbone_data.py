"""The unlabelled training set of a backbone: tissue tiles at a fixed µm/px, pre-extracted.

``--data`` names image files, folders (searched recursively for PNG, JPEG and TIFF-based
images and slides) and slide files. Every source gets a µm/px: from ``--mpp-map`` patterns
first, then from the slide's own metadata, else the default (0.5 µm/px, recorded as
"assumed"). A low-resolution tissue mask (:func:`napari_pathsegdiff.core.tissue.tissue_mask`)
of each source gives the tile positions that hold at least half tissue; a pool of tiles is
drawn from them at the training µm/px (resampled from the nearest finer pyramid level) and
saved once, as uint8, in a ``pool-<key>.npz`` file of the run folder, so that training steps
decode nothing. Sources share the pool in proportion to the square root of their tissue area,
so that one large slide does not drown many small images.

Batches are reproducible: the tiles of step ``k`` of a stage depend only on
``(seed, stage, k)`` (:func:`batch_indices`), so a resumed run sees exactly the batches an
uninterrupted run would have seen.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ...core.atomic import replace_file
from ...core.progress import Progress, Work
from ...core.region import Region
from ...core.slide import Slide, SlideError, open_slide
from ...core.tissue import tissue_mask, tissue_tile_positions

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".scn", ".bif", ".btf")
MASK_MPP = 4.0
"""µm/px at which tissue masks are computed."""
POOL_VERSION = 1


@dataclass(frozen=True)
class DataSource:
    """One image or slide of the training data.

    Attributes
    ----------
    path : Path
    kind : str
        ``"image"`` (read whole) or ``"slide"`` (read lazily, tile by tile).
    mpp : float
        µm/px of its full resolution.
    mpp_origin : str
        ``"mpp-map"``, ``"metadata"`` or ``"assumed"``.
    """

    path: Path
    kind: str
    mpp: float
    mpp_origin: str


@dataclass
class TilePool:
    """Pre-extracted training tiles.

    Attributes
    ----------
    tiles : ndarray of uint8, shape (N, T, T, 3)
    source_index : ndarray of int, shape (N,)
        Index into :attr:`sources` of each tile.
    positions : ndarray of int, shape (N, 2)
        Top-left (y, x) of each tile in pixels of its source resampled to :attr:`mpp`.
    sources : list of dict
        ``path``, ``kind``, ``mpp``, ``mpp_origin``, ``bytes``, ``sha256``, ``tissue_px``
        (tissue area in training pixels) and ``tiles`` (how many pool tiles it gave).
    skipped : list of dict
        Sources that gave no tile, with the reason.
    mpp : float
    key : str
        Hash of everything that determines the pool (sources, sizes, settings).
    path : Path or None
        The cache file.
    """

    tiles: np.ndarray
    source_index: np.ndarray
    positions: np.ndarray
    sources: list[dict]
    skipped: list[dict]
    mpp: float
    key: str
    path: Path | None = None
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.tiles.shape[0])

    @property
    def tile_size(self) -> int:
        return int(self.tiles.shape[1])


# --- finding the sources ------------------------------------------------------------------


def parse_mpp_map(items: Iterable[str] | None) -> list[tuple[str, float]]:
    """Parse ``PATTERN=MPP`` strings (shell wildcards matched against the file's path).

    Raises
    ------
    ValueError
        For an item without ``=`` or with a value that is not a positive number.
    """
    out = []
    for item in items or ():
        pattern, sep, value = str(item).rpartition("=")
        try:
            mpp = float(value)
        except ValueError:
            mpp = -1.0
        if not sep or not pattern or not mpp > 0:
            raise ValueError(
                f"--mpp-map {item!r}: write PATTERN=MPP, e.g. '*monuseg*=0.25' (a positive µm/px)."
            )
        out.append((pattern, mpp))
    return out


def find_sources(
    paths: Sequence[str | Path],
    *,
    exclude: Sequence[str] = (),
    mpp_map: Sequence[tuple[str, float]] = (),
    default_mpp: float = 0.5,
) -> list[DataSource]:
    """List the images and slides named by ``paths`` (files or folders, searched recursively).

    Parameters
    ----------
    paths : sequence of path
        Files and folders.
    exclude : sequence of str
        Shell patterns; a file whose path or name matches one is left out.
    mpp_map : sequence of (pattern, mpp)
        µm/px for files whose path matches a pattern (first match wins), before metadata.
    default_mpp : float
        µm/px of sources with neither a pattern nor metadata ("assumed").

    Returns
    -------
    list of DataSource
        Sorted by path, without duplicates. Files that cannot be opened are left out.

    Raises
    ------
    FileNotFoundError
        When a path does not exist.
    ValueError
        When no readable image or slide is found; the message names the paths.
    """
    files: list[Path] = []
    for p in paths:
        p = Path(p).expanduser()
        if not p.exists():
            raise FileNotFoundError(f"--data {p}: no such file or folder.")
        if p.is_dir():
            files += [f for f in sorted(p.rglob("*")) if f.is_file() and _suffix(f) in IMAGE_SUFFIXES + SLIDE_SUFFIXES]
        else:
            files.append(p)
    seen: set[Path] = set()
    sources = []
    unreadable = []
    for f in files:
        f = f.resolve()
        if f in seen or any(_matches(f, pat) for pat in exclude):
            continue
        seen.add(f)
        try:
            sources.append(_describe(f, mpp_map, default_mpp))
        except (SlideError, OSError, ValueError) as exc:
            unreadable.append(f"{f.name} ({str(exc).splitlines()[0][:120]})")
    if not sources:
        named = ", ".join(str(p) for p in paths) or "(nothing)"
        why = f"; unreadable: {'; '.join(unreadable[:5])}" if unreadable else ""
        raise ValueError(
            f"--data {named}: no readable H&E image or slide found (looked for "
            f"{', '.join(IMAGE_SUFFIXES + SLIDE_SUFFIXES)}){why}. Give folders or files of RGB images or slides."
        )
    return sorted(sources, key=lambda s: str(s.path))


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def _matches(path: Path, pattern: str) -> bool:
    return fnmatch.fnmatch(path.as_posix(), pattern) or fnmatch.fnmatch(path.name, pattern)


def _describe(path: Path, mpp_map: Sequence[tuple[str, float]], default_mpp: float) -> DataSource:
    mapped = next((mpp for pat, mpp in mpp_map if _matches(path, pat)), None)
    if _suffix(path) in SLIDE_SUFFIXES:
        with open_slide(path) as slide:
            meta_mpp = slide.mpp
        kind = "slide"
    elif _suffix(path) in IMAGE_SUFFIXES:
        from PIL import Image

        with Image.open(path) as im:
            im.verify()
        meta_mpp = None
        kind = "image"
    else:
        raise ValueError(f"not an image or slide file ({path.suffix or 'no suffix'})")
    if mapped is not None:
        return DataSource(path, kind, float(mapped), "mpp-map")
    if meta_mpp is not None:
        return DataSource(path, kind, float(meta_mpp), "metadata")
    return DataSource(path, kind, float(default_mpp), "assumed")


def _open(source: DataSource) -> Slide:
    if source.kind == "slide":
        slide = open_slide(source.path)
    else:
        from skimage import io

        img = np.asarray(io.imread(source.path))
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=-1)
        if img.ndim != 3 or img.shape[-1] < 3:
            raise ValueError(f"{source.path}: not an RGB image (shape {img.shape}).")
        if img.dtype != np.uint8:
            raise ValueError(f"{source.path}: expected 8-bit RGB, got {img.dtype}.")
        slide = Slide.from_array(np.ascontiguousarray(img[..., :3]), mpp=source.mpp)
    slide.mpp = source.mpp
    return slide


# --- the pool -----------------------------------------------------------------------------


def pool_key(
    sources: Sequence[DataSource], *, n_tiles: int, tile_size: int, mpp: float, seed: int, min_tissue: float
) -> str:
    """Hash of what determines a pool: the sources (name, size, µm/px, kind) and settings.

    Folders and modification times are left out, so that a run moved to another machine with
    the same data resumes."""
    items = [[s.path.name, s.path.stat().st_size, s.mpp, s.kind] for s in sources]
    blob = json.dumps([POOL_VERSION, items, n_tiles, tile_size, mpp, seed, min_tissue])
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def build_pool(
    sources: Sequence[DataSource],
    *,
    n_tiles: int,
    tile_size: int,
    mpp: float = 0.5,
    seed: int = 0,
    min_tissue: float = 0.5,
    cache_dir: str | Path | None = None,
) -> Work[TilePool]:
    """Draw ``n_tiles`` tissue tiles of ``tile_size`` px at ``mpp`` µm/px from the sources.

    A generator yielding :class:`Progress` and returning a :class:`TilePool`. With
    ``cache_dir`` the pool is loaded from / saved to ``cache_dir/pool-<key>.npz``.

    Raises
    ------
    ValueError
        When no source has a tissue area of at least one tile.
    """
    key = pool_key(sources, n_tiles=n_tiles, tile_size=tile_size, mpp=mpp, seed=seed, min_tissue=min_tissue)
    cache = Path(cache_dir) / f"pool-{key}.npz" if cache_dir is not None else None
    if cache is not None and cache.exists():
        yield Progress("pool", 1, 1, f"loading {cache.name}")
        return load_pool(cache)

    candidates: list[np.ndarray] = []
    infos: list[dict] = []
    skipped: list[dict] = []
    usable: list[int] = []
    stride = max(1, tile_size // 4)
    for i, src in enumerate(sources):
        yield Progress("pool", i, len(sources) + n_tiles, f"tissue mask of {src.path.name}")
        info = {"path": str(src.path), "kind": src.kind, "mpp": src.mpp, "mpp_origin": src.mpp_origin}
        info.update(_file_digest(src.path))
        try:
            with _open(src) as slide:
                pos, tissue_px = _tissue_positions(slide, tile_size=tile_size, mpp=mpp, stride=stride, min_tissue=min_tissue)
        except (SlideError, OSError, ValueError) as exc:
            skipped.append({"path": str(src.path), "reason": f"unreadable: {str(exc).splitlines()[0]}"})
            candidates.append(np.zeros((0, 2), np.int64))
            infos.append(info | {"tissue_px": 0})
            continue
        info["tissue_px"] = int(tissue_px)
        infos.append(info)
        candidates.append(pos)
        if len(pos):
            usable.append(i)
        else:
            skipped.append({"path": str(src.path), "reason": f"no {tile_size}-px tile with {min_tissue:.0%} tissue at {mpp} µm/px"})
    if not usable:
        raise ValueError(
            "No tissue tile could be drawn from the --data images: "
            + "; ".join(f"{Path(s['path']).name}: {s['reason']}" for s in skipped[:5])
        )
    weights = np.array([math.sqrt(infos[i]["tissue_px"]) if i in usable else 0.0 for i in range(len(sources))])
    rng = np.random.default_rng([seed, 0x9001])
    which = rng.choice(len(sources), size=n_tiles, p=weights / weights.sum())
    picks = np.empty((n_tiles, 2), np.int64)
    for j, s in enumerate(which):
        base = candidates[s][rng.integers(len(candidates[s]))]
        picks[j] = base + rng.integers(-(stride // 2), stride // 2 + 1, size=2)
    tiles = np.empty((n_tiles, tile_size, tile_size, 3), np.uint8)
    done = len(sources)
    for s in np.unique(which):
        idx = np.nonzero(which == s)[0]
        with _open(sources[s]) as slide:
            size_t = _target_shape(slide, mpp)
            for j in idx:
                y = int(np.clip(picks[j, 0], 0, size_t[0] - tile_size))
                x = int(np.clip(picks[j, 1], 0, size_t[1] - tile_size))
                picks[j] = (y, x)
                tiles[j] = read_tile(slide, y=y, x=x, size=tile_size, mpp=mpp)
                done += 1
                if done % 64 == 0:
                    yield Progress("pool", done, len(sources) + n_tiles, f"tiles of {sources[s].path.name}")
        infos[s]["tiles"] = int(len(idx))
    for info in infos:
        info.setdefault("tiles", 0)
    pool = TilePool(tiles, which.astype(np.int64), picks, infos, skipped, float(mpp), key, cache)
    if cache is not None:
        save_pool(pool, cache)
    yield Progress("pool", len(sources) + n_tiles, len(sources) + n_tiles, "pool ready")
    return pool


def save_pool(pool: TilePool, path: Path) -> None:
    """Write a pool as an uncompressed ``.npz`` (uint8 tiles and JSON metadata), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"sources": pool.sources, "skipped": pool.skipped, "mpp": pool.mpp, "key": pool.key}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, tiles=pool.tiles, source_index=pool.source_index, positions=pool.positions,
                     meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))

    replace_file(path, write)


def load_pool(path: Path) -> TilePool:
    """Read a pool written by :func:`save_pool` (no pickle)."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(z["meta"].tobytes().decode())
        return TilePool(z["tiles"], z["source_index"], z["positions"], meta["sources"], meta["skipped"],
                        float(meta["mpp"]), meta["key"], Path(path))


def _file_digest(path: Path) -> dict:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return {"bytes": path.stat().st_size, "sha256": h.hexdigest()}


def _target_shape(slide: Slide, mpp: float) -> tuple[int, int]:
    h, w = slide.shape
    f = slide.mpp / mpp
    return int(h * f), int(w * f)


def _tissue_positions(slide: Slide, *, tile_size: int, mpp: float, stride: int, min_tissue: float):
    """Candidate tile corners (in training pixels) and the tissue area (training pixels)."""
    level = slide.best_level_for_mpp(MASK_MPP)
    level_mpp = slide.level_mpp(level)
    step = max(1, int(MASK_MPP // level_mpp))
    arr = slide.levels[level]
    if step > 1:
        import dask.array as da

        h, w = (arr.shape[0] // step) * step, (arr.shape[1] // step) * step
        thumb = da.coarsen(np.mean, arr[:h, :w].astype(np.float32), {0: step, 1: step}).compute()
        thumb = thumb.astype(np.uint8)
    else:
        thumb = np.asarray(arr)
    mask = tissue_mask(thumb)
    scale = level_mpp * step / mpp  # training pixels per mask pixel
    pos = tissue_tile_positions(
        mask, tile=tile_size, scale=scale, stride=stride, min_fraction=min_tissue,
        image_shape=_target_shape(slide, mpp),
    )
    return pos, float(mask.sum()) * scale * scale


def read_tile(slide: Slide, *, y: int, x: int, size: int, mpp: float) -> np.ndarray:
    """A ``size × size`` uint8 tile at ``mpp`` µm/px whose corner is (y, x) in pixels of the
    slide resampled to ``mpp`` (read from the nearest finer level, then resized)."""
    from skimage.transform import resize

    level = slide.best_level_for_mpp(mpp)
    f = mpp / slide.level_mpp(level)  # level pixels per training pixel
    ly, lx = int(round(y * f)), int(round(x * f))
    side = max(1, int(round(size * f)))
    region = slide.read_region(Region(level=level, y=ly, x=lx, height=side, width=side))
    if side == size:
        return region
    out = resize(region, (size, size), order=1, anti_aliasing=side > size, preserve_range=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# --- reproducible batches -----------------------------------------------------------------

STAGE_IDS = {"guide": 1, "vae": 2, "unet": 3, "latents": 4}


def step_seed(seed: int, stage: str, step: int) -> int:
    """A 63-bit seed that depends only on (seed, stage, step)."""
    return int(np.random.SeedSequence([seed, STAGE_IDS[stage], step]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def batch_indices(n: int, batch: int, *, seed: int, stage: str, step: int) -> np.ndarray:
    """Indices of the pool tiles of step ``step`` of ``stage`` (with replacement across steps,
    without replacement inside a batch when the pool is large enough)."""
    rng = np.random.default_rng([seed, STAGE_IDS[stage], step, 7])
    return rng.choice(n, size=batch, replace=batch > n)
