"""The napari layers of an annotation session.

napari cannot paint a multiscale Labels layer, and a single-scale layer over a whole slide's
analysis level would be loaded whole into memory. So the session is shown with:

- **labels (overview)**: a read-only multiscale Labels layer over the label store's merged view
  (painted pixels over predictions), a lazy dask pyramid read chunk by chunk from disk; it
  covers the whole slide and shows everything segmented or painted so far;
- **labels (edit window)**: an editable single-scale Labels layer over the window last
  segmented (at most ``MAX_SEGMENT_PIXELS``); brush, fill, polygon, eraser, undo and redo act
  on it, and every change is written to the store's edits at once
  (:class:`~napari_pathsegdiff.engine.session.label_window.EditWindow`). What a tool touched comes from
  the layer's ``paint`` events, so a stroke of the class the model already predicts is an edit
  too: the layer shows predicted, unpainted pixels as ``PREDICTED + class`` (the class colour,
  paler, named "<class> (predicted)" in the status bar), so napari sees such a stroke as a
  change. Undo and redo emit no ``paint`` event: they are read from the difference with what
  was shown;
- **uncertainty**: an optional Image layer of the window's per-pixel uncertainty, one hue
  whose opacity grows with it (clear where the model is sure);
- **where to label next**: a Shapes layer with one rectangle, no fill, on the region last
  suggested.

All of them are placed by ``scale`` and ``translate`` so that they lie exactly over the slide
layer at any zoom. Class colours come from a ``DirectLabelColormap`` and class names from the
layers' ``features`` (shown in the status bar).
"""

from __future__ import annotations

import numpy as np

from ..core.label_store import ClassInfo
from ..core.ome_writer import label_pyramid
from ..core.region import Region
from ..engine.session.label_window import PREDICTED, EditWindow

OVERVIEW = "labels (overview)"
WINDOW = "labels (edit window)"
UNCERTAINTY = "uncertainty"
CLASS_KEYS = "123456789"
"""Keys that pick the class at that position of the class table, on the edit window."""
SUGGESTION = "where to label next"
SUGGESTION_COLOR = "#ffd400"
"""Edge colour of the "where to label next" box (yellow: visible on H&E and on the classes)."""
PYRAMID_MIN = 512
PREDICTED_ALPHA = 0.5
"""Opacity of predicted pixels relative to painted ones in the edit window."""
UNCERTAINTY_HUE = (0.0, 0.78, 1.0)
"""The one hue of the uncertainty layer (cyan: apart from eosin pink, haematoxylin purple and
the class colours)."""
UNCERTAINTY_CLEAR = 0.15
"""Uncertainty at or below this is fully transparent (the model is sure: nothing to check)."""
UNCERTAINTY_MAX_ALPHA = 0.85
"""Opacity of the highest uncertainty."""


def uncertainty_colormap():
    """The uncertainty layer's colormap: one hue whose opacity grows with the uncertainty,
    transparent up to :data:`UNCERTAINTY_CLEAR` (used by the dock's legend too)."""
    from napari.utils.colormaps import Colormap

    r, g, b = UNCERTAINTY_HUE
    return Colormap(
        colors=[[r, g, b, 0.0], [r, g, b, 0.0], [r, g, b, UNCERTAINTY_MAX_ALPHA]],
        controls=[0.0, UNCERTAINTY_CLEAR, 1.0],
        name="pathsegdiff uncertainty",
        display_name="uncertainty (cyan, clear when sure)",
    )


