"""The PathSegDiff dock widget.

For now it shows the active slide: file, pyramid levels, µm/px and objective power, and
follows the layer list. The segmentation controls will be added here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtWidgets import QFormLayout, QLabel, QVBoxLayout, QWidget

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer


def is_slide_layer(layer) -> bool:
    """Whether ``layer`` is a slide opened by this plugin (its metadata names the slide)."""
    return "slide_path" in getattr(layer, "metadata", {})


class SegmentationWidget(QWidget):
    """Dock widget of the plugin; for now a panel describing the active slide.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer the widget is docked in.
    """

    def __init__(self, napari_viewer: "napari.Viewer"):
        super().__init__()
        self.viewer = napari_viewer
        self._fields = {key: QLabel("–") for key in ("Slide", "File", "Levels", "µm/px", "Objective")}
        form = QFormLayout()
        for key, label in self._fields.items():
            label.setWordWrap(True)
            form.addRow(f"{key}:", label)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addStretch(1)

        layers = self.viewer.layers
        layers.events.inserted.connect(self._refresh)
        layers.events.removed.connect(self._refresh)
        layers.events.reordered.connect(self._refresh)
        layers.selection.events.active.connect(self._refresh)
        self._refresh()

    @property
    def slide_layer(self) -> "Layer | None":
        """The active layer if it is a slide, else the topmost slide layer, else None."""
        active = self.viewer.layers.selection.active
        if is_slide_layer(active):
            return active
        return next((la for la in reversed(self.viewer.layers) if is_slide_layer(la)), None)

    def info(self) -> dict[str, str]:
        """The texts shown, by field name."""
        return {key: label.text() for key, label in self._fields.items()}

    def _refresh(self, event=None) -> None:
        layer = self.slide_layer
        if layer is None:
            texts = dict.fromkeys(self._fields, "–")
            texts["Slide"] = "no slide open (File > Open, or File > Open Sample > PathSegDiff)"
        else:
            texts = _describe(layer)
        for key, text in texts.items():
            self._fields[key].setText(text)


def _describe(layer: "Layer") -> dict[str, str]:
    meta = layer.metadata
    shapes = meta.get("level_shapes") or []
    mpp = meta.get("mpp")
    objective = meta.get("objective_power")
    computed = (meta.get("slide_metadata") or {}).get("computed_levels")
    levels = f"{len(shapes)}: " + ", ".join(f"{w}×{h}" for h, w in shapes)
    if computed:
        levels += f" ({computed} computed)"
    return {
        "Slide": layer.name,
        "File": str(meta.get("slide_path")),
        "Levels": levels,
        "µm/px": f"{mpp:.4g}" if mpp else "unknown (scale in pixels)",
        "Objective": f"{objective:g}x" if objective else "unknown",
    }
