"""Model section: features (default backbone, a backbone folder, or a kind of the feature registry), device, head."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QWidget,
)

from ._compact import ElidedLabel
from ._controller import AnnotationController, feature_choices


class ModelSection(QWidget):
    """Choose the features and the device; new / open / save the head; pick the session folder."""

    def __init__(self, controller: AnnotationController, parent=None):
        super().__init__(parent)
        self.controller = controller
        self.features = QComboBox()
        from ..engine.shipped_models import default_backbone_installed

        from ..models.features import extractor_entry

        choices = feature_choices()
        for i, choice in enumerate(choices):
            self.features.addItem(choice, choice)
            if i >= 2:  # a kind of the feature registry: its summary as the tooltip
                self.features.setItemData(i, extractor_entry(choice).summary, Qt.ToolTipRole)
        if not default_backbone_installed():  # offer it, greyed out, and start with classic
            self.features.setItemText(0, "default backbone (not installed)")
            self.features.model().item(0).setEnabled(False)
            self.features.setCurrentIndex(choices.index("classic"))
        self.features.setToolTip(
            "Diffusion features of the default backbone or of a backbone folder, or features "
            "without a backbone (classic: the filter bank of ilastik and QuPath; cnn: an ImageNet "
            "CNN's early layers; rgb: the pixels)."
        )
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda"])
        self.load_features = QPushButton("Use")
        self.features_label = ElidedLabel("–")  # identities are long: the full one is the tooltip
        self.head_label = QLabel("–")
        self.new_button = QPushButton("New")
        self.open_button = QPushButton("Open…")
        self.save_button = QPushButton("Save as…")
        self.revert_button = QPushButton("Revert to previous head")
        self.revert_button.setToolTip(
            "Go back to the head before the last training (or New); the head it replaces is kept, "
            "so reverting again brings it back."
        )
        self.folder_button = QPushButton("Session folder…")
        self.folder_label = ElidedLabel("–")  # the full path is the tooltip
        self.mpp_edit = QLineEdit()
        self.mpp_edit.setPlaceholderText("µm/px at full resolution, e.g. 0.25")
        self.mpp_button = QPushButton("Set")
        self.status = QLabel("")
        for label in (self.head_label, self.status):
            label.setWordWrap(True)

        features_row = QHBoxLayout()
        features_row.addWidget(self.features, 1)
        features_row.addWidget(self.device)
        features_row.addWidget(self.load_features)
        head_row = QHBoxLayout()
        for b in (self.new_button, self.open_button, self.save_button):
            head_row.addWidget(b)
        form = QFormLayout(self)
        form.setRowWrapPolicy(QFormLayout.WrapLongRows)  # labels above their fields in a narrow dock
        form.addRow("Features:", features_row)
        form.addRow("", self.features_label)
        form.addRow("Head:", head_row)
        form.addRow("", self.head_label)
        form.addRow("", self.revert_button)
        form.addRow(self.folder_button, self.folder_label)
        mpp_row = QHBoxLayout()
        mpp_row.addWidget(self.mpp_edit, 1)
        mpp_row.addWidget(self.mpp_button)
        form.addRow("Slide µm/px:", mpp_row)
        form.addRow(self.status)

        self.load_features.clicked.connect(self._use_features)
        self.new_button.clicked.connect(controller.new_head)
        self.open_button.clicked.connect(self._open_head)
        self.save_button.clicked.connect(self._save_head)
        self.revert_button.clicked.connect(controller.revert_head)
        self.folder_button.clicked.connect(self._pick_folder)
        self.mpp_button.clicked.connect(lambda: controller.set_slide_mpp(self.mpp_edit.text()))
        self.mpp_edit.returnPressed.connect(self.mpp_button.click)
        controller.head_changed.connect(self._refresh)
        controller.session_changed.connect(self._refresh)
        controller.message.connect(self._message)
        controller.busy.connect(self._busy)
        self._refresh()

    def _use_features(self) -> None:
        choice = self.features.currentData()
        folder = None
        if choice == "backbone folder":
            folder = QFileDialog.getExistingDirectory(self, "Backbone folder")
            if not folder:
                return
        self.controller.choose_features(choice, folder=folder, device=self.device.currentText())

    def _open_head(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open a head folder")
        if folder:
            self.controller.open_head(folder)

    def _save_head(self) -> None:
        folder = QFileDialog.getSaveFileName(self, "Save the head as a folder")[0]
        if folder:
            self.controller.save_head_as(folder)

    def _pick_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder for this slide's edits and head")
        if folder:
            self.controller.reopen_in_folder(folder)

    def _refresh(self) -> None:
        c = self.controller
        extractor = c.session.extractor if c.session is not None else c.extractor
        if extractor is not None:
            self.features_label.setText(extractor.identity + _context_note(extractor))
        else:
            from ..engine.shipped_models import default_backbone_installed

            default = "the default backbone" if default_backbone_installed() else "classic filters"
            self.features_label.setText(f"{default}, unless you choose others before you start")
        session = c.session
        self._refresh_mpp()
        if session is None:
            self.head_label.setText("–")
            self.folder_label.setText("–")
            return
        head = session.head
        if head is None:
            self.head_label.setText("new (untrained): paint two classes or more, then train")
        else:
            self.head_label.setText(f"{len(head.class_ids)} classes: {', '.join(head.class_names)}"
                                    + (f" · {head.mpp:g} µm/px" if head.mpp else ""))
        self.folder_label.setText(_home_short(session.folder))
        self.folder_label.setToolTip(str(session.folder))

    def _refresh_mpp(self) -> None:
        """The slide's µm/px: editable while the file records none (or it was given here)."""
        session = self.controller.session
        mpp, given = (session.slide.mpp, session.mpp_given) if session is not None else (None, False)
        editable = mpp is None or given  # without a session yet, setting it opens one
        self.mpp_edit.setText(f"{mpp:.4g}" if mpp else "")
        self.mpp_edit.setEnabled(editable)
        self.mpp_button.setEnabled(editable)
        self.mpp_edit.setToolTip(
            "Recorded in the slide file." if mpp and not given else
            "Given here and kept in the slide's session folder." if given else
            "The slide file records no µm/px: type the µm per pixel of its full resolution "
            "(e.g. 0.25 at 40x, 0.5 at 20x) so that the head sees tissue at its own scale.")

    def _message(self, section: str, text: str) -> None:
        if section == "model":
            self.status.setText(text)

    def _busy(self, name: str, on: bool) -> None:
        if name in ("features", "open", "head"):
            for w in (self.load_features, self.open_button, self.new_button, self.revert_button):
                w.setEnabled(not on)


def _context_note(extractor) -> str:
    """A note when a converted pathology LDM runs without its SSL encoder (unconditional tokens)."""
    config = extractor.config()
    parts = config.get("parts", [config])
    if any(part.get("context") == "ssl-unconditional" for part in parts):
        return " · unconditional tokens (no SSL encoder)"
    return ""


def _home_short(path) -> str:
    """``path`` with the home folder written ``~`` (the full path is the label's tooltip)."""
    from pathlib import Path

    path, home = Path(path), Path.home()
    try:
        return str(Path("~") / path.relative_to(home))
    except ValueError:
        return str(path)
