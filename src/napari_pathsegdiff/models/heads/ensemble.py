"""The ``ensemble`` head: one head per part of fused features, their probabilities averaged.

No single features win everywhere (BENCHMARKS.md, "Features x heads"): the filter bank is best
on nuclei, the CNN features on tissue. An FCN on each, averaged, is close to the better of the
two on every validation set, and above both on some. The ensemble reads the maps of fused
features (:class:`~napari_pathsegdiff.models.fused_features.FusedFeatures`, e.g.
``classic+cnn``) and hands each *member* the maps of its own part, so each member is an
ordinary head of its part's features, trained and saved as such.

An ensemble head is one folder: ``config.json`` (classes, µm/px, the fused features it needs,
the member kinds) and one sub-folder per member, ``member-0``, ``member-1``, ..., each a head
folder of its kind.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config

from ..strict_folder import CONFIG_FILE, read_config
from .base import HeadError, HeadMixin, check_classes, check_maps, default_class_colors, default_class_names

MEMBER_FOLDER = "member-{}"


class EnsembleHead(HeadMixin, ConfigMixin):
    """Heads of the parts of fused features, their class probabilities averaged.

    Parameters
    ----------
    in_channels, strides : list of int
        Channels and stride of each feature map of the fused features.
    class_ids, class_names, class_colors : list
        As :class:`~napari_pathsegdiff.models.heads.fcn.SegmentationHead`; every member has
        the same class ids, in the same order.
    mpp : float or None
        µm/px of the analysis.
    feature_config : dict
        ``FeatureExtractor.config()`` of the fused features.
    feature_identity : str
        ``FeatureExtractor.identity`` of the fused features.
    part_maps : list of int
        Number of maps of each part, in order (``len(part.channels)``).
    member_kinds : list of str
        Head kind of each part's member.
    """

    config_name = CONFIG_FILE
    head_kind = "ensemble"

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
        part_maps: list[int] = (),
        member_kinds: list[str] = (),
    ):
        check_maps(in_channels, strides)
        check_classes(class_ids, class_names, class_colors)
        if len(part_maps) < 2 or len(member_kinds) != len(part_maps):
            raise ValueError(f"An ensemble needs one member kind per part (two or more), got parts "
                             f"{list(part_maps)} and kinds {list(member_kinds)}.")
        if any(int(n) < 1 for n in part_maps) or sum(int(n) for n in part_maps) != len(in_channels):
            raise ValueError(f"The parts' maps {list(part_maps)} do not add up to the {len(in_channels)} maps.")
        if "ensemble" in member_kinds:
            raise ValueError("An ensemble's members cannot be ensembles.")
        self.members: list = []

    # --- structure ----------------------------------------------------------------------------
    def member_maps(self, k: int) -> slice:
        """The maps of member ``k`` in the fused list."""
        start = sum(int(n) for n in self.config.part_maps[:k])
        return slice(start, start + int(self.config.part_maps[k]))

    def set_members(self, members: list) -> None:
        """Use ``members`` (one trained head per part); raise :class:`HeadError` if they do not fit."""
        kinds = [m.head_kind for m in members]
        if kinds != list(self.config.member_kinds):
            raise HeadError(f"The ensemble expects members {list(self.config.member_kinds)}, got {kinds}.")
        for k, m in enumerate(members):
            if m.class_ids != self.class_ids:
                raise HeadError(f"Member {k} has classes {m.class_ids}, the ensemble {self.class_ids}.")
            span = self.member_maps(k)
            if list(m.config.in_channels) != list(self.config.in_channels[span]) or list(
                m.config.strides
            ) != list(self.config.strides[span]):
                raise HeadError(f"Member {k} reads maps {list(m.config.in_channels)} at strides "
                                f"{list(m.config.strides)}, not those of part {k} of the ensemble's features.")
        self.members = list(members)

    @property
    def default_tta(self) -> int:
        """The most any member asks for (a forest member: 8)."""
        return max((m.default_tta for m in self.members), default=1)

    # --- prediction ---------------------------------------------------------------------------
    def to(self, device):
        for m in self.members:
            if hasattr(m, "to"):
                m.to(device)
        return self

    @property
    def device(self):
        return self.members[0].device if self.members else torch.device("cpu")

    def predict_proba(self, maps: list[torch.Tensor], *, margin: int = 0) -> torch.Tensor:
        """The members' probabilities ``(B, K, H, W)``, averaged."""
        if not self.members:
            raise HeadError("This ensemble head has no trained members.")
        total = None
        for k, m in enumerate(self.members):
            p = m.predict_proba([x.to(m.device) for x in maps[self.member_maps(k)]], margin=margin)
            p = p.float().cpu()
            total = p if total is None else total + p
        return total / len(self.members)

    # --- folder -------------------------------------------------------------------------------
    def write_folder(self, folder: Path) -> None:
        """``config.json`` and one head folder per member."""
        if not self.members:
            raise HeadError("This ensemble head has no trained members: nothing to save.")
        folder = Path(folder)
        self.save_config(folder)
        for k, m in enumerate(self.members):
            sub = folder / MEMBER_FOLDER.format(k)
            sub.mkdir()
            m.write_folder(sub)

    @classmethod
    def read_folder(cls, folder: Path) -> "EnsembleHead":
        """The ensemble saved in ``folder``, every member read and checked by its own kind."""
        from .registry import load_head

        folder = Path(folder)
        config = read_config(folder, cls, error=HeadError, what="Head")
        try:
            head = cls.from_config(config)
        except (TypeError, ValueError, KeyError) as exc:
            raise HeadError(f"Head config {folder / cls.config_name} is invalid: {exc}") from exc
        members = []
        for k in range(len(head.config.member_kinds)):
            sub = folder / MEMBER_FOLDER.format(k)
            try:
                members.append(load_head(sub))
            except FileNotFoundError:
                raise HeadError(f"Member {k} of the ensemble head {folder} is missing ({sub}): the folder "
                                "is incomplete.") from None
        head.set_members(members)
        return head


def new_ensemble_head(extractor, class_ids: list[int], *, member_kinds, class_names=None, class_colors=None,
                      mpp: float | None = None) -> EnsembleHead:
    """An ensemble without members for the fused features of ``extractor``."""
    parts = getattr(extractor, "parts", None)
    if not parts:
        raise ValueError(f"An ensemble head needs fused features (e.g. --features classic+cnn), got "
                         f"{extractor.identity!r}.")
    class_ids = [int(c) for c in class_ids]
    return EnsembleHead(
        in_channels=list(extractor.channels), strides=list(extractor.strides), class_ids=class_ids,
        class_names=list(class_names) if class_names else default_class_names(class_ids),
        class_colors=list(class_colors) if class_colors else default_class_colors(len(class_ids)),
        mpp=extractor.mpp if mpp is None else float(mpp), feature_config=extractor.config(),
        feature_identity=extractor.identity, part_maps=[len(p.channels) for p in parts],
        member_kinds=list(member_kinds),
    )
