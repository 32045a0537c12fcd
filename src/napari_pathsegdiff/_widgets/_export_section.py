"""Export section: the labels as OME-TIFF, OME-Zarr (with µm/px) or QuPath GeoJSON."""

from __future__ import annotations

from qtpy.QtWidgets import QFileDialog, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from ._controller import AnnotationController

_FILTERS = {
    "OME-TIFF": ("labels.ome.tif", "OME-TIFF (*.ome.tif *.ome.tiff)"),
    "OME-Zarr": ("labels.ome.zarr", "OME-Zarr (*.ome.zarr)"),
    "GeoJSON": ("labels.geojson", "GeoJSON for QuPath (*.geojson)"),
}


class ExportSection(QWidget):
    """Write the labels shown (painted pixels over predictions) to a file."""

    def __init__(self, controller: AnnotationController, parent=None):
        super().__init__(parent)
        self.controller = controller
        self.buttons = {name: QPushButton(name) for name in _FILTERS}
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
        default, filters = _FILTERS[name]
        path = QFileDialog.getSaveFileName(self, f"Export the labels as {name}", default, filters)[0]
        if path:
            self.export_to(path)

    def _message(self, section: str, text: str) -> None:
        if section == "export":
            self.status.setText(text)
