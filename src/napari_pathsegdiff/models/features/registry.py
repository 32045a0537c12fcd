"""The registry of feature extractors: one entry per kind, read by the CLI, the widget and the loaders.

Adding an extractor is one module with a :class:`~napari_pathsegdiff.models.features_base.FeatureExtractor`
subclass plus one :func:`register_extractor` call (see :mod:`napari_pathsegdiff.models.features`).
Every list of kinds the user sees (``--features`` choices, the widget's list) and every
rebuild of an extractor from a head's config go through here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..features_base import FeatureExtractor

#: Joins kinds on the command line: ``diffusion+classic``.
FUSE = "+"
#: Config kind of several extractors side by side.
FUSED_KIND = "fused"


@dataclass(frozen=True)
class ExtractorEntry:
    """One kind of feature extractor.

    Attributes
    ----------
    kind : str
        Name on the command line and in configs (``"diffusion"``, ``"classic"``, ...).
    summary : str
        One line for ``--help`` and the widget.
    build : callable
        ``build(settings: dict, device: str) -> FeatureExtractor``; ``settings`` is the config
        without its ``"kind"``.
    uses_backbone : bool
        Whether ``--backbone`` applies to it.
    """

    kind: str
    summary: str
    build: Callable[[dict[str, Any], str], FeatureExtractor]
    uses_backbone: bool = False


_REGISTRY: dict[str, ExtractorEntry] = {}


def register_extractor(
    kind: str,
    build: Callable[[dict[str, Any], str], FeatureExtractor],
    *,
    summary: str,
    uses_backbone: bool = False,
) -> None:
    """Make ``kind`` known to every caller (CLI choices, widget list, head loading).

    Raises
    ------
    ValueError
        When ``kind`` is empty, contains ``+``, is ``"fused"`` or ``"auto"``, or is taken.
    """
    kind = str(kind)
    if not kind or FUSE in kind or kind in (FUSED_KIND, "auto"):
        raise ValueError(f"{kind!r} cannot name a feature extractor: it is reserved or contains '{FUSE}'.")
    if kind in _REGISTRY:
        raise ValueError(f"Feature extractor {kind!r} is already registered.")
    _REGISTRY[kind] = ExtractorEntry(kind, summary, build, uses_backbone)


def unregister_extractor(kind: str) -> None:
    """Forget ``kind`` (for tests that register an extractor of their own)."""
    _REGISTRY.pop(kind, None)


def registered_kinds() -> tuple[str, ...]:
    """The kinds of extractor, in registration order."""
    return tuple(_REGISTRY)


def extractor_entry(kind: str) -> ExtractorEntry:
    """The entry of ``kind``; a :class:`ValueError` listing the known kinds otherwise."""
    try:
        return _REGISTRY[kind]
    except KeyError:
        raise ValueError(f"Unknown feature kind {kind!r}: use one of {', '.join(_REGISTRY)}.") from None


def build_extractor(config: dict[str, Any], *, device: str = "cpu") -> FeatureExtractor:
    """The extractor described by ``config`` (the output of :meth:`FeatureExtractor.config`).

    Parameters
    ----------
    config : dict
        ``{"kind": KIND, ...settings}`` with a registered kind, or
        ``{"kind": "fused", "parts": [config, ...]}``.
    device : str
        Torch device for extractors that run a network (``"cpu"``, ``"cuda"``, ``"auto"``).
    """
    if not isinstance(config, dict) or "kind" not in config:
        raise ValueError(f"A feature config must be a dict with a 'kind', got {config!r}.")
    kind = config["kind"]
    if kind == FUSED_KIND:
        from ..fused_features import FusedFeatures

        parts = config.get("parts")
        if not isinstance(parts, list):
            raise ValueError(f"A fused feature config needs a list of 'parts', got {parts!r}.")
        return FusedFeatures([build_extractor(p, device=device) for p in parts])
    entry = extractor_entry(kind)
    settings = {k: v for k, v in config.items() if k != "kind"}
    try:
        return entry.build(settings, device)
    except TypeError as exc:
        raise ValueError(f"Bad settings for {kind} features {settings}: {exc}") from exc


def feature_kind(config: dict[str, Any] | None) -> str:
    """The command-line name of a feature config: ``"classic"``, ``"diffusion+classic"``, ...

    Examples
    --------
    >>> feature_kind({"kind": "fused", "parts": [{"kind": "diffusion"}, {"kind": "rgb"}]})
    'diffusion+rgb'
    """
    config = config or {}
    if config.get("kind") == FUSED_KIND:
        return FUSE.join(str(p.get("kind")) for p in config.get("parts", []))
    return str(config.get("kind"))


def uses_backbone(config: dict[str, Any]) -> bool:
    """Whether ``config`` (or one of its fused parts) is of a kind that takes ``--backbone``."""
    if config.get("kind") == FUSED_KIND:
        return any(uses_backbone(p) for p in config.get("parts", []))
    entry = _REGISTRY.get(str(config.get("kind")))
    return bool(entry and entry.uses_backbone)


def with_backbone(config: dict[str, Any], backbone: str) -> dict[str, Any]:
    """``config`` with its backbone (of a fused part too) replaced by ``backbone``.

    Raises
    ------
    ValueError
        When no part of the config takes a backbone, naming the features it has.

    Examples
    --------
    >>> with_backbone({"kind": "fused", "parts": [{"kind": "diffusion", "backbone": "default"},
    ...                {"kind": "rgb"}]}, "my-bb")["parts"][0]["backbone"]
    'my-bb'
    """
    if not uses_backbone(config):
        raise ValueError(f"A backbone applies to diffusion features, not to {feature_kind(config)} features.")
    if config.get("kind") == FUSED_KIND:
        parts = [with_backbone(p, backbone) if uses_backbone(p) else p for p in config["parts"]]
        return {**config, "parts": parts}
    return {**config, "backbone": str(backbone)}


def parse_feature_kind(text: str) -> str:
    """Check a ``--features`` value: one registered kind, or distinct kinds joined with ``+``.

    Examples
    --------
    >>> parse_feature_kind("diffusion+classic")
    'diffusion+classic'
    """
    names = [k.strip() for k in str(text).split(FUSE)]
    if not names or len(set(names)) != len(names) or any(n not in _REGISTRY for n in names):
        raise ValueError(f"Unknown features {text!r}: use one of {', '.join(_REGISTRY)}, or distinct ones "
                         f"joined with '{FUSE}' (e.g. diffusion+classic).")
    return FUSE.join(names)


def make_extractor(kind: str, *, backbone: str = "default", device: str = "cpu", **options) -> FeatureExtractor:
    """An extractor by its command-line name (``backbone`` matters only to kinds that take one).

    ``kind`` may join several kinds with ``+`` (``"diffusion+classic"``): their maps are fused
    (:class:`~napari_pathsegdiff.models.fused_features.FusedFeatures`); ``options`` then go to
    the parts that take a backbone.

    Examples
    --------
    >>> make_extractor("rgb").identity
    'rgb:v1'
    >>> make_extractor("rgb+classic").channels
    [3, 60]
    """
    return build_extractor(feature_config(kind, backbone=backbone, **options), device=device)


def feature_config(kind: str, *, backbone: str = "default", **options) -> dict[str, Any]:
    """The config of ``--features kind`` (see :func:`make_extractor`), without building it."""
    names = parse_feature_kind(kind).split(FUSE)
    parts = []
    for name in names:
        if extractor_entry(name).uses_backbone:
            parts.append({"kind": name, "backbone": backbone, **options})
        else:
            parts.append({"kind": name})
    return parts[0] if len(parts) == 1 else {"kind": FUSED_KIND, "parts": parts}
