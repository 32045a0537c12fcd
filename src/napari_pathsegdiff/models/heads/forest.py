"""The ``forest`` head: a tree ensemble on per-pixel feature vectors, as ilastik, QuPath and convpaint do.

A pixel's vector is built from the feature maps in three steps (:meth:`ForestHead.pixel_features`):

1. every map is brought to the tile's pixels by bilinear upsampling;
2. the maps of each extractor part (a *group*: the diffusion maps, the filter bank, ...) that is
   wider than ``reduce_above`` channels are standardised and projected on their first
   ``components`` principal components, fitted on the training pixels, so that 192 diffusion
   channels do not swamp 60 filter-bank channels in the trees' feature sampling (the
   projection runs at each map's own stride before the upsampling: the same result, 16 times
   cheaper for stride-4 maps);
3. multi-scale context: the vector blurred with Gaussians of ``context_sigmas`` pixels
   (computed on a downsampled copy), as ilastik's scales and convpaint's pyramid.

The trees are scikit-learn's (extremely randomised trees by default: 5-10 times faster to fit
than a random forest, as accurate here; ``algorithm="random_forest"`` gives Breiman's).

A forest head is one folder: ``config.json`` (the settings, classes, µm/px and the features it
needs) and ``forest.safetensors`` holding the projections and **the trees as plain arrays**
(children, split feature, threshold, leaf class fractions). Loading validates the arrays and
hands them to scikit-learn's tree structure: nothing is unpickled and no code in the folder
runs. skops or ONNX would also avoid pickle, but they add a dependency and a second format
for what are five arrays per tree.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config

from ..strict_folder import CONFIG_FILE, read_config
from .base import HeadError, HeadMixin, check_classes, check_maps, default_class_colors, default_class_names

WEIGHTS = "forest.safetensors"
ALGORITHMS = ("extra_trees", "random_forest")


class ForestHead(HeadMixin, ConfigMixin):
    """Per-pixel tree-ensemble classifier over the feature maps of one extractor.

    Parameters
    ----------
    in_channels, strides : list of int
        Channels and stride of each feature map.
    class_ids, class_names, class_colors : list
        As :class:`~napari_pathsegdiff.models.heads.fcn.SegmentationHead`.
    mpp : float or None
        µm/px of the analysis.
    feature_config : dict
        ``FeatureExtractor.config()`` of the features it was trained on.
    feature_identity : str
        ``FeatureExtractor.identity`` it needs; other extractors are refused.
    groups : list of int, optional
        Group (extractor part) of each map; default one group per distinct stride run.
    components : int
        Principal components kept of each reduced group.
    reduce_above : int
        Groups with more channels than this are reduced; narrower ones are used as they are.
    context_sigmas : list of float
        Gaussian scales (pixels) of the context appended to each pixel's vector.
    algorithm : str
        ``"extra_trees"`` or ``"random_forest"``.
    n_estimators, max_depth, min_samples_leaf : int
        Tree-ensemble settings.
    predict_stride : int
        Classify every ``predict_stride``-th pixel (vectors averaged over the cell) and upsample
        the probabilities bilinearly; 1 classifies every pixel.
    seed : int
        Seed of the trees.
    """

    config_name = CONFIG_FILE
    head_kind = "forest"
    #: Trees are not trained on flipped and rotated tiles: averaging the 8 orientations at
    #: prediction gained 0.04-0.08 Dice on the tissue sets (BENCHMARKS.md).
    default_tta = 8

    @register_to_config
    def __init__(
        self,
        in_channels: list[int],
        strides: list[int],
        class_ids: list[int],
        class_names: list[str] | None = None,
        class_colors: list[str] | None = None,
        mpp: float | None = None,
        feature_config: dict | None = None,
        feature_identity: str = "",
        groups: list[int] | None = None,
        components: int = 16,
        reduce_above: int = 64,
        context_sigmas: list[float] | None = (4.0, 16.0),
        algorithm: str = "extra_trees",
        n_estimators: int = 32,
        max_depth: int = 16,
        min_samples_leaf: int = 2,
        predict_stride: int = 2,
        seed: int = 0,
    ):
        check_maps(in_channels, strides)
        check_classes(class_ids, class_names, class_colors)
        if groups is not None and (len(groups) != len(in_channels) or list(groups) != sorted(groups)):
            raise ValueError(f"Need one non-decreasing group index per feature map, got {groups}.")
        if algorithm not in ALGORITHMS:
            raise ValueError(f"Unknown tree algorithm {algorithm!r}: use one of {', '.join(ALGORITHMS)}.")
        if components < 1 or n_estimators < 1 or max_depth < 1 or min_samples_leaf < 1 or predict_stride < 1:
            raise ValueError("components, n_estimators, max_depth, min_samples_leaf and predict_stride must be >= 1.")
        if any(float(s) <= 0 for s in context_sigmas or []):
            raise ValueError(f"Context scales must be > 0 pixels, got {context_sigmas}.")
        if sum(int(c) for c in in_channels) == 0:
            raise ValueError("A forest head needs features with at least one channel.")
        self.projections_: list[tuple[np.ndarray, np.ndarray] | None] | None = None
        self.trees_: list | None = None

    # --- structure ----------------------------------------------------------------------------
    @property
    def map_groups(self) -> list[list[int]]:
        """Map indices of each group, in order."""
        groups = self.config.groups or list(range(len(self.config.in_channels)))
        out: dict[int, list[int]] = {}
        for i, g in enumerate(groups):
            out.setdefault(int(g), []).append(i)
        return list(out.values())

    def group_width(self, maps: list[int]) -> int:
        """Channels of a group before reduction."""
        return sum(int(self.config.in_channels[i]) for i in maps)

    def reduces(self, maps: list[int]) -> bool:
        """Whether the group of these maps is projected on principal components."""
        return self.group_width(maps) > int(self.config.reduce_above)

    @property
    def base_width(self) -> int:
        """Channels of a pixel's vector before the context."""
        return sum(min(int(self.config.components), self.group_width(m)) if self.reduces(m) else self.group_width(m)
                   for m in self.map_groups)

    @property
    def n_features(self) -> int:
        """Length of a pixel's vector (base plus context)."""
        return self.base_width * (1 + len(self.config.context_sigmas or []))

    @property
    def fitted(self) -> bool:
        return self.trees_ is not None and self.projections_ is not None

    # --- pixel vectors -------------------------------------------------------------------------
    def fit_projections(self, maps_sample: list[list[np.ndarray]], rng: np.random.Generator) -> None:
        """Fit the standardisation + PCA of every reduced group.

        Parameters
        ----------
        maps_sample : list of list of ndarray
            Per tile, its feature maps ``(C_i, h_i, w_i)``.
        rng : numpy Generator
            Draws the pixels the projections are fitted on (at most 20,000).
        """
        projections = []
        for group in self.map_groups:
            if not self.reduces(group):
                projections.append(None)
                continue
            x = _group_pixels(maps_sample, group, [int(self.config.strides[i]) for i in group], rng)
            mean = x.mean(0)
            std = np.maximum(x.std(0), 1e-6)
            z = (x - mean) / std
            k = min(int(self.config.components), z.shape[1])
            _, _, vt = np.linalg.svd(z - z.mean(0), full_matrices=False)
            weight = (vt[:k] / std[None, :]).astype(np.float32)  # (k, C): standardise, then project
            bias = (-(weight @ mean)).astype(np.float32)
            projections.append((weight, bias))
        self.projections_ = projections

    def pixel_features(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """Vectors ``(B, n_features, H / p, W / p)`` (float32) on the classification grid.

        ``p`` is ``predict_stride``: a cell's vector is its pixels' mean (maps finer than the
        grid are averaged, coarser ones upsampled bilinearly to the cells' centres), and the
        context blurs run on that grid.
        """
        if self.projections_ is None:
            raise HeadError("This forest head has no fitted projections: train it first.")
        strides = [int(s) for s in self.config.strides]
        p = int(self.config.predict_stride)
        height, width = maps[0].shape[-2] * strides[0], maps[0].shape[-1] * strides[0]
        size = (-(-height // p), -(-width // p))
        parts = []
        for group, proj in zip(self.map_groups, self.projections_):
            start, total = 0, None
            for i in group:
                x = maps[i].float()
                c = x.shape[1]
                if proj is not None:
                    x = torch.einsum("kc,bchw->bkhw", torch.from_numpy(proj[0][:, start : start + c]), x)
                start += c
                x = _to_grid(x, strides[i], p, size)
                if proj is None:
                    parts.append(x)
                else:
                    total = x if total is None else total + x
            if proj is not None:
                parts.append(total + torch.from_numpy(proj[1])[None, :, None, None])
        base = torch.cat(parts, dim=1)
        context = [_blur(base, float(s) / p) for s in self.config.context_sigmas or []]
        return torch.cat([base, *context], dim=1) if context else base

    # --- the head interface --------------------------------------------------------------------
    def predict_proba(self, maps: list[torch.Tensor], *, margin: int = 0) -> torch.Tensor:
        """Class probabilities ``(B, K, H, W)``: the trees' mean leaf class fractions.

        ``margin`` pixels on every side (a tile's halo) are not classified and hold zeros;
        their features still give context to the pixels inside.
        """
        if not self.fitted:
            raise HeadError("This forest head is not trained: train it before predicting.")
        p = int(self.config.predict_stride)
        strides = [int(s) for s in self.config.strides]
        h, w = maps[0].shape[-2] * strides[0], maps[0].shape[-1] * strides[0]
        with torch.inference_mode():
            x = self.pixel_features([m.cpu() for m in maps])
            b, d, gh, gw = x.shape
            m = int(margin) // p if 0 < 2 * int(margin) < min(h, w) else 0
            core = x[:, :, m : gh - m, m : gw - m].permute(0, 2, 3, 1)
            ch, cw = core.shape[1:3]
            probs = self.predict_vectors(core.reshape(-1, d).numpy(), threads=max(1, torch.get_num_threads()))
            probs = torch.from_numpy(probs).reshape(b, ch, cw, -1).permute(0, 3, 1, 2)
            if m:  # the cells around the core give the bilinear upsampling its neighbours
                probs = F.pad(probs, (1, 1, 1, 1), mode="replicate")
            up = F.interpolate(probs, scale_factor=p, mode="bilinear", align_corners=False) if p > 1 else probs
            out = torch.zeros((b, up.shape[1], h, w), dtype=torch.float32)
            y0 = m * p - (p if m else 0)
            hh, ww = min(up.shape[2], h - y0), min(up.shape[3], w - y0)
            out[:, :, y0 : y0 + hh, y0 : y0 + ww] = up[:, :, :hh, :ww]
            return out

    def predict_vectors(self, x: np.ndarray, *, threads: int = 2) -> np.ndarray:
        """Mean class fractions of the trees for vectors ``(N, n_features)``: ``(N, K)`` float32."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise HeadError(f"The forest takes vectors of {self.n_features} features, got {x.shape}.")
        k = len(self.class_ids)
        trees = self.trees_

        def run(chunk):
            total = np.zeros((len(x), k), np.float64)
            for tree in chunk:
                total += tree.predict(x).reshape(len(x), k)
            return total

        chunks = [trees[i::threads] for i in range(max(1, min(threads, len(trees))))]
        with ThreadPoolExecutor(len(chunks)) as pool:  # scikit-learn's tree traversal releases the GIL
            total = sum(pool.map(run, chunks))
        return (total / len(trees)).astype(np.float32)

    def fit_vectors(self, x: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None,
                    *, threads: int = 2) -> None:
        """Fit the trees on vectors ``(N, n_features)`` and output indices ``y`` (0..K-1)."""
        from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier

        cls = ExtraTreesClassifier if self.config.algorithm == "extra_trees" else RandomForestClassifier
        model = cls(
            n_estimators=int(self.config.n_estimators), max_depth=int(self.config.max_depth),
            min_samples_leaf=int(self.config.min_samples_leaf), max_features="sqrt",
            n_jobs=threads, random_state=int(self.config.seed),
        )
        model.fit(np.ascontiguousarray(x, dtype=np.float32), y, sample_weight=sample_weight)
        # trees predict fractions over the classes they saw: map them to all K outputs
        self.trees_ = [_widen(e.tree_, model.classes_, len(self.class_ids), self.n_features)
                       for e in model.estimators_]

    # --- folder --------------------------------------------------------------------------------
    def write_folder(self, folder: Path) -> None:
        """``config.json`` and ``forest.safetensors`` (projections and trees as arrays)."""
        from safetensors.numpy import save_file

        if not self.fitted:
            raise HeadError("This forest head is not trained: nothing to save.")
        arrays = {}
        for g, proj in enumerate(self.projections_):
            if proj is not None:
                arrays[f"projection.{g}.weight"], arrays[f"projection.{g}.bias"] = proj
        arrays.update(_trees_to_arrays(self.trees_))
        folder = Path(folder)
        self.save_config(folder)
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(folder / WEIGHTS))

    @classmethod
    def read_folder(cls, folder: Path) -> "ForestHead":
        """The forest head saved in ``folder``: config and arrays validated, nothing unpickled."""
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        folder = Path(folder)
        config = read_config(folder, cls, error=HeadError, what="Head")
        weights = folder / WEIGHTS
        if not weights.is_file():
            raise HeadError(f"Head weights {weights} are missing: the head folder is incomplete.")
        try:
            head = cls.from_config(config)
        except (TypeError, ValueError, KeyError) as exc:
            raise HeadError(f"Head config {folder / CONFIG_FILE} is invalid: {exc}") from exc
        try:
            arrays = load_file(str(weights))
        except (SafetensorError, OSError, ValueError) as exc:
            raise HeadError(f"Head weights {weights} are corrupt or not a safetensors file: {exc}") from exc
        try:
            head.projections_ = _projections_from_arrays(head, arrays)
            head.trees_ = _trees_from_arrays(arrays, n_features=head.n_features, n_classes=len(head.class_ids))
        except (KeyError, ValueError) as exc:
            raise HeadError(f"Head weights {weights} do not match {folder / CONFIG_FILE}: {exc}") from exc
        return head


def new_forest_head(extractor, class_ids: list[int], *, class_names=None, class_colors=None,
                    mpp: float | None = None, **settings) -> ForestHead:
    """An untrained forest head for the features of ``extractor`` (one group per extractor part)."""
    class_ids = [int(c) for c in class_ids]
    parts = getattr(extractor, "parts", None) or [extractor]
    groups = [g for g, part in enumerate(parts) for _ in part.channels]
    return ForestHead(
        in_channels=list(extractor.channels), strides=list(extractor.strides), class_ids=class_ids,
        class_names=list(class_names) if class_names else default_class_names(class_ids),
        class_colors=list(class_colors) if class_colors else default_class_colors(len(class_ids)),
        mpp=extractor.mpp if mpp is None else float(mpp), feature_config=extractor.config(),
        feature_identity=extractor.identity, groups=groups, **settings,
    )


# --- pixel-vector helpers ---------------------------------------------------------------------
def _upsample(x: torch.Tensor, stride: int, height: int, width: int) -> torch.Tensor:
    if stride == 1:
        return x
    return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)


def _to_grid(x: torch.Tensor, stride: int, grid: int, size: tuple[int, int]) -> torch.Tensor:
    """A map of ``stride`` on the grid of cells of ``grid`` pixels (``size`` cells)."""
    if stride == grid:
        return x
    if stride < grid and grid % stride == 0:
        return F.avg_pool2d(x, grid // stride, ceil_mode=True)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of ``x`` (B, C, H, W), computed on a copy downsampled by up to 4 (σ ≥ 1 px there)."""
    f = int(max(1, min(4, sigma)))
    h, w = x.shape[-2:]
    small = F.avg_pool2d(x, f, ceil_mode=True) if f > 1 else x
    s = sigma / f
    radius = int(math.ceil(3 * s))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (t / s) ** 2)
    kernel = kernel / kernel.sum()
    c = small.shape[1]
    pad = min(radius, small.shape[-1] - 1, small.shape[-2] - 1)
    y = small
    if pad < radius:  # tiny maps: replicate-pad to the kernel's reach
        y = F.pad(y, (radius, radius, radius, radius), mode="replicate")
    else:
        y = F.pad(y, (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.conv2d(y, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    if f > 1:
        y = F.interpolate(y, scale_factor=f, mode="bilinear", align_corners=False)[:, :, :h, :w]
    return y


def _group_pixels(maps_sample, group, strides, rng, max_pixels: int = 20_000) -> np.ndarray:
    """Pixels ``(N, C)`` of a group's maps, at the group's finest stride, drawn from all tiles."""
    finest = min(strides)
    rows = []
    per_tile = max(1, max_pixels // max(1, len(maps_sample)))
    for maps in maps_sample:
        ref = maps[group[strides.index(finest)]]
        h, w = ref.shape[-2:]
        x = torch.cat([_upsample(torch.from_numpy(np.asarray(maps[i], np.float32))[None], s // finest, h, w)
                       for i, s in zip(group, strides)], dim=1)[0]
        flat = x.reshape(x.shape[0], -1).T.numpy()
        take = rng.choice(len(flat), size=min(per_tile, len(flat)), replace=False)
        rows.append(flat[take])
    return np.concatenate(rows).astype(np.float64)


# --- trees as arrays --------------------------------------------------------------------------
def _widen(tree, classes_seen: np.ndarray, n_classes: int, n_features: int):
    """A tree whose leaf values cover all ``n_classes`` outputs (zeros for classes it never saw)."""
    state = tree.__getstate__()
    values = state["values"]
    if values.shape[-1] == n_classes:
        return tree
    wide = np.zeros((values.shape[0], 1, n_classes), dtype=np.float64)
    wide[:, :, np.asarray(classes_seen, dtype=np.int64)] = values
    return _make_tree(state["nodes"], wide, n_features=n_features, n_classes=n_classes, max_depth=state["max_depth"])


def _make_tree(nodes: np.ndarray, values: np.ndarray, *, n_features: int, n_classes: int, max_depth: int):
    from sklearn.tree._tree import Tree

    tree = Tree(int(n_features), np.array([n_classes], dtype=np.intp), 1)
    tree.__setstate__({"max_depth": int(max_depth), "node_count": len(nodes), "nodes": nodes,
                       "values": np.ascontiguousarray(values, dtype=np.float64)})
    return tree


def _trees_to_arrays(trees) -> dict[str, np.ndarray]:
    states = [t.__getstate__() for t in trees]
    nodes = np.concatenate([s["nodes"] for s in states])
    offsets = np.cumsum([0] + [len(s["nodes"]) for s in states]).astype(np.int64)
    return {
        "trees.offsets": offsets,
        "trees.max_depth": np.array([s["max_depth"] for s in states], dtype=np.int64),
        "trees.left": nodes["left_child"].astype(np.int32),
        "trees.right": nodes["right_child"].astype(np.int32),
        "trees.feature": nodes["feature"].astype(np.int32),
        "trees.threshold": nodes["threshold"].astype(np.float64),
        "trees.missing_left": nodes["missing_go_to_left"].astype(np.uint8),
        "trees.value": np.concatenate([s["values"][:, 0, :] for s in states]).astype(np.float32),
    }


def _trees_from_arrays(arrays: dict[str, np.ndarray], *, n_features: int, n_classes: int) -> list:
    """Validated trees from the arrays of :func:`_trees_to_arrays`."""
    from sklearn.tree._tree import NODE_DTYPE

    offsets, depth = arrays["trees.offsets"], arrays["trees.max_depth"]
    left, right, feature = arrays["trees.left"], arrays["trees.right"], arrays["trees.feature"]
    threshold, missing, value = arrays["trees.threshold"], arrays["trees.missing_left"], arrays["trees.value"]
    n = len(left)
    if not (len(offsets) >= 2 and offsets[0] == 0 and offsets[-1] == n and (np.diff(offsets) > 0).all()
            and len(depth) == len(offsets) - 1):
        raise ValueError("tree offsets are inconsistent")
    if not all(len(a) == n for a in (right, feature, threshold, missing, value)) or value.shape[1:] != (n_classes,):
        raise ValueError(f"tree arrays differ in length or do not have {n_classes} classes")
    trees = []
    for t in range(len(offsets) - 1):
        a, b = int(offsets[t]), int(offsets[t + 1])
        count = b - a
        lt, rt, ft = left[a:b].astype(np.int64), right[a:b].astype(np.int64), feature[a:b].astype(np.int64)
        leaf = lt == -1
        if (leaf != (rt == -1)).any() or (lt[~leaf] <= np.arange(count)[~leaf]).any() or (lt >= count).any() \
                or (rt[~leaf] <= np.arange(count)[~leaf]).any() or (rt >= count).any():
            raise ValueError(f"tree {t} has children outside the tree")
        if ((ft[~leaf] < 0) | (ft[~leaf] >= n_features)).any():
            raise ValueError(f"tree {t} splits on features outside 0..{n_features - 1}")
        nodes = np.zeros(count, dtype=NODE_DTYPE)
        nodes["left_child"], nodes["right_child"], nodes["feature"] = lt, rt, np.where(leaf, -2, ft)
        nodes["threshold"], nodes["missing_go_to_left"] = threshold[a:b], missing[a:b]
        nodes["n_node_samples"], nodes["weighted_n_node_samples"] = 1, 1.0
        trees.append(_make_tree(nodes, value[a:b, None, :], n_features=n_features, n_classes=n_classes,
                                max_depth=int(depth[t])))
    return trees


def _projections_from_arrays(head: ForestHead, arrays: dict[str, np.ndarray]) -> list:
    out = []
    for g, group in enumerate(head.map_groups):
        if not head.reduces(group):
            out.append(None)
            continue
        weight, bias = arrays[f"projection.{g}.weight"], arrays[f"projection.{g}.bias"]
        k = min(int(head.config.components), head.group_width(group))
        if weight.shape != (k, head.group_width(group)) or bias.shape != (k,):
            raise ValueError(f"projection {g} has shape {weight.shape}, expected {(k, head.group_width(group))}")
        out.append((weight.astype(np.float32), bias.astype(np.float32)))
    return out
