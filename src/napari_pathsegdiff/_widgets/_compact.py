"""Small Qt pieces that keep the dock narrow: collapsible sections and one-line labels that
elide long text (the full text is the tooltip)."""

from __future__ import annotations

from qtpy.QtCore import QSize, Qt
from qtpy.QtGui import QPainter
from qtpy.QtWidgets import QFrame, QLabel, QSizePolicy, QToolButton, QVBoxLayout, QWidget

ELIDED_MIN_CHARS = 12
"""An elided label is never narrower than about this many characters."""


class ElidedLabel(QLabel):
    """A one-line label that shows as much of its text as fits, with "…" in the middle, and
    the whole text as its tooltip; ``text()`` is the whole text.

    Middle elision keeps both ends of a path or an identity (the folder and the file name, the
    kind and the hash).
    """

    def __init__(self, text: str = "", parent=None):
        super().__init__(text, parent)
        self.setSizePolicy(QSizePolicy.Ignored, QSizePolicy.Preferred)
        self.setText(text)

    def setText(self, text: str) -> None:  # noqa: N802 - Qt's name
        super().setText(text)
        self.setToolTip(text)

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        metrics = self.fontMetrics()
        return QSize(metrics.averageCharWidth() * ELIDED_MIN_CHARS, super().minimumSizeHint().height())

    def shown_text(self) -> str:
        """The text as drawn at the label's present width."""
        return self.fontMetrics().elidedText(self.text(), Qt.ElideMiddle, max(self.contentsRect().width(), 0))

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt's name
        painter = QPainter(self)
        painter.drawText(self.contentsRect(), int(self.alignment()) | int(Qt.AlignVCenter), self.shown_text())
        painter.end()


class CollapsibleSection(QWidget):
    """A titled section whose body folds away under its title (a flat arrow button).

    Parameters
    ----------
    title : str
        The title.
    body : QWidget
        What the section holds.

    Attributes
    ----------
    header : QToolButton
        The title; clicking it folds or unfolds the body.
    body : QWidget
        The section's content.
    """

    def __init__(self, title: str, body: QWidget, parent=None):
        super().__init__(parent)
        self.body = body
        self.header = QToolButton()
        self.header.setText(title)
        self.header.setCheckable(True)
        self.header.setChecked(True)
        self.header.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
        self.header.setArrowType(Qt.DownArrow)
        self.header.setAutoRaise(True)
        self.header.setStyleSheet("QToolButton { font-weight: bold; border: none; }")
        self.header.setToolTip(f"Fold or unfold {title}")
        self.header.toggled.connect(self.set_expanded)
        line = QFrame()
        line.setFrameShape(QFrame.HLine)
        line.setFrameShadow(QFrame.Sunken)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.header)
        layout.addWidget(line)
        layout.addWidget(body)

    def title(self) -> str:
        return self.header.text()

    def expanded(self) -> bool:
        return self.header.isChecked()

    def set_expanded(self, on: bool) -> None:
        """Show (True) or fold away (False) the body."""
        if self.header.isChecked() != bool(on):
            self.header.setChecked(bool(on))  # comes back here through ``toggled``
            return
        self.header.setArrowType(Qt.DownArrow if on else Qt.RightArrow)
        self.body.setVisible(bool(on))
