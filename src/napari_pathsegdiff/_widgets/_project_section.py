"""Project section: several slides with one class table and one head; QuPath annotations in.

- *Project…* opens a folder: its ``project.json``, or a new project listing the folder's slides
  (with the current class table).
- The list shows the project's slides with the labelled pixels of each; double-clicking one
  (or *Show slide*) opens it in the viewer, or selects its layer, and the widget follows it.
- While a project is open, *Train on my edits* (Train section) learns from the painted pixels of
  every slide of the project (sampled so the time stays interactive), saves the head in the
  project and uses it on the slide shown.
- *Import annotations…* paints a QuPath GeoJSON into the slide shown (works without a project).

The engine's work runs in the controller's jobs; the controller keeps only a small hook
(``project_trainer``) so that its *Train on my edits* asks this section when a project is open.
"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ._controller import AnnotationController, _describe_error

SECTION = "project"
PLUGIN = "napari-pathsegdiff"


class ProjectSection(QWidget):
    """The project's slides, switching between them, training on all, importing annotations.

    Attributes
    ----------
    project : Project or None
        The open project.
    slides : QListWidget
        One row per slide: its name and labelled pixels.
    """

    def __init__(self, controller: AnnotationController, parent=None):
        super().__init__(parent)
        self.controller = controller
        self.project = None
        self.counts: dict[str, int] = {}
        self.auto = True  # a new head's features and kind chosen by cross-validation, as for one slide
        self.project_button = QPushButton("Project…")
        self.project_button.setToolTip("Open a folder of slides as a project (its project.json, or a new one "
                                       "listing its slides): one class table and one head for all of them.")
        self.close_button = QPushButton("Close project")
        self.show_button = QPushButton("Show slide")
        self.import_button = QPushButton("Import annotations…")
        self.import_button.setToolTip("Paint the classified areas of a QuPath GeoJSON export into the slide "
                                      "shown (painted pixels are kept).")
        self.slides = QListWidget()
        self.slides.setMaximumHeight(120)
        self.label = QLabel("No project: Train on my edits learns from the slide shown.")
        self.status = QLabel("")
        for label in (self.label, self.status):
            label.setWordWrap(True)
        row = QHBoxLayout()
        row.addWidget(self.project_button)
        row.addWidget(self.close_button)
        row2 = QHBoxLayout()
        row2.addWidget(self.show_button)
        row2.addWidget(self.import_button)
        layout = QVBoxLayout(self)
        layout.addLayout(row)
        layout.addWidget(self.label)
        layout.addWidget(self.slides)
        layout.addLayout(row2)
        layout.addWidget(self.status)

        self.project_button.clicked.connect(self._ask_project)
        self.close_button.clicked.connect(self.close_project)
        self.show_button.clicked.connect(lambda: self.show_slide(self.slides.currentRow()))
        self.slides.itemDoubleClicked.connect(lambda item: self.show_slide(self.slides.row(item)))
        self.import_button.clicked.connect(self._ask_import)
        controller.message.connect(self._message)
        controller.session_changed.connect(self._session_changed)
        controller.classes_changed.connect(self._sync_classes)
        self._update()

    # --- the project -------------------------------------------------------------------------
    def open_project(self, folder) -> bool:
        """Open the project of ``folder`` (its ``project.json``, or a new one listing its slides
        with the current class table); returns whether it opened."""
        from ..engine.session.project import PROJECT_FILE, new_project, read_project

        folder = Path(folder)
        try:
            if folder.name == PROJECT_FILE or (folder / PROJECT_FILE).is_file():
                project = read_project(folder)
            else:
                session = self.controller.session
                project = new_project(folder, classes=session.classes if session is not None else ())
        except (ValueError, FileNotFoundError) as exc:
            self.controller.message.emit(SECTION, _describe_error(exc))
            return False
        self.project = project
        self.controller.project_trainer = self.train_project
        self.controller.message.emit(SECTION, f"Project {project.path}: Train on my edits now learns from "
                                              "every slide of it.")
        self._update()
        self._count()
        self._session_changed()
        return True

    def close_project(self) -> None:
        """Back to one slide: Train on my edits learns from the slide shown."""
        self.project = None
        self.counts = {}
        self.controller.project_trainer = None
        self._update()

    def show_slide(self, row: int) -> None:
        """Show slide ``row`` of the project (open it, or select its layer); the widget follows."""
        if self.project is None or not 0 <= row < len(self.project.slides):
            return
        path = self.project.slides[row]
        viewer = self.controller.viewer
        for layer in viewer.layers:
            if Path(str(layer.metadata.get("slide_path", ""))).resolve() == path:
                viewer.layers.selection.active = layer
                return
        try:
            viewer.open(str(path), plugin=PLUGIN)
        except Exception as exc:  # noqa: BLE001 - shown to the user
            self.controller.message.emit(SECTION, _describe_error(exc))

    # --- training on every slide --------------------------------------------------------------
    def train_project(self) -> bool:
        """*Train on my edits* with a project open: learn from every slide, save in the project.

        Returns False (the controller trains on the slide alone) when the slide shown is not one
        of the project's.
        """
        c = self.controller
        if not self._in_project():
            return False
        if not c.require_session("train") or c.running("train"):
            return True
        if "segment" in c.jobs:
            c.jobs["segment"].cancel()
        session, project, root, auto = c.session, self.project, c.store_root, self.auto
        steps = {"steps": c.train_steps} if c.train_steps else {}

        def make():
            from ..engine.session.project import train_project

            return train_project(project, extractor=session.extractor, head=session.head, cache=session.cache,
                                 root=root, auto=auto, **steps)

        outcomes = []

        def done(value):
            result, updated = value
            outcomes.append(result)
            self.project = updated
            if session is c.session:
                if result.extractor is not session.extractor:  # auto chose other features
                    session.set_extractor(result.extractor)
                    c.extractor = result.extractor
                session.set_head(result.result.head)
                c.layers.set_classes(session.classes)
            self.counts = {s.name: sum(s.painted.values()) for s in result.counts}
            self._update()
            per_slide = ", ".join(f"{s.name} {s.used}/{sum(s.painted.values())} px" for s in result.counts)
            what = "Head fine-tuned" if result.fine_tuned else "New head trained"
            c.message.emit("train", f"{what} on {len(result.counts)} slides of the project ({per_slide}; used/"
                                    f"painted) in {result.seconds:.1f} s; saved to {project.head}."
                                    + (f"\n{result.note}." if result.note else ""))
            c.head_changed.emit()
            c.classes_changed.emit()
            if session is c.session:
                c.segment_view()

        def finished(job):
            if job.cancelled:
                c.message.emit("train", "Training cancelled: the previous head is kept.")
            c.train_finished.emit(outcomes[0] if outcomes else None)

        c.last_train_job = c.start_job("train", make, description="Training on the project's edits", section="train",
                                    on_done=done, on_progress=c.train_progress.emit, on_finished=finished)
        return True

    def _in_project(self) -> bool:
        """Whether the slide shown (opened or not) is one of the project's."""
        layer = self.controller.image_layer
        path = layer.metadata.get("slide_path") if layer is not None else None
        return self.project is not None and path is not None and Path(str(path)).resolve() in self.project.slides

    # --- QuPath annotations in ------------------------------------------------------------------
    def import_annotations(self, path) -> None:
        """Paint the QuPath GeoJSON ``path`` into the slide shown (its session is opened first)."""
        c = self.controller

        def start() -> None:
            session = c.session

            def done(report):
                if session is c.session:
                    c.layers.set_classes(session.classes)
                    c.layers.reload_window()
                    c.layers.refresh_overview()
                name = Path(str(session.slide.path)).name
                self.counts[name] = sum(session.painted_counts().values())
                self._update()
                c.classes_changed.emit()
                c.message.emit(SECTION, report.text())

            c.start_job("import", lambda: session.import_annotations(path), description="Importing annotations",
                     section=SECTION, on_done=done)

        c.with_session(SECTION, start)

    # --- helpers --------------------------------------------------------------------------------
    def _count(self) -> None:
        """Labelled pixels of every slide, counted in a job."""
        project, root = self.project, self.controller.store_root

        def make():
            from ..core.progress import Progress
            from ..engine.session.project import project_slide_labels

            yield Progress("count", 0, 1, "counting the labelled pixels of every slide")
            return {s.name: int(s.labels.painted_pixel_count()) for s in project_slide_labels(project, root=root)}

        def done(counts):
            if project is self.project:
                self.counts = counts
                self._update()

        self.controller.start_job("count", make, description="Counting labels", section=SECTION, on_done=done)

    def _session_changed(self) -> None:
        """A slide of the project was opened: it gets the project's classes and head."""
        if self._sync_classes() and (self.project.head / "config.json").is_file():
            self.controller.open_head(self.project.head)  # one head for the project (the slide's kept aside)
        self._update()

    def _sync_classes(self) -> bool:
        """One class table: the session's new names join the project's (written), the project's
        classes join the session's. Returns whether the slide shown is one of the project."""
        c, project = self.controller, self.project
        session = c.session
        if project is None or session is None or Path(str(session.slide.path)).resolve() not in project.slides:
            return False
        from ..engine.training.slide_labels import class_ids_for
        from ..engine.session.project import write_project

        _, new = class_ids_for({k.name: k.color for k in session.classes}, project.classes)
        if new:
            self.project = project = project.with_classes(list(project.classes) + new)
            write_project(project)
        table = {k.id: k for k in session.classes}
        clash = [k for k in project.classes if k.id in table and table[k.id].name != k.name]
        merged = sorted({**table, **{k.id: k for k in project.classes}}.values(), key=lambda k: k.id)
        if not clash and merged != session.classes:  # ids meaning other classes: training maps names
            c.set_classes(merged)
        return True

    def _update(self) -> None:
        p = self.project
        self.close_button.setEnabled(p is not None)
        self.show_button.setEnabled(p is not None)
        self.slides.clear()
        if p is None:
            self.label.setText("No project: Train on my edits learns from the slide shown.")
            return
        self.label.setText(f"{p.path.parent.name}: {len(p.slides)} slides, {len(p.classes)} classes, head "
                           + ("trained" if (p.head / "config.json").is_file() else "not trained yet"))
        shown = self.controller.session
        current = Path(str(shown.slide.path)).resolve() if shown is not None and shown.slide.path else None
        for path in p.slides:
            n = self.counts.get(path.name)
            text = f"{path.name}: " + ("–" if n is None else f"{n} px labelled")
            item = QListWidgetItem(("▶ " if path == current else "   ") + text)
            item.setToolTip(str(path))
            self.slides.addItem(item)

    def _ask_project(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of slides (or of a project)")
        if folder:
            self.open_project(folder)

    def _ask_import(self) -> None:
        path = QFileDialog.getOpenFileName(self, "QuPath annotations (GeoJSON)", "",
                                           "GeoJSON (*.geojson *.json)")[0]
        if path:
            self.import_annotations(path)

    def _message(self, section: str, text: str) -> None:
        if section == SECTION:
            self.status.setText(text)