class LabelLayers:
    """The label layers of one session in a viewer.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer.
    on_edit : callable, optional
        Called with each :class:`~napari_pathsegdiff.engine.session.label_window.WindowChange`
        recorded from the edit window.
    on_refused : callable, optional
        Called with a message when a stroke was not recorded (a value that is no class id);
        the stroke is undone on screen.
    on_class_key : callable, optional
        Called with ``(class or None, position)`` when a number key picked a class (None: the
        table has no class at that position).
    """

    def __init__(self, viewer, *, on_edit=None, on_refused=None, on_class_key=None):
        self.viewer = viewer
        self.on_edit = on_edit
        self.on_refused = on_refused
        self.on_class_key = on_class_key
        self.session = None
        self.image_layer = None
        self.overview = None
        self.window_layer = None
        self.uncertainty_layer = None
        self.suggestion_layer = None
        self.window: EditWindow | None = None
        self._syncing = False
        self._fixes: list = []  # display fixes waiting for napari to write a stroke

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
            cache=False,  # napari's dask cache would keep showing chunks as they were first read
        )
        self.set_classes(session.classes)

    def detach(self) -> None:
        """Remove the layers of the session shown (its data stay on disk)."""
        for layer in (self.suggestion_layer, self.uncertainty_layer, self.window_layer, self.overview):
            if layer is not None and layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self.session = self.image_layer = self.overview = None
        self.window_layer = self.uncertainty_layer = self.suggestion_layer = self.window = None

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
                self.window_layer.events.labels_update.connect(self._apply_fixes)
                self.window_layer.events.set_data.connect(self._on_set_data)
                self._bind_class_keys(self.window_layer)
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

    def set_mpp(self, mpp: float | None) -> None:
        """The µm/px of the label layers' pixels (written by File > Save as the scale)."""
        for layer in (self.overview, self.window_layer):
            if layer is not None:
                layer.metadata["mpp"] = mpp

    def show_suggestion(self, region: Region) -> None:
        """Draw a box (no fill) around ``region`` (analysis level), replacing the previous one;
        the active layer stays active, so the brush keeps painting where it did."""
        scale, translate = self._placement(0, 0)
        # pixel i spans [i - 0.5, i + 0.5) in these coordinates (translate is the pixel centre)
        box = np.array([[region.y - 0.5, region.x - 0.5], [region.y1 - 0.5, region.x1 - 0.5]])
        width = max(1.0, min(region.height, region.width) / 96)
        active = self.viewer.layers.selection.active
        if self.suggestion_layer is None or self.suggestion_layer not in self.viewer.layers:
            self.suggestion_layer = self.viewer.add_shapes(
                [box], shape_type="rectangle", name=f"{self.image_layer.name} {SUGGESTION}",
                scale=scale, translate=translate, units=self.image_layer.units,
                face_color="transparent", edge_color=SUGGESTION_COLOR, edge_width=width,
            )
        else:
            layer = self.suggestion_layer
            layer.data = []
            layer.add_rectangles([box], edge_width=width, edge_color=SUGGESTION_COLOR,
                                 face_color="transparent")
        if active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active

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
        # the edit window also shows predicted, unpainted pixels (PREDICTED + id), paler
        window_colors = dict(colors)
        window_colors.update({PREDICTED + c.id: _paler(c.color) for c in classes})
        window_features = {"index": features["index"] + [PREDICTED + c.id for c in classes],
                           "class": features["class"] + [f"{c.name} (predicted)" for c in classes]}
        for layer, layer_colors, layer_features in ((self.overview, colors, features),
                                                    (self.window_layer, window_colors, window_features)):
            if layer is None:
                continue
            layer.colormap = DirectLabelColormap(color_dict=layer_colors)
            layer.features = layer_features
            layer.metadata["classes"] = [c.__dict__ for c in classes]

    def select_class(self, class_id: int) -> None:
        """Paint with ``class_id`` on the edit window."""
        if self.window_layer is not None:
            self.window_layer.selected_label = int(class_id)

    def pick_class(self, position: int) -> None:
        """Paint with the class at ``position`` (1 = first) of the class table."""
        classes = self.session.classes if self.session is not None else []
        chosen = classes[position - 1] if 1 <= position <= len(classes) else None
        if chosen is not None:
            self.select_class(chosen.id)
        if self.on_class_key is not None:
            self.on_class_key(chosen, position)

    def _bind_class_keys(self, layer) -> None:
        """Number keys 1..9 pick a class on ``layer`` (they replace napari's tool keys 1..7
        there; the tools keep their letter keys and buttons)."""
        for position, key in enumerate(CLASS_KEYS, start=1):
            layer.bind_key(key, lambda _layer, p=position: self.pick_class(p), overwrite=True)

    # --- painting -----------------------------------------------------------------------------
    # napari emits ``paint`` when a stroke is committed: after the data is written for a mouse
    # stroke, but *before* it for a single call (a polygon, a fill click, ``paint()``). So the
    # store is written at once from the event, and what the layer must show instead of what the
    # tool left is applied once napari has written: at its next ``labels_update`` or
    # ``set_data`` event, or on the next turn of the event loop.
    def _on_paint(self, event) -> None:
        """A brush, fill, polygon or eraser stroke: record every pixel it touched."""
        if self.window is None or self.window_layer is None or self._syncing:
            return
        touched = touched_pixels(event.value, self.window.shape)
        if touched is None:
            return
        try:
            change = self.window.record_paint(*touched)
        except ValueError as exc:
            self._after_write(lambda box=touched[0]: self._restore_shown(box))
            if self.on_refused is not None:
                self.on_refused(f"Not recorded: {exc}")
            return
        self._after_write(lambda: self._show(change))

    def _after_write(self, fix) -> None:
        from qtpy.QtCore import QTimer

        self._fixes.append((self.window, fix))
        QTimer.singleShot(0, self._apply_fixes)

    def _apply_fixes(self, event=None) -> None:
        fixes, self._fixes = self._fixes, []
        for window, fix in fixes:
            if window is self.window and self.window_layer is not None:  # not a replaced window
                fix()

    def _on_set_data(self, event=None) -> None:
        """The data changed without a stroke (undo, redo), or during one: record the
        difference with what was shown."""
        if self.window is None or self.window_layer is None or self._syncing:
            return
        self._apply_fixes()
        data = np.asarray(self.window_layer.data)
        if data.shape != self.window.shape:
            return
        self._show(self.window.record(data, kind="restore"))

    def _restore_shown(self, box) -> None:
        """Show what was shown in ``box`` again (a stroke that was not recorded)."""
        self._syncing = True
        try:
            self.window_layer.data[box] = self.window.shown[box]
            self.window_layer.refresh()
        finally:
            self._syncing = False

    def _show(self, change) -> None:
        """Show what the store now holds where ``change`` touched, and tell ``on_edit``."""
        data = self.window_layer.data
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
                "label_store": str(store.path), "predicted_offset": PREDICTED}

    def _show_uncertainty(self, values, scale, translate, *, visible: bool) -> None:
        values = np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0)
        if self.uncertainty_layer is None or self.uncertainty_layer not in self.viewer.layers:
            self.uncertainty_layer = self.viewer.add_image(
                values, name=f"{self.image_layer.name} {UNCERTAINTY}", scale=scale,
                translate=translate, units=self.image_layer.units, colormap=uncertainty_colormap(),
                contrast_limits=(0.0, 1.0), opacity=1.0, blending="translucent", visible=visible,
            )
        else:
            self.uncertainty_layer.data = values
            self.uncertainty_layer.translate = translate
            self.uncertainty_layer.visible = visible


