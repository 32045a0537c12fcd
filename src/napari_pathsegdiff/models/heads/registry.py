"""The registry of head kinds, and one folder format for all of them.

``load_head`` reads ``_class_name`` from the folder's ``config.json`` and lets that class read
the folder, as diffusers does for its models; ``save_head`` writes any head atomically.
Adding a head kind is one module plus one :func:`register_head` call.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from ..strict_folder import CONFIG_FILE
from .base import HeadError, json_default

#: Head kinds and the classes that read their folders, as ``"module:Class"`` until first used,
#: so that listing the kinds (the command line's help) imports no torch.
_BY_KIND: dict[str, str | type] = {
    "fcn": "napari_pathsegdiff.models.heads.fcn:SegmentationHead",
    "forest": "napari_pathsegdiff.models.heads.forest:ForestHead",
    "ensemble": "napari_pathsegdiff.models.heads.ensemble:EnsembleHead",
}
_BY_CLASS: dict[str, str | type] = {target.rsplit(":", 1)[1]: target for target in _BY_KIND.values()}


def register_head(cls: type) -> type:
    """Make a head class known by its ``head_kind`` and its class name (usable as a decorator)."""
    kind = str(getattr(cls, "head_kind", ""))
    if not kind or kind == "auto" or kind in _BY_KIND:
        raise ValueError(f"Head kind {kind!r} is empty, reserved or already registered.")
    _BY_KIND[kind] = cls
    _BY_CLASS[cls.__name__] = cls
    return cls


def head_kinds() -> tuple[str, ...]:
    """Registered head kinds, in registration order (``fcn``, ``forest``, ...)."""
    return tuple(_BY_KIND)


def head_class(kind: str) -> type:
    """The class of a head kind; a :class:`ValueError` listing the kinds otherwise."""
    if kind not in _BY_KIND:
        raise ValueError(f"Unknown head {kind!r}: use one of {', '.join(_BY_KIND)}.")
    return _resolve(_BY_KIND[kind])


def _resolve(target: str | type) -> type:
    if isinstance(target, str):
        module, name = target.split(":")
        return getattr(importlib.import_module(module), name)
    return target


def load_head(folder: str | Path, *, extractor=None):
    """Load a head folder of any kind, in eval mode.

    Parameters
    ----------
    folder : str or Path
        Folder written by :func:`save_head`.
    extractor : FeatureExtractor, optional
        When given, the head must be compatible with it.

    Raises
    ------
    FileNotFoundError
        The folder does not exist.
    HeadError
        The config names no known head kind, or its files are missing, unreadable or do not
        match each other.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"Head folder {folder} does not exist.")
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise HeadError(f"{folder} is not a head folder: {path} is missing.")
    try:
        name = json.loads(path.read_text()).get("_class_name")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        raise HeadError(f"Head config {path} is not readable JSON: {exc}") from exc
    if name not in _BY_CLASS:
        raise HeadError(f"{path} is not the config of a head (its class is {name!r}; known heads: "
                        f"{', '.join(_BY_CLASS)}).")
    head = _resolve(_BY_CLASS[name]).read_folder(folder)
    if extractor is not None:
        head.check_compatible(extractor)
    return head


def load_head_and_extractor(folder: str | Path, *, backbone: str | None = None, device: str = "cpu"):
    """The head in ``folder`` and the feature extractor it was trained on, checked together.

    Parameters
    ----------
    folder : str or Path
        A head folder.
    backbone : str, optional
        Replace the backbone of the head's diffusion features (a moved or renamed folder);
        the identity check still applies.
    device : str
        Torch device of the extractor and of a network head.
    """
    from ..device import resolve_device
    from ..features import build_extractor, with_backbone

    head = load_head(folder)
    config = dict(head.config.feature_config or {})
    if backbone:
        config = with_backbone(config, backbone)
    extractor = build_extractor(config, device=device)
    head.check_compatible(extractor)
    if hasattr(head, "to"):
        head.to(resolve_device(device))
    return head, extractor


def save_head(head, folder: str | Path, *, extra: dict[str, Any] | None = None) -> Path:
    """Write ``head`` (and JSON files ``extra``: {file name: object}) to ``folder`` atomically.

    Everything is written to a temporary folder beside it, then swapped in
    (:func:`~napari_pathsegdiff.core.atomic.replace_folder`), so an interrupted save never
    leaves a half-written head, and :func:`~napari_pathsegdiff.core.atomic.recover_folder`
    repairs a save killed between its two renames. An existing ``folder`` is replaced only
    when it is empty or a head folder.
    """
    from ...core.atomic import replace_folder

    folder = Path(folder)
    if folder.exists():
        if not folder.is_dir():
            raise HeadError(f"{folder} is a file: give a folder for the head.")
        if any(folder.iterdir()) and not (folder / CONFIG_FILE).is_file():
            raise HeadError(f"{folder} exists and is not a head folder: choose another folder.")
    folder.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        head.write_folder(tmp)
        for name, obj in (extra or {}).items():
            (tmp / name).write_text(json.dumps(obj, indent=2, default=json_default))

    return replace_folder(folder, write)
