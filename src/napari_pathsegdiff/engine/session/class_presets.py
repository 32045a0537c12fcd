"""Ready-made class tables for annotation (ids 1..255; 0 means "not labelled")."""

from __future__ import annotations

from ...core.label_store import ClassInfo

PRESETS: dict[str, list[ClassInfo]] = {
    "tissue": [
        ClassInfo(1, "background", "#a0a0a0"),
        ClassInfo(2, "tumour", "#e6194b"),
        ClassInfo(3, "stroma", "#3cb44b"),
        ClassInfo(4, "inflammation", "#4363d8"),
        ClassInfo(5, "necrosis", "#911eb4"),
    ],
    "glands": [
        ClassInfo(1, "background", "#a0a0a0"),
        ClassInfo(2, "gland", "#f58231"),
    ],
    "nuclei": [
        ClassInfo(1, "background", "#a0a0a0"),
        ClassInfo(2, "nucleus", "#4363d8"),
    ],
    "stroma / nuclei-rich": [
        ClassInfo(1, "background", "#a0a0a0"),
        ClassInfo(2, "stroma", "#3cb44b"),
        ClassInfo(3, "nuclei-rich tissue", "#911eb4"),
    ],
}
"""Class tables by name; the last one is the classes of the demo head."""

#: Colours offered to classes added by hand, in turn.
EXTRA_COLORS = ("#f032e6", "#46f0f0", "#bcf60c", "#008080", "#e6beff", "#9a6324", "#800000", "#000075")


def preset(name: str) -> list[ClassInfo]:
    """The class table ``name`` (a copy)."""
    try:
        return list(PRESETS[name])
    except KeyError:
        raise ValueError(f"Unknown class preset {name!r}: use one of {', '.join(PRESETS)}.") from None


def next_class(classes: list[ClassInfo], name: str | None = None) -> ClassInfo:
    """A new class with the lowest free id, a fresh colour and ``name`` (default ``class <id>``)."""
    used = {c.id for c in classes}
    free = next((i for i in range(1, 256) if i not in used), None)
    if free is None:
        raise ValueError("All 255 class ids are in use: remove a class first.")
    taken = {c.color.lower() for c in classes}
    color = next((c for c in EXTRA_COLORS if c not in taken), EXTRA_COLORS[free % len(EXTRA_COLORS)])
    return ClassInfo(free, name or f"class {free}", color)
