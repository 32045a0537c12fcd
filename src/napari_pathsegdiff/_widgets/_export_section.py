"""Export section: one button per registered export format (OME-TIFF, OME-Zarr with µm/px,
QuPath GeoJSON, and any format added with ``register_export_format``)."""

from __future__ import annotations

from qtpy.QtWidgets import QFileDialog, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from ..engine.session.annotation_export import export_format, export_formats
from ._controller import AnnotationController


def _file_choices() -> dict[str, tuple[str, str]]:
    """Button title → (default file name, file dialog filter), from the export registry."""
    choices = {}
    for name in export_formats():
        fmt = export_format(name)
        patterns = " ".join(f"*{e}" for e in fmt.endings)
        choices[fmt.title] = (f"labels{fmt.endings[0]}", f"{fmt.title} ({patterns})")
    return choices


class ExportSection(QWidget):
    """Write the labels shown (painted pixels over predictions) to a file."""

    def __init__(self, controller: AnnotationController, parent=None):
        super().__init__(parent)
        self.controller = controller
        self.choices = _file_choices()
        self.buttons = {name: QPushButton(name) for name in self.choices}
        self.status = QLabel("")
        self.status.setWordWrap(True)
        row = QHBoxLayout()
        for name, button in self.buttons.items():
            row.addWidget(button)
            button.clicked.connect(lambda _=False, n=name: self._ask(n))
        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addWidget(self.status)
        controller.message.connect(self._message)

    def export_to(self, path) -> None:
        """Export to ``path`` (the format follows its name) in the background; the controller's
        ``exported`` signal gives the path written, or None."""
        self.controller.export(path)

    def _ask(self, name: str) -> None:
        default, filters = self.choices[name]
        path = QFileDialog.getSaveFileName(self, f"Export the labels as {name}", default, filters)[0]
        if path:
            self.export_to(path)

    def _message(self, section: str, text: str) -> None:
        if section == "export":
            self.status.setText(text)
