"""Segment section: "Segment view" with Cancel, "Live", the uncertainty layer with its legend,
"Where to label next", and "Stop updating" while regions an earlier head segmented are
segmented again."""

from __future__ import annotations

import numpy as np
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from ._controller import AnnotationController
from ._label_layers import uncertainty_colormap

LEGEND_SIZE = (100, 12)
"""Width and height of the uncertainty colour bar (px)."""


class SegmentSection(QWidget):
    """Segment the visible region, live or on demand, and find where a correction helps most."""

    def __init__(self, controller: AnnotationController, parent=None):
        super().__init__(parent)
        self.controller = controller
        self.segment_button = QPushButton("Segment view")
        self.segment_button.setToolTip("Segment the part of the slide visible now (painted pixels are kept).")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop segmenting: nothing of it is written, the labels shown stay.")
        self.cancel_button.setEnabled(False)
        self.live = QCheckBox("Live")
        self.live.setToolTip("Segment again after every pan and zoom.")
        self.uncertainty = QCheckBox("Show uncertainty")
        self.uncertainty.setToolTip("Show where the model is unsure (per-pixel entropy of the classes).")
        self.legend = UncertaintyLegend()
        self.legend.setVisible(False)
        self.next_button = QPushButton("Where to label next")
        self.next_button.setToolTip("Go to the most uncertain tissue that has no painted pixel yet "
                                    "and frame it with a yellow box.")
        self.stop_refresh_button = QPushButton("Stop updating older regions")
        self.stop_refresh_button.setToolTip(
            "Regions an earlier head segmented are being segmented again with the current head; "
            "stop to keep them as they are for now (an export still updates them first).")
        self.stop_refresh_button.setVisible(False)
        self.status = QLabel("")
        self.status.setWordWrap(True)

        row = QHBoxLayout()
        row.addWidget(self.segment_button, 1)
        row.addWidget(self.cancel_button)
        row.addWidget(self.live)
        row2 = QHBoxLayout()
        row2.addWidget(self.uncertainty)
        row2.addWidget(self.next_button, 1)
        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addLayout(row2)
        layout.addWidget(self.legend)
        layout.addWidget(self.stop_refresh_button)
        layout.addWidget(self.status)

        self.segment_button.clicked.connect(lambda: controller.segment_view())
        self.cancel_button.clicked.connect(controller.cancel_segment)
        self.live.toggled.connect(controller.set_live)
        self.uncertainty.toggled.connect(controller.set_show_uncertainty)
        self.uncertainty.toggled.connect(self.legend.setVisible)
        self.next_button.clicked.connect(controller.where_to_label_next)
        self.stop_refresh_button.clicked.connect(controller.cancel_refresh)
        controller.message.connect(self._message)
        controller.busy.connect(self._busy)

    def _message(self, section: str, text: str) -> None:
        if section == "segment":
            self.status.setText(text)

    def _busy(self, name: str, on: bool) -> None:
        if name == "segment":
            self.cancel_button.setEnabled(on)
        elif name == "refresh":
            self.stop_refresh_button.setVisible(on)


class UncertaintyLegend(QWidget):
    """A colour bar of the uncertainty layer's colormap over white, between what its ends mean.

    Attributes
    ----------
    bar : QLabel
        Shows the colour bar.
    image : QImage
        The colour bar: the colormap from 0 on the left to 1 on the right, over white.
    """

    def __init__(self, parent=None):
        super().__init__(parent)
        low = QLabel("sure")
        low.setToolTip("Low uncertainty: clear, the model is sure of the class.")
        high = QLabel("unsure: check")
        high.setToolTip("High uncertainty: the classes are close here; a correction helps most.")
        self.bar = QLabel()
        self.image = _colour_bar(*LEGEND_SIZE)
        self.bar.setPixmap(QPixmap.fromImage(self.image))
        self.bar.setToolTip("Uncertainty (normalised entropy of the class probabilities), 0 to 1.")
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(low)
        row.addWidget(self.bar)
        row.addWidget(high)
        row.addStretch(1)


def _colour_bar(width: int, height: int) -> QImage:
    """The uncertainty colormap as seen over white (its transparency included)."""
    rgba = uncertainty_colormap().map(np.linspace(0.0, 1.0, width))
    rgb = rgba[:, :3] * rgba[:, 3:] + (1.0 - rgba[:, 3:])  # over a white page
    pixels = np.ascontiguousarray(np.broadcast_to((rgb * 255).round().astype(np.uint8), (height, width, 3)))
    image = QImage(pixels.data, width, height, 3 * width, QImage.Format_RGB888)
    return image.copy()  # owns its pixels (``pixels`` goes away)
