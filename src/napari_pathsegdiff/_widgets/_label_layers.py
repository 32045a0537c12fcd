"""The napari layers of an annotation session.

napari cannot paint a multiscale Labels layer, and a single-scale layer over a whole slide's
analysis level would be loaded whole into memory. So the session is shown with:

- **labels (overview)**: a read-only multiscale Labels layer over the label store's merged view
  (painted pixels over predictions), a lazy dask pyramid read chunk by chunk from disk; it
  covers the whole slide and shows everything segmented or painted so far;
- **labels (edit window)**: an editable single-scale Labels layer over the window last
  segmented (at most ``MAX_SEGMENT_PIXELS``); brush, fill, polygon, eraser, undo and redo act
  on it, and every change is written to the store's edits at once
  (:class:`~napari_pathsegdiff.engine.label_window.EditWindow`);
- **uncertainty**: an optional Image layer of the window's per-pixel uncertainty.

All three are placed by ``scale`` and ``translate`` so that they lie exactly over the slide
layer at any zoom. Class colours come from a ``DirectLabelColormap`` and class names from the
layers' ``features`` (shown in the status bar).
"""

from __future__ import annotations

import numpy as np

from ..core.label_store import ClassInfo
from ..core.ome_writer import label_pyramid
from ..core.region import Region
from ..engine.label_window import EditWindow

OVERVIEW = "labels (overview)"
WINDOW = "labels (edit window)"
UNCERTAINTY = "uncertainty"
PYRAMID_MIN = 512


