"""Train section: "Train on my edits" with progress, the loss, and Cancel."""

from __future__ import annotations

import math

from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from ._controller import AnnotationController


class TrainSection(QWidget):
    """Fine-tune the head on every painted pixel of the slide; Cancel keeps the previous head."""

    def __init__(self, controller: AnnotationController, parent=None):
        super().__init__(parent)
        self.controller = controller
        self.train_button = QPushButton("Train on my edits")
        self.train_button.setToolTip(
            "Train the head on everything painted on this slide (every region), then segment "
            "the view again."
        )
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.loss = QLabel("loss: –")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.last_step = 0

        row = QHBoxLayout()
        row.addWidget(self.train_button, 1)
        row.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addWidget(self.progress)
        layout.addWidget(self.loss)
        layout.addWidget(self.status)

        self.train_button.clicked.connect(controller.train)
        self.cancel_button.clicked.connect(controller.cancel_training)
        controller.train_progress.connect(self._progress)
        controller.busy.connect(self._busy)
        controller.message.connect(self._message)

    def _progress(self, record) -> None:
        self.progress.setFormat(f"{record.stage}: %v/%m")
        self.progress.setRange(0, max(int(record.total or 0), 1))
        self.progress.setValue(int(record.done))
        if record.stage == "train":
            self.last_step = int(record.done)
        loss = record.metrics.get("loss")
        if loss is not None and math.isfinite(loss):
            val = record.metrics.get("val_loss")
            self.loss.setText(f"loss: {loss:.4f}" + (f" (validation {val:.4f})" if val is not None else ""))

    def _busy(self, name: str, on: bool) -> None:
        if name == "train":
            self.train_button.setEnabled(not on)
            self.cancel_button.setEnabled(on)
            if on:
                self.last_step = 0
                self.status.setText("Training…")

    def _message(self, section: str, text: str) -> None:
        if section == "train":
            self.status.setText(text)
