"""What every head shares: classes and colours, labels in and out, the feature check, errors.

A head is a per-pixel classifier over the feature maps of one extractor. Whatever its kind,
it is a diffusers :class:`~diffusers.configuration_utils.ConfigMixin` whose ``config`` holds
``class_ids``, ``class_names``, ``class_colors``, ``mpp``, ``feature_config``,
``feature_identity``, ``in_channels`` and ``strides``, and it implements:

- :meth:`HeadMixin.predict_proba`: feature maps → per-pixel class probabilities;
- :meth:`HeadMixin.write_folder` / ``read_folder`` (a classmethod): one folder, no pickle.

The kinds live in :mod:`~napari_pathsegdiff.models.heads.registry`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: Colours given to classes that come without one (index = position in the class list).
PALETTE = (
    "#000000", "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4",
    "#46f0f0", "#f032e6", "#bcf60c", "#fabebe", "#008080", "#e6beff",
)


class HeadError(ValueError):
    """A head folder, file or combination that cannot be used; the message says which and why."""


class HeadMixin:
    """Class bookkeeping and the feature check shared by every kind of head.

    Subclasses are ConfigMixins with the config fields listed in the module docstring and
    implement :meth:`predict_proba`, :meth:`write_folder` and ``read_folder``.
    """

    #: Registry name of the kind (``"fcn"``, ``"forest"``).
    head_kind: str = ""
    #: Dihedral transforms averaged at prediction by default on the command line (``--tta auto``):
    #: 1 for heads trained with dihedral augmentation, more for those that are not.
    default_tta: int = 1

    # --- what the engine reads -------------------------------------------------------------
    @property
    def mpp(self) -> float | None:
        """µm/px the head analyses at (None: the pixels it is given, as they are)."""
        return None if self.config.mpp is None else float(self.config.mpp)

    @property
    def feature_config(self) -> dict:
        """The config of the features the head needs (for ``build_extractor``)."""
        return dict(self.config.feature_config or {})

    # --- classes ---------------------------------------------------------------------------
    @property
    def class_ids(self) -> list[int]:
        return list(self.config.class_ids)

    @property
    def class_names(self) -> list[str]:
        return list(self.config.class_names or default_class_names(self.class_ids))

    @property
    def class_colors(self) -> list[str]:
        return list(self.config.class_colors or default_class_colors(len(self.class_ids)))

    def encode_labels(self, mask: np.ndarray, *, unlabelled: int | None = None, name: str = "mask") -> np.ndarray:
        """Class ids → output indices (int64), ``-1`` where ``mask == unlabelled``.

        Raises :class:`HeadError` naming the mask and the unknown ids.
        """
        mask = np.asarray(mask)
        lut = np.full(256, -2, dtype=np.int64)
        lut[self.class_ids] = np.arange(len(self.class_ids))
        if unlabelled is not None:
            lut[int(unlabelled)] = -1
        if mask.size and (mask.min() < 0 or mask.max() > 255):
            raise HeadError(f"{name} holds values {mask.min()}..{mask.max()}: class ids must be 0..255.")
        out = lut[mask.astype(np.int64)]
        if (out == -2).any():
            unknown = sorted(set(np.unique(mask[out == -2]).tolist()))
            raise HeadError(
                f"{name} holds class id(s) {unknown} that the head does not know; its classes "
                f"are {self.describe_classes()}. Relabel the mask or train a new head."
            )
        return out

    def decode_indices(self, indices: np.ndarray) -> np.ndarray:
        """Output indices → the user's class ids, uint8."""
        return np.asarray(self.class_ids, dtype=np.uint8)[np.asarray(indices)]

    def describe_classes(self) -> str:
        return ", ".join(f"{i} ({n})" for i, n in zip(self.class_ids, self.class_names))

    # --- features ---------------------------------------------------------------------------
    def check_compatible(self, extractor) -> None:
        """Raise :class:`HeadError` unless ``extractor`` gives the features this head needs."""
        need, got = self.config.feature_identity, extractor.identity
        if need != got:
            raise HeadError(
                f"This head was trained on features {need!r} but the extractor gives {got!r}. "
                f"Use the features it needs ({describe_feature_config(self.config.feature_config)}) "
                f"or train a head for these features."
            )
        if list(extractor.channels) != list(self.config.in_channels) or list(extractor.strides) != list(
            self.config.strides
        ):
            raise HeadError(
                f"The extractor's feature maps (channels {extractor.channels}, strides "
                f"{extractor.strides}) differ from the head's ({self.config.in_channels}, "
                f"{self.config.strides})."
            )

    # --- what each kind implements ------------------------------------------------------------
    @property
    def device(self):
        """Torch device the feature maps should be on for :meth:`predict_proba`."""
        import torch

        return torch.device("cpu")

    def predict_proba(self, maps, *, margin: int = 0):
        """Class probabilities ``(B, K, H, W)`` (float32 torch tensor) from feature maps.

        Parameters
        ----------
        maps : list of torch.Tensor
            One tensor ``(B, C_i, H / s_i, W / s_i)`` per feature map, as the extractor gives them.
        margin : int
            Pixels on every side whose probabilities are not needed (a tile's halo): a head
            may leave them at zero to save time.
        """
        raise NotImplementedError

    def write_folder(self, folder: Path) -> None:
        """Write the head's files into the (new, empty) ``folder``."""
        raise NotImplementedError


