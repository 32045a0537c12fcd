"""Synthesize section: a style generator for the slide's classes, generated tiles shown as a grid,
and those tiles as extra training samples of the next "Train on my edits".

No generator ships with the plugin: open a generator folder (``pathsegdiff generator train``),
or train one here on the regions you segmented and corrected. The work runs in the engine
(:mod:`~napari_pathsegdiff.engine.session.session_synthesis`); this module only holds the controls.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ._controller import AnnotationController
from ._viewport import visible_region

STYLE_CHOICES = ("current view", "whole slides open")
TILES_LAYER = "synthetic tiles"
MASKS_LAYER = "synthetic masks"


class SynthesizeSection(QWidget):
    """Open or train a generator, generate N tiles from the corrected layouts, show them, and
    include them in the next training.

    Signals
    -------
    generator_ready(object)
        A generator folder is in use (after Open or Train), or None when that failed or was
        cancelled.
    generated(object)
        A :class:`~napari_pathsegdiff.engine.session.session_synthesis.GeneratedSet`, or None.

    Attributes
    ----------
    generator_folder : Path or None
        The generator used by Generate.
    backbone : str or None
        Backbone folder a new generator is built on (None: that of the diffusion features, else
        the default backbone).
    training_config : str
        Generator architecture trained here (``"small"``; ``"tiny"`` for tests).
    training_settings : dict
        Settings of the run (see ``engine.session_synthesis.WIDGET_SETTINGS``).
    sampling_steps, seed : int
        DDIM steps and seed of Generate.
    device : str
    """

    generator_ready = Signal(object)
    generated = Signal(object)

    def __init__(self, controller: AnnotationController, parent=None):
        super().__init__(parent)
        from ..engine.session.session_synthesis import WIDGET_SETTINGS

        self.controller = controller
        self.generator_folder: Path | None = None
        self.backbone: str | None = None
        self.training_config = "small"
        self.training_settings = dict(WIDGET_SETTINGS)
        self.sampling_steps = 25
        self.seed = 0
        self.device = "auto"
        self.last_job = None

        intro = QLabel("No generator ships with the plugin: open a generator folder, or train one "
                       "on the regions you segmented and corrected.")
        self.open_button = QPushButton("Open generator…")
        self.train_button = QPushButton("Train a generator on my labels")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.generator_label = QLabel("–")
        self.time_label = QLabel(self.time_text())
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.style = QComboBox()
        self.style.addItems(STYLE_CHOICES)
        self.style.setToolTip("Where the style tiles come from: the part of the slide in view, or "
                              "every slide open in the viewer.")
        self.count = QSpinBox()
        self.count.setRange(1, 256)
        self.count.setValue(8)
        self.generate_button = QPushButton("Generate")
        self.include = QCheckBox("Include in next training")
        self.include.setToolTip("\"Train on my edits\" also trains on the generated tiles (each "
                                "with half the weight of a painted pixel).")
        self.status = QLabel("")
        for label in (intro, self.generator_label, self.time_label, self.status):
            label.setWordWrap(True)

        gen_row = QHBoxLayout()  # two rows: one would not fit a narrow dock
        gen_row.addWidget(self.open_button)
        gen_row.addStretch(1)
        train_row = QHBoxLayout()
        train_row.addWidget(self.train_button, 1)
        train_row.addWidget(self.cancel_button)
        form = QFormLayout()
        form.addRow("Style from:", self.style)
        form.addRow("Tiles:", self.count)
        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addLayout(gen_row)
        layout.addLayout(train_row)
        layout.addWidget(self.generator_label)
        layout.addWidget(self.time_label)
        layout.addWidget(self.progress)
        layout.addLayout(form)
        layout.addWidget(self.generate_button)
        layout.addWidget(self.include)
        layout.addWidget(self.status)

        self.open_button.clicked.connect(self._pick_generator)
        self.train_button.clicked.connect(self.train_generator)
        self.cancel_button.clicked.connect(self.cancel)
        self.generate_button.clicked.connect(self.generate)
        self.include.toggled.connect(self._include)
        controller.busy.connect(self._busy)
        controller.message.connect(self._message)
        controller.session_changed.connect(self._session_changed)

    # --- text -----------------------------------------------------------------------------------
    def time_text(self) -> str:
        """The expected duration of "Train a generator on my labels" on a 2-core CPU."""
        from ..engine.session.session_synthesis import CPU_SECONDS_PER_STEP

        steps = int(self.training_settings.get("steps", 0))
        minutes = max(1, round(steps * CPU_SECONDS_PER_STEP / 60))
        return (f"Training takes about {minutes} min on a 2-core CPU ({steps} steps of about "
                f"{CPU_SECONDS_PER_STEP:g} s), less on a GPU. Cancel stops it; your edits are "
                "only read.")

    # --- generator --------------------------------------------------------------------------------
    def _pick_generator(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open a generator folder")
        if folder:
            self.open_generator(folder)

    def open_generator(self, folder: str | Path) -> None:
        """Use the generator in ``folder``; one trained for other classes is refused."""
        c = self.controller
        if not c.require_session("synthesize"):
            return
        session, folder = c.session, Path(folder)

        def make():
            from ..engine.session.annotation import AnnotationError
            from ..engine.session.session_synthesis import analysis_side, check_generator_classes, corrected_layouts
            from ..models.generator import load_generator

            yield from ()
            gen = load_generator(folder, device="cpu")
            try:
                side = analysis_side(session, int(gen.config.tile_size), gen.config.mpp)
                used = sorted({int(v) for _, m in corrected_layouts(session, side) for v in np.unique(m)})
            except AnnotationError:
                used = []
            check_generator_classes(gen, session.classes, used)
            return gen.describe_classes()

        opened = []

        def done(classes):
            opened.append(folder)
            self.generator_folder = folder
            self._show_generator(classes)
            c.message.emit("synthesize", f"Opened the generator {folder}.")

        self.last_job = c.start_job("generator", make, description="Opening the generator", section="synthesize",
                                 on_done=done,
                                 on_finished=lambda job: self.generator_ready.emit(opened[0] if opened else None))

    def train_generator(self) -> None:
        """Train a generator on the corrected regions, with the open slides as style sources."""
        c = self.controller
        if not c.require_session("synthesize") or c.running("generator"):
            return
        session, spec, device = c.session, self.backbone, self.device
        config, overrides = self.training_config, dict(self.training_settings)
        style = self._slide_paths()

        def make():
            from ..engine.runs.generator_training import make_settings
            from ..engine.session.session_synthesis import session_backbone, train_session_generator

            yield from ()
            backbone = session_backbone(session.extractor, spec)
            settings = make_settings(config, **overrides)
            return (yield from train_session_generator(session, backbone, style=style, settings=settings,
                                                       device=device))

        result = []

        def done(folder):
            result.append(folder)
            self.generator_folder = Path(folder)
            self._show_generator(None)
            c.message.emit("synthesize", f"Generator trained and saved to {folder}.")

        def finished(job):
            if job.cancelled:
                c.message.emit("synthesize", "Generator training cancelled; your edits are unchanged.")
            self.generator_ready.emit(result[0] if result else None)

        self.last_job = c.start_job("generator", make, description="Training a generator on your labels",
                                 section="synthesize", on_done=done, on_progress=self._progress,
                                 on_finished=finished)

    # --- generating -------------------------------------------------------------------------------
    def generate(self) -> None:
        """Generate the chosen number of tiles and show them as a grid."""
        c = self.controller
        if not c.require_session("synthesize") or c.running("generate"):
            return
        if self.generator_folder is None:
            c.message.emit("synthesize", "No generator yet: open a generator folder, or train one on your labels.")
            self.generated.emit(None)
            return
        session, folder, n, device = c.session, self.generator_folder, self.count.value(), self.device
        steps, seed = self.sampling_steps, self.seed
        whole = self.style.currentText() == STYLE_CHOICES[1]
        view = None if whole else visible_region(c.viewer, c.image_layer)
        if not whole and view is None:
            c.message.emit("synthesize", "No part of the slide is visible: pan or zoom to tissue.")
            self.generated.emit(None)
            return
        paths = self._slide_paths() if whole else []

        def make():
            from ..core.slide import open_slide
            from ..engine.session.session_synthesis import generate_session_pairs

            yield from ()
            opened = []
            if whole:
                own = str(Path(session.slide.path).resolve()) if session.slide.path else None
                style = [(session.slide, None)] if own is None else []
                for p in paths:
                    if own == str(Path(p).resolve()):
                        style.append((session.slide, None))
                    else:
                        opened.append(open_slide(p))
                        style.append((opened[-1], None))
            else:
                style = [(session.slide, view)]
            try:
                return (yield from generate_session_pairs(session, folder, n=n, style=style, seed=seed,
                                                          steps=steps, device=device))
            finally:
                for s in opened:
                    s.close()

        result = []

        def done(generated):
            result.append(generated)
            if session is c.session:
                self.show_tiles(generated)
            c.message.emit("synthesize", f"Generated {len(generated.images)} tiles in {generated.seconds:.1f} s; "
                                         f"saved to {generated.folder}.")

        def finished(job):
            if job.cancelled:
                c.message.emit("synthesize", "Generation cancelled: the tiles generated before are kept.")
            self.generated.emit(result[0] if result else None)

        self.last_job = c.start_job("generate", make, description="Generating tiles", section="synthesize",
                                 on_done=done, on_progress=self._progress, on_finished=finished)

    def show_tiles(self, generated) -> None:
        """Show the tiles as one grid Image layer and their masks as a Labels layer over it."""
        from napari.utils.colormaps import DirectLabelColormap

        from ..engine.session.session_synthesis import mosaic

        c = self.controller
        images, masks = mosaic(generated.images, fill=255), mosaic(generated.masks, fill=0)
        scale, translate = self._placement()
        colors = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0)}
        colors.update({cl.id: cl.color for cl in c.session.classes})
        features = {"index": [0] + [cl.id for cl in c.session.classes],
                    "class": ["not labelled"] + [cl.name for cl in c.session.classes]}
        viewer = c.viewer
        for name in (TILES_LAYER, MASKS_LAYER):
            if name in viewer.layers:
                viewer.layers.remove(name)
        viewer.add_image(images, name=TILES_LAYER, rgb=True, scale=scale, translate=translate,
                         metadata={"generated": str(generated.folder)})
        viewer.add_labels(masks, name=MASKS_LAYER, scale=scale, translate=translate, opacity=0.4,
                          colormap=DirectLabelColormap(color_dict=colors), features=features,
                          metadata={"generated": str(generated.folder)})

    def cancel(self) -> None:
        for name in ("generator", "generate"):
            job = self.controller.jobs.get(name)
            if job is not None:
                job.cancel()

    # --- helpers --------------------------------------------------------------------------------
    def _slide_paths(self) -> list[str]:
        """Files of the slides open in the viewer (the style sources)."""
        out = []
        for layer in self.controller.viewer.layers:
            path = getattr(layer, "metadata", {}).get("slide_path")
            if path and str(path) not in out:
                out.append(str(path))
        return out

    def _placement(self):
        """Scale and translate putting the grid right of the slide, at the analysis level's size."""
        c = self.controller
        layer = c.image_layer
        if layer is None or c.session is None:
            return (1.0, 1.0), (0.0, 0.0)
        dy, dx = c.session.store.downsample
        sy, sx = (float(s) for s in layer.scale[-2:])
        ty, tx = (float(t) for t in layer.translate[-2:])
        width = float(c.session.slide.shape[1])
        return (dy * sy, dx * sx), (ty, tx + (width + 32 * dx) * sx)

    def _show_generator(self, classes: str | None) -> None:
        text = str(self.generator_folder) if self.generator_folder is not None else "–"
        self.generator_label.setText(f"Generator: {text}" + (f" · classes {classes}" if classes else ""))

    def _session_changed(self) -> None:
        session = self.controller.session
        if session is None:
            return
        from ..engine.session.session_synthesis import latest_session_generator

        latest = latest_session_generator(session.folder)
        if latest is not None:
            self.generator_folder = latest
        self._show_generator(None)

    def _include(self, on: bool) -> None:
        self.controller.include_synthetic = bool(on)

    def _progress(self, record) -> None:
        self.progress.setFormat(f"{record.stage}: %v/%m")
        self.progress.setRange(0, max(int(record.total or 0), 1))
        self.progress.setValue(int(record.done))

    def _busy(self, name: str, on: bool) -> None:
        if name in ("generator", "generate"):
            running = self.controller.running("generator") or self.controller.running("generate")
            for b in (self.open_button, self.train_button, self.generate_button):
                b.setEnabled(not running)
            self.cancel_button.setEnabled(running)

    def _message(self, section: str, text: str) -> None:
        if section == "synthesize":
            self.status.setText(text)
