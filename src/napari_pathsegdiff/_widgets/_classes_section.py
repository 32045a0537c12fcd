"""Classes section: the table of class names and colours, with presets.

The table is the session's class table (store ids 1..255); the label layers use its colours
and names. Selecting a row paints with that class, and so does its number key (1..9, the row's
position) while the edit window is the active layer.
"""

from __future__ import annotations

from dataclasses import replace

from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QColorDialog,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..core.label_store import ClassInfo
from ..engine.session.class_presets import PRESETS, next_class, preset
from ._controller import AnnotationController


class ClassesSection(QWidget):
    """Add, rename, remove and recolour classes; apply a preset."""

    def __init__(self, controller: AnnotationController, parent=None):
        super().__init__(parent)
        self.controller = controller
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["Id", "Name", "Colour"])
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SingleSelection)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.add_button = QPushButton("Add")
        self.remove_button = QPushButton("Remove")
        self.presets = QComboBox()
        self.presets.addItems(list(PRESETS))
        self.preset_button = QPushButton("Use preset")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self._filling = False

        buttons = QHBoxLayout()
        buttons.addWidget(self.add_button)
        buttons.addWidget(self.remove_button)
        presets = QHBoxLayout()
        presets.addWidget(self.presets, 1)
        presets.addWidget(self.preset_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.table)
        layout.addLayout(buttons)
        layout.addLayout(presets)
        layout.addWidget(self.status)

        self.add_button.clicked.connect(lambda: self.add_class())
        self.remove_button.clicked.connect(self._remove_selected)
        self.preset_button.clicked.connect(lambda: self.apply_preset(self.presets.currentText()))
        self.table.itemChanged.connect(self._item_changed)
        self.table.cellClicked.connect(self._cell_clicked)
        self.table.itemSelectionChanged.connect(self._selection_changed)
        controller.classes_changed.connect(self._fill)
        controller.session_changed.connect(self._fill)
        controller.message.connect(self._message)
        controller.class_picked.connect(self.show_selected)
        self._fill()

    # --- public actions (also used by tests) -------------------------------------------------
    def classes(self) -> list[ClassInfo]:
        """The class table shown."""
        session = self.controller.session
        return session.classes if session is not None else []

    def add_class(self, name: str | None = None) -> bool:
        classes = self.classes()
        try:
            new = next_class(classes, name)
        except ValueError as exc:
            self._message("classes", f"Error: {exc}")
            return False
        return self.controller.set_classes(classes + [new])

    def rename(self, class_id: int, name: str) -> bool:
        return self._change(class_id, name=name.strip())

    def recolour(self, class_id: int, color: str) -> bool:
        return self._change(class_id, color=color)

    def remove(self, class_id: int) -> bool:
        return self.controller.set_classes([c for c in self.classes() if c.id != class_id])

    def apply_preset(self, name: str) -> bool:
        return self.controller.set_classes(preset(name))

    def show_selected(self, class_id: int) -> None:
        """Select the row of ``class_id`` (a number key picked it on the edit window)."""
        for row in range(self.table.rowCount()):
            if self._row_id(row) == class_id:
                self.table.selectRow(row)
                return

    # --- table -------------------------------------------------------------------------------
    def _fill(self) -> None:
        self._filling = True
        try:
            classes = self.classes()
            self.table.setRowCount(len(classes))
            for row, c in enumerate(classes):
                ident = QTableWidgetItem(str(c.id))
                ident.setFlags(ident.flags() & ~_editable())
                colour = QTableWidgetItem(c.color)
                colour.setFlags(colour.flags() & ~_editable())
                colour.setBackground(QColor(c.color))
                colour.setToolTip("Click to change the colour")
                self.table.setItem(row, 0, ident)
                self.table.setItem(row, 1, QTableWidgetItem(c.name))
                self.table.setItem(row, 2, colour)
        finally:
            self._filling = False

    def _change(self, class_id: int, **changes) -> bool:
        classes = [replace(c, **changes) if c.id == class_id else c for c in self.classes()]
        return self.controller.set_classes(classes)

    def _row_id(self, row: int) -> int | None:
        item = self.table.item(row, 0)
        return int(item.text()) if item is not None else None

    def _item_changed(self, item) -> None:
        if self._filling or item.column() != 1:
            return
        class_id = self._row_id(item.row())
        if class_id is not None:
            self.rename(class_id, item.text())

    def _cell_clicked(self, row: int, column: int) -> None:
        class_id = self._row_id(row)
        if column != 2 or class_id is None:
            return
        current = QColor(self.table.item(row, 2).text())
        chosen = QColorDialog.getColor(current, self, "Class colour")
        if chosen.isValid():
            self.recolour(class_id, chosen.name())

    def _selection_changed(self) -> None:
        rows = {i.row() for i in self.table.selectedItems()}
        if len(rows) == 1:
            class_id = self._row_id(rows.pop())
            if class_id is not None:
                self.controller.select_class(class_id)

    def _remove_selected(self) -> None:
        rows = {i.row() for i in self.table.selectedItems()}
        if len(rows) != 1:
            self._message("classes", "Select the class to remove first.")
            return
        class_id = self._row_id(rows.pop())
        if class_id is not None:
            self.remove(class_id)

    def _message(self, section: str, text: str) -> None:
        if section == "classes":
            self.status.setText(text)


def _editable():
    from qtpy.QtCore import Qt

    return Qt.ItemIsEditable
