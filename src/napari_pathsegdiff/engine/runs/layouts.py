"""Layouts for the style generator: real masks cut into tiles, and a sampler of new layouts.

The sampler follows "prior knowledge about tissue composition" (Öttl et al., ECCV 2024): it
takes the class shapes (connected components) and the tile compositions of real masks, and
makes a new layout by filling a tile with the dominant class of a real composition and then
placing randomly flipped and rotated shapes of the other classes at random positions until
each class covers about the share it had in that composition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ...core.images import list_images, read_mask


@dataclass
class LayoutSampler:
    """Random layouts made of real class shapes.

    Attributes
    ----------
    tile_size : int
        Side of the layouts in pixels.
    shapes : dict
        ``{class id: [bool arrays]}``: connected components of real masks, cropped to their
        bounding boxes (at most ``tile_size`` a side).
    compositions : list of (int, dict)
        ``(dominant class id, {class id: share of pixels})`` of real mask tiles.
    """

    tile_size: int
    shapes: dict[int, list[np.ndarray]] = field(default_factory=dict)
    compositions: list[tuple[int, dict[int, float]]] = field(default_factory=list)

    @property
    def class_ids(self) -> list[int]:
        ids = set(self.shapes)
        for dominant, shares in self.compositions:
            ids.add(dominant)
            ids.update(shares)
        return sorted(ids)

    @classmethod
    def from_masks(
        cls,
        masks: Sequence[np.ndarray],
        *,
        tile_size: int,
        tiles_per_mask: int = 16,
        min_area: int = 16,
        max_shapes: int = 500,
        seed: int = 0,
    ) -> LayoutSampler:
        """Collect shapes and tile compositions of real masks (class ids per pixel).

        Raises
        ------
        ValueError
            When no mask is at least ``tile_size`` a side.
        """
        from skimage.measure import label, regionprops

        rng = np.random.default_rng([seed, 0x1A7])
        sampler = cls(tile_size=int(tile_size))
        t = int(tile_size)
        for mask in masks:
            mask = np.asarray(mask)
            h, w = mask.shape
            if h < t or w < t:
                continue
            for _ in range(tiles_per_mask):
                y, x = rng.integers(0, h - t + 1), rng.integers(0, w - t + 1)
                crop = mask[y : y + t, x : x + t]
                ids, counts = np.unique(crop, return_counts=True)
                shares = {int(i): float(c) / crop.size for i, c in zip(ids, counts)}
                sampler.compositions.append((int(ids[np.argmax(counts)]), shares))
            for cid in np.unique(mask):
                regions = regionprops(label(mask == cid, connectivity=1))
                for r in regions:
                    if r.area < min_area:
                        continue
                    img = r.image
                    if img.shape[0] > t or img.shape[1] > t:
                        y = rng.integers(0, max(1, img.shape[0] - t + 1))
                        x = rng.integers(0, max(1, img.shape[1] - t + 1))
                        img = img[y : y + t, x : x + t]
                        if not img.any():
                            continue
                    sampler.shapes.setdefault(int(cid), []).append(np.ascontiguousarray(img))
        if not sampler.compositions:
            raise ValueError(
                f"No mask is at least {t}x{t} px: the layout sampler needs masks as large as a tile."
            )
        for cid, items in sampler.shapes.items():
            if len(items) > max_shapes:
                keep = rng.choice(len(items), size=max_shapes, replace=False)
                sampler.shapes[cid] = [items[i] for i in sorted(keep)]
        return sampler

    def sample(self, rng: np.random.Generator, *, max_shapes: int = 200) -> np.ndarray:
        """One layout ``(tile_size, tile_size)`` of uint8 class ids."""
        t = self.tile_size
        dominant, shares = self.compositions[int(rng.integers(len(self.compositions)))]
        layout = np.full((t, t), dominant, dtype=np.uint8)
        others = sorted((c for c in shares if c != dominant and self.shapes.get(c)), key=lambda c: -shares[c])
        placed = 0
        for cid in others:
            target = shares[cid] * t * t
            pool = self.shapes[cid]
            tries = 0
            while (layout == cid).sum() < target and tries < max_shapes and placed < 4 * max_shapes:
                shape = pool[int(rng.integers(len(pool)))]
                if rng.integers(2):
                    shape = shape[:, ::-1]
                shape = np.rot90(shape, int(rng.integers(4)))
                sh, sw = shape.shape
                y = int(rng.integers(-sh // 2, t - sh // 2 + 1))
                x = int(rng.integers(-sw // 2, t - sw // 2 + 1))
                ys, xs = slice(max(y, 0), min(y + sh, t)), slice(max(x, 0), min(x + sw, t))
                part = shape[ys.start - y : ys.stop - y, xs.start - x : xs.stop - x]
                layout[ys, xs][part] = cid
                tries += 1
                placed += 1
        return layout


def read_layout_masks(folder: str | Path) -> list[tuple[Path, np.ndarray]]:
    """Every mask file of ``folder`` (PNG, JPEG, TIFF) as ``(path, class ids)``."""
    return [(p, read_mask(p)) for p in list_images(folder, what="layout mask")]


def layout_tiles(
    masks: Sequence[tuple[Path, np.ndarray]], *, n: int, tile_size: int, multiple: int, seed: int = 0
) -> list[tuple[str, np.ndarray]]:
    """``n`` layouts cut from masks, cycling over them: ``(description, layout)``.

    A mask of exactly ``tile_size`` (or any size that is a multiple of ``multiple`` and at most
    ``tile_size``) is used whole; a larger one gives a seeded random ``tile_size`` crop.

    Raises
    ------
    ValueError
        For a mask smaller than ``multiple`` or whose sides do not fit; the message names it.
    """
    rng = np.random.default_rng([seed, 0x1A8])
    out = []
    for i in range(n):
        path, mask = masks[i % len(masks)]
        h, w = mask.shape
        if h <= tile_size and w <= tile_size:
            if h % multiple or w % multiple:
                raise ValueError(
                    f"Layout {path} is {h}x{w} px: give layouts of {tile_size}x{tile_size} px, or "
                    f"sides that are multiples of {multiple} px, or larger masks to crop from."
                )
            out.append((f"{path.name}", mask))
            continue
        th, tw = min(h, tile_size), min(w, tile_size)
        th, tw = th - th % multiple, tw - tw % multiple
        if th == 0 or tw == 0:
            raise ValueError(f"Layout {path} is {h}x{w} px, too thin for tiles of {multiple} px or more.")
        y, x = int(rng.integers(0, h - th + 1)), int(rng.integers(0, w - tw + 1))
        out.append((f"{path.name}[{y}:{y + th},{x}:{x + tw}]", np.ascontiguousarray(mask[y : y + th, x : x + tw])))
    return out