class LabelLayers:
    """The label layers of one session in a viewer.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer.
    on_edit : callable, optional
        Called with each :class:`~napari_pathsegdiff.engine.label_window.WindowChange`
        recorded from the edit window.
    """

    def __init__(self, viewer, *, on_edit=None):
        self.viewer = viewer
        self.on_edit = on_edit
        self.session = None
        self.image_layer = None
        self.overview = None
        self.window_layer = None
        self.uncertainty_layer = None
        self.window: EditWindow | None = None
        self._syncing = False

    # --- attaching ------------------------------------------------------------------------------
    def attach(self, session, image_layer) -> None:
        """Show ``session`` over ``image_layer`` (replacing what was shown)."""
        self.detach()
        self.session, self.image_layer = session, image_layer
        scale, translate = self._placement(0, 0)
        levels = label_pyramid(session.store.merged(), min_size=PYRAMID_MIN)
        if len(levels) == 1:  # always multiscale, so never editable (napari paints no pyramid)
            levels.append(levels[0][::2, ::2])
        self.overview = self.viewer.add_labels(
            levels,
            multiscale=True,
            name=f"{image_layer.name} {OVERVIEW}",
            scale=scale,
            translate=translate,
            units=image_layer.units,
            opacity=0.45,
            metadata=self._metadata(),
        )
        self.set_classes(session.classes)

    def detach(self) -> None:
        """Remove the layers of the session shown (its data stay on disk)."""
        for layer in (self.uncertainty_layer, self.window_layer, self.overview):
            if layer is not None and layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self.session = self.image_layer = self.overview = None
        self.window_layer = self.uncertainty_layer = self.window = None

    # --- showing a segmented window -----------------------------------------------------------
    def show_window(self, region: Region, uncertainty: np.ndarray | None = None, *,
                    show_uncertainty: bool = False) -> None:
        """Make ``region`` (analysis level) the editable window and refresh the overview."""
        store = self.session.store
        self.window = EditWindow(store, region.y, region.x, region.height, region.width)
        data = self.window.reload()
        scale, translate = self._placement(region.y, region.x)
        self._syncing = True
        try:
            if self.window_layer is None or self.window_layer not in self.viewer.layers:
                self.window_layer = self.viewer.add_labels(
                    data, name=f"{self.image_layer.name} {WINDOW}", scale=scale, translate=translate,
                    units=self.image_layer.units, opacity=0.6, metadata=self._metadata(),
                )
                self.window_layer.events.paint.connect(self._on_paint)
                self.window_layer.events.set_data.connect(self._on_set_data)
            else:
                self.window_layer.data = data
                self.window_layer.translate = translate
        finally:
            self._syncing = False
        self.set_classes(self.session.classes)
        if uncertainty is not None:
            self._show_uncertainty(uncertainty, scale, translate, visible=show_uncertainty)
        self.refresh_overview()
        self.viewer.layers.selection.active = self.window_layer

    def reload_window(self) -> None:
        """Read the window again from the store (after a new prediction)."""
        if self.window is None or self.window_layer is None:
            return
        self._syncing = True
        try:
            self.window_layer.data = self.window.reload()
        finally:
            self._syncing = False

    def refresh_overview(self) -> None:
        if self.overview is not None and self.overview in self.viewer.layers:
            self.overview.refresh()

    def set_uncertainty_visible(self, visible: bool) -> None:
        if self.uncertainty_layer is not None and self.uncertainty_layer in self.viewer.layers:
            self.uncertainty_layer.visible = bool(visible)

    # --- classes ------------------------------------------------------------------------------
    def set_classes(self, classes: list[ClassInfo]) -> None:
        """Colours and names of the classes on every label layer."""
        from napari.utils.colormaps import DirectLabelColormap

        colors = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0)}
        colors.update({c.id: c.color for c in classes})
        features = {"index": [0] + [c.id for c in classes],
                    "class": ["not labelled"] + [c.name for c in classes]}
        for layer in (self.overview, self.window_layer):
            if layer is None:
                continue
            layer.colormap = DirectLabelColormap(color_dict=colors)
            layer.features = features
            layer.metadata["classes"] = [c.__dict__ for c in classes]

    def select_class(self, class_id: int) -> None:
        """Paint with ``class_id`` on the edit window."""
        if self.window_layer is not None:
            self.window_layer.selected_label = int(class_id)

    # --- painting -----------------------------------------------------------------------------
    def _on_paint(self, event=None) -> None:
        self._record("paint")

    def _on_set_data(self, event=None) -> None:
        if not self._syncing:
            self._record("restore")  # undo / redo

    def _record(self, kind: str) -> None:
        if self.window is None or self.window_layer is None or self._syncing:
            return
        data = np.asarray(self.window_layer.data)
        if data.shape != self.window.shape:
            return
        change = self.window.record(data, kind=kind)
        if change.box is not None and not np.array_equal(data[change.box], change.display):
            self._syncing = True
            try:  # erased pixels show the prediction again
                self.window_layer.data[change.box] = change.display
                self.window_layer.refresh()
            finally:
                self._syncing = False
        if change.box is not None:
            self.refresh_overview()
            if self.on_edit is not None:
                self.on_edit(change)

    # --- helpers ------------------------------------------------------------------------------
    def _placement(self, y: int, x: int) -> tuple[tuple[float, float], tuple[float, float]]:
        """``scale`` and ``translate`` of an analysis-level array whose pixel (0, 0) is (y, x)."""
        dy, dx = self.session.store.downsample
        sy, sx = (float(s) for s in self.image_layer.scale[-2:])
        ty, tx = (float(t) for t in self.image_layer.translate[-2:])
        scale = (dy * sy, dx * sx)
        # analysis pixel i covers level-0 pixels [i*d, (i+1)*d): its centre is at (i + 0.5)*d - 0.5
        translate = (ty + (y * dy + (dy - 1) / 2) * sy, tx + (x * dx + (dx - 1) / 2) * sx)
        return scale, translate

    def _metadata(self) -> dict:
        store = self.session.store
        return {"mpp": store.mpp, "classes": [c.__dict__ for c in store.classes],
                "label_store": str(store.path)}

    def _show_uncertainty(self, values, scale, translate, *, visible: bool) -> None:
        values = np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0)
        if self.uncertainty_layer is None or self.uncertainty_layer not in self.viewer.layers:
            self.uncertainty_layer = self.viewer.add_image(
                values, name=f"{self.image_layer.name} {UNCERTAINTY}", scale=scale,
                translate=translate, units=self.image_layer.units, colormap="magma",
                contrast_limits=(0.0, 1.0), opacity=0.5, blending="additive", visible=visible,
            )
        else:
            self.uncertainty_layer.data = values
            self.uncertainty_layer.translate = translate
            self.uncertainty_layer.visible = visible
