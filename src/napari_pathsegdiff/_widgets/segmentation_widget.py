"""The PathSegDiff dock widget: segment what you see, correct it with a brush, retrain.

The widget is thin: a panel describing the active slide, then one small section per task
(Model, Project, Classes, Segment, Train, Synthesize, Export), each in its own module and all sharing one
:class:`~._controller.AnnotationController` that owns the session, the label layers and the
background jobs. Another section is added with :meth:`SegmentationWidget.add_section`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from qtpy.QtCore import QSize, Qt, QTimer
from qtpy.QtWidgets import QFormLayout, QLabel, QScrollArea, QVBoxLayout, QWidget

from ._classes_section import ClassesSection
from ._compact import CollapsibleSection, ElidedLabel
from ._controller import AnnotationController
from ._export_section import ExportSection
from ._model_section import ModelSection
from ._project_section import ProjectSection
from ._segment_section import SegmentSection
from ._synthesize_section import SynthesizeSection
from ._train_section import TrainSection

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer


DOCK_SLACK_PX = 40
"""The dock opens this much wider than its minimum width."""


def is_slide_layer(layer) -> bool:
    """Whether ``layer`` is a slide opened by this plugin (its metadata names the slide)."""
    return "slide_path" in getattr(layer, "metadata", {})


class SegmentationWidget(QWidget):
    """Dock widget of the plugin.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer the widget is docked in.

    Attributes
    ----------
    controller : AnnotationController
        Session, layers and jobs.
    model_section, project_section, classes_section, segment_section, train_section, synthesize_section, export_section : QWidget
        The sections.
    sections : dict of str to CollapsibleSection
        The folding boxes of the sections, by title.
    """

    def __init__(self, napari_viewer: "napari.Viewer"):
        super().__init__()
        self.viewer = napari_viewer
        # owned by Python, not by the widget: jobs finishing after the widget is deleted find it
        self.controller = AnnotationController(napari_viewer)
        controller = self.controller
        self.destroyed.connect(lambda *_: controller.shutdown())
        # the file name is elided to the dock's width; the full path is its tooltip
        self._fields = {key: ElidedLabel("–") if key == "File" else QLabel("–")
                        for key in ("Slide", "File", "Levels", "µm/px", "Objective")}
        form = QFormLayout()
        for key, label in self._fields.items():
            label.setWordWrap(key != "File")
            form.addRow(f"{key}:", label)
        self.note = QLabel("")
        self.note.setWordWrap(True)
        self.note.setVisible(False)

        inner = QWidget()
        self.sections: dict[str, CollapsibleSection] = {}
        self._sections = QVBoxLayout(inner)
        self._sections.addLayout(form)
        self._sections.addWidget(self.note)
        self.model_section = self.add_section("Model", ModelSection(self.controller))
        self.project_section = self.add_section("Project", ProjectSection(self.controller))
        self.classes_section = self.add_section("Classes", ClassesSection(self.controller))
        self.segment_section = self.add_section("Segment", SegmentSection(self.controller))
        self.train_section = self.add_section("Train", TrainSection(self.controller))
        self.synthesize_section = self.add_section("Synthesize", SynthesizeSection(self.controller))
        self.export_section = self.add_section("Export", ExportSection(self.controller))
        self._sections.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        scroll.setWidget(inner)
        # as wide as the sections need (no horizontal scrolling), as tall as the dock allows
        scroll.setMinimumWidth(inner.minimumSizeHint().width() + scroll.verticalScrollBar().sizeHint().width() + 4)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(scroll)

        layers = self.viewer.layers
        layers.events.inserted.connect(self._refresh)
        layers.events.removed.connect(self._refresh)
        layers.events.reordered.connect(self._refresh)
        layers.selection.events.active.connect(self._refresh)
        self._refresh()

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        """Little wider than the minimum: the dock opens narrow and leaves the canvas room
        (long texts are elided, sections fold)."""
        hint, least = super().sizeHint(), self.minimumSizeHint()
        return QSize(min(hint.width(), least.width() + DOCK_SLACK_PX), hint.height())

    def add_section(self, title: str, section: QWidget) -> QWidget:
        """Add ``section`` under a title that folds it away (before the stretch, if any);
        returns it. The folding boxes are in :attr:`sections`, by title."""
        box = CollapsibleSection(title, section)
        self.sections[title] = box
        stretch = self._sections.count() - 1
        has_stretch = stretch >= 0 and self._sections.itemAt(stretch).spacerItem() is not None
        if has_stretch:
            self._sections.insertWidget(stretch, box)
        else:
            self._sections.addWidget(box)
        return section

    def show_note(self, text: str) -> None:
        """A note above the sections (e.g. that no default model is installed)."""
        self.note.setText(text)
        self.note.setVisible(bool(text))

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

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        self.controller.shutdown()
        super().closeEvent(event)

    def _refresh(self, event=None) -> None:
        layer = self.slide_layer
        if layer is None:
            texts = dict.fromkeys(self._fields, "–")
            texts["Slide"] = "no slide open (File > Open, or File > Open Sample > PathSegDiff)"
        else:
            texts = _describe(layer)
        for key, text in texts.items():
            self._fields[key].setText(text)
        if layer is not None:
            self._fields["File"].setToolTip(str(layer.metadata.get("slide_path")))
        c = self.controller
        if c.session is None and not c.running("open"):
            c.open_for_layer(self._annotated_slide())
        else:  # switching removes layers: never inside napari's own layer-list events
            QTimer.singleShot(0, lambda: c.open_for_layer(self._annotated_slide()))

    def _annotated_slide(self) -> "Layer | None":
        """The slide to annotate: the active layer when it is a slide; otherwise the slide
        annotated now while it is open (selecting its labels layer to paint keeps it), else the
        topmost slide."""
        active = self.viewer.layers.selection.active
        if is_slide_layer(active):
            return active
        current = self.controller.image_layer
        if current is not None and current in self.viewer.layers:
            return current
        return self.slide_layer


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
        "File": Path(str(meta.get("slide_path"))).name,
        "Levels": levels,
        "µm/px": f"{mpp:.4g}" if mpp else "unknown (scale in pixels)",
        "Objective": f"{objective:g}x" if objective else "unknown",
    }