def touched_pixels(atoms, shape: tuple[int, int]):
    """The pixels a napari ``paint`` event says were painted, as ``(box, touched, values)`` for
    :meth:`~napari_pathsegdiff.engine.session.label_window.EditWindow.record_paint`, or None.

    ``atoms`` is the event's ``value``: napari's history atoms, applied in order. A mask edit
    (brush, fill, polygon) has ``slice_key``, ``mask`` (None: the whole box) and ``new_value``;
    an ``(indices, old values, new values)`` tuple comes from ``data_setitem`` (and from every
    tool in napari before 0.6).
    """
    parts = []  # (y0, x0, mask, values) in the order napari applied them
    for atom in atoms or ():
        if hasattr(atom, "slice_key"):
            ys, xs = atom.slice_key[-2:]
            h, w = ys.stop - ys.start, xs.stop - xs.start
            mask = np.ones((h, w), bool) if atom.mask is None else np.asarray(atom.mask, bool).reshape(h, w)
            parts.append((ys.start, xs.start, mask, atom.new_value))
        else:
            indices, _, new = atom
            rows, cols = (np.asarray(i, dtype=np.int64).ravel() for i in indices[-2:])
            if rows.size == 0:
                continue
            y0, x0 = int(rows.min()), int(cols.min())
            mask = np.zeros((int(rows.max()) - y0 + 1, int(cols.max()) - x0 + 1), bool)
            mask[rows - y0, cols - x0] = True
            values = np.zeros(mask.shape, np.int64)
            values[rows - y0, cols - x0] = np.broadcast_to(np.asarray(new, dtype=np.int64), rows.shape)
            parts.append((y0, x0, mask, values))
    if not parts:
        return None
    y0 = max(0, min(p[0] for p in parts))
    x0 = max(0, min(p[1] for p in parts))
    y1 = min(shape[0], max(p[0] + p[2].shape[0] for p in parts))
    x1 = min(shape[1], max(p[1] + p[2].shape[1] for p in parts))
    if y1 <= y0 or x1 <= x0:
        return None
    touched = np.zeros((y1 - y0, x1 - x0), bool)
    values = np.zeros(touched.shape, np.int64)
    for py, px, mask, new in parts:
        sub = (slice(py - y0, py - y0 + mask.shape[0]), slice(px - x0, px - x0 + mask.shape[1]))
        touched[sub] |= mask
        values[sub] = np.where(mask, new, values[sub])
    return (slice(y0, y1), slice(x0, x1)), touched, values


def _paler(color: str) -> tuple[float, float, float, float]:
    """``#rrggbb`` as RGBA with :data:`PREDICTED_ALPHA` opacity."""
    from napari.utils.colormaps.standardize_color import transform_color

    r, g, b, _ = transform_color(color)[0]
    return (float(r), float(g), float(b), PREDICTED_ALPHA)
