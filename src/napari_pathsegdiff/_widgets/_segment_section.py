"""Segment section: "Segment view", "Live", the uncertainty layer and "Where to label next"."""

from __future__ import annotations

from qtpy.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from ._controller import AnnotationController


class SegmentSection(QWidget):
    """Segment the visible region, live or on demand, and find where a correction helps most."""

    def __init__(self, controller: AnnotationController, parent=None):
        super().__init__(parent)
        self.controller = controller
        self.segment_button = QPushButton("Segment view")
        self.segment_button.setToolTip("Segment the part of the slide visible now (painted pixels are kept).")
        self.live = QCheckBox("Live")
        self.live.setToolTip("Segment again after every pan and zoom.")
        self.uncertainty = QCheckBox("Show uncertainty")
        self.next_button = QPushButton("Where to label next")
        self.next_button.setToolTip("Go to the most uncertain tissue that has no painted pixel yet.")
        self.status = QLabel("")
        self.status.setWordWrap(True)

        row = QHBoxLayout()
        row.addWidget(self.segment_button, 1)
        row.addWidget(self.live)
        row2 = QHBoxLayout()
        row2.addWidget(self.uncertainty)
        row2.addWidget(self.next_button, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addLayout(row2)
        layout.addWidget(self.status)

        self.segment_button.clicked.connect(lambda: controller.segment_view())
        self.live.toggled.connect(controller.set_live)
        self.uncertainty.toggled.connect(controller.set_show_uncertainty)
        self.next_button.clicked.connect(controller.where_to_label_next)
        controller.message.connect(self._message)

    def _message(self, section: str, text: str) -> None:
        if section == "segment":
            self.status.setText(text)