# --- helpers -----------------------------------------------------------------------------------
def default_class_names(class_ids: list[int]) -> list[str]:
    return ["background" if c == 0 else f"class {c}" for c in class_ids]


def default_class_colors(n: int) -> list[str]:
    return [PALETTE[i % len(PALETTE)] for i in range(n)]


def describe_feature_config(config: dict | None) -> str:
    """A short human phrase for a feature config, e.g. ``--features diffusion --backbone X``."""
    if not config:
        return "unknown features"
    kind = config.get("kind", "?")
    parts = config.get("parts") or [] if kind == "fused" else [config]
    text = "--features " + "+".join(str(p.get("kind")) for p in parts)
    with_backbone = next((p for p in parts if "backbone" in p), None)
    return text + (_describe_backbone(with_backbone) if with_backbone else "")


def _describe_backbone(config: dict) -> str:
    text = f" --backbone {config.get('backbone')}"
    extra = {k: v for k, v in config.items() if k not in ("kind", "backbone")}
    return text + (f" with {extra}" if extra else "")


def check_classes(class_ids, class_names, class_colors) -> None:
    """Raise ValueError unless the class ids are distinct 0..255 with one name and colour each."""
    ids = [int(c) for c in class_ids]
    if len(ids) < 1 or len(set(ids)) != len(ids) or not all(0 <= c <= 255 for c in ids):
        raise ValueError(f"Class ids must be distinct integers in 0..255, got {class_ids}.")
    for what, values in (("names", class_names), ("colors", class_colors)):
        if values is not None and len(values) != len(ids):
            raise ValueError(f"Need one class {what[:-1]} per class id {ids}, got {values}.")
    for color in class_colors or []:
        if not (isinstance(color, str) and len(color) == 7 and color[0] == "#"):
            raise ValueError(f"Class colours are '#rrggbb' strings, got {color!r}.")
        int(color[1:], 16)


def check_maps(in_channels, strides) -> None:
    """Raise ValueError unless there is one stride per map, each a multiple of the smallest."""
    if len(in_channels) == 0 or len(in_channels) != len(strides):
        raise ValueError(f"Need one stride per feature map: channels {in_channels}, strides {strides}.")
    if any(int(s) < 1 for s in strides) or any(int(s) % min(strides) for s in strides):
        raise ValueError(f"Strides must be >= 1 and multiples of the smallest, got {strides}.")


def json_default(obj):
    """``json.dumps`` fallback for numpy scalars and paths."""
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"Not JSON serialisable: {type(obj).__name__}")
