"""The state of the dock widget: the annotation session of the active slide, its layers and the
long jobs (open, segment, train, load features), shared by the widget's sections.

Every engine call that may take time runs in a :class:`~._work.Job` (a napari thread worker);
heavy modules (torch, the engine's prediction and training) are imported only inside those
jobs. Results come back on the main thread through the callbacks below, and sections learn of
them through Qt signals.
"""

from __future__ import annotations

import time
from pathlib import Path

from qtpy.QtCore import QObject, QTimer, Signal

from ._label_layers import LabelLayers
from ._session_work import extractor_work, open_session_work
from ._viewport import camera, show_region, show_view, view_of, visible_region
from ._work import Job

LIVE_DELAY_MS = 400
"""Camera changes are debounced this long before "Live" segments the new view."""

VIEW_SAVE_MS = 1000
"""Camera changes are debounced this long before the view is kept in the session folder."""

PROGRESS_NOTE_S = 0.5
"""Shortest interval between two progress notes in a section's status (seconds)."""

#: Features that run a backbone; every other choice is a kind of the feature registry.
BACKBONE_CHOICES = ("default backbone", "backbone folder")


def feature_choices() -> tuple[str, ...]:
    """The Model section's features: the two backbone choices, then the registry's other kinds."""
    from ..models.features import extractor_entry, registered_kinds

    return BACKBONE_CHOICES + tuple(k for k in registered_kinds() if not extractor_entry(k).uses_backbone)


FEATURE_CHOICES = feature_choices()
_NO_SLIDE = "No slide open: open a slide (File > Open, or File > Open Sample > PathSegDiff)."


class AnnotationController(QObject):
    """Session, layers and jobs of the PathSegDiff widget.

    Signals
    -------
    session_changed()
        A session was opened or closed (``session`` is the new one, or None).
    classes_changed()
        The class table changed.
    head_changed()
        The head or the features changed.
    message(str, str)
        ``(section, text)``: a message for a section ("model", "project", "classes", "segment",
        "train", "synthesize", "export"); errors start with "Error: " or name the problem.
    segmented(object)
        A :class:`~napari_pathsegdiff.engine.session.annotation.SegmentResult` is on screen.
    refreshed(object)
        The regions an earlier head segmented were segmented again in the background: their
        number, or None when stopped or failed (they stay marked in the status line).
    train_progress(object)
        A :class:`~napari_pathsegdiff.core.progress.Progress` of the training.
    train_finished(object)
        The training ended: a ``TrainOutcome``, or None when cancelled or failed.
    busy(str, bool)
        A job ("open", "features", "head", "segment", "refresh", "train", "suggest", "export",
        "generator", "generate") started or ended.
    suggested(object)
        "Where to label next" moved the view: the ``Suggestion``, or None when there is none.
    exported(object)
        An export ended: the path written, or None.
    class_picked(int)
        A number key on the edit window picked the class with this id.
    """

    session_changed = Signal()
    classes_changed = Signal()
    head_changed = Signal()
    message = Signal(str, str)
    segmented = Signal(object)
    refreshed = Signal(object)
    train_progress = Signal(object)
    train_finished = Signal(object)
    busy = Signal(str, bool)
    suggested = Signal(object)
    exported = Signal(object)
    class_picked = Signal(int)

    def __init__(self, viewer, parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self.session = None
        self.image_layer = None
        self.layers = LabelLayers(viewer, on_edit=self._edited,
                                  on_refused=lambda text: self.message.emit("train", text),
                                  on_class_key=self._class_key)
        self.jobs: dict[str, Job] = {}
        self.extractor = None
        self.device = "auto"
        self.store_root: Path | None = None
        self.train_steps: int | None = None
        self.show_uncertainty = False
        self.live = False
        self.last_train_job: Job | None = None
        self.include_synthetic = False
        self.last_suggestion = None
        self.project_trainer = None  # set by the Project section: Train on my edits learns from every slide
        self._cancelled_segment: Job | None = None
        self._after_open: tuple[str, object] | None = None  # (section, action) queued while opening
        self._live_timer = QTimer(self)
        self._live_timer.setSingleShot(True)
        self._live_timer.setInterval(LIVE_DELAY_MS)
        self._live_timer.timeout.connect(lambda: self.segment_view(live=True))
        self._view_timer = QTimer(self)  # keeps the view in the session folder once it settles
        self._view_timer.setSingleShot(True)
        self._view_timer.setInterval(VIEW_SAVE_MS)
        self._view_timer.timeout.connect(self._save_view)
        cam = camera(viewer)
        cam.events.center.connect(self._view_moved)
        cam.events.zoom.connect(self._view_moved)

    # --- jobs --------------------------------------------------------------------------------
    def running(self, name: str) -> bool:
        job = self.jobs.get(name)
        return job is not None and job.running

    def start_job(self, name: str, make, *, description: str, on_done, section: str, on_progress=None,
                  on_error=None, on_finished=None):
        """Run the work ``make()`` returns in a worker thread as the job ``name``.

        The sections' one way to run long work: a newer job of the same name supersedes it,
        ``busy`` is emitted while it runs, progress and errors go to ``section``'s status line,
        and ``on_done`` gets its result on the GUI thread. Returns the :class:`Job`.
        """
        def finished(job):
            if self.jobs.get(name) is job:  # not superseded by a newer job of the same name
                del self.jobs[name]
                self.busy.emit(name, False)
            if on_finished is not None:
                on_finished(job)

        def failed(exc):
            self.message.emit(section, _describe_error(exc))
            if on_error is not None:
                on_error(exc)

        if on_progress is None:  # sections with no progress display of their own get notes
            on_progress = self._progress_note(section, description)
        job = Job(make, description=description, on_progress=on_progress, on_done=on_done,
                  on_error=failed, on_finished=finished)
        self.jobs[name] = job
        self.busy.emit(name, True)
        return job

    def _progress_note(self, section: str, description: str):
        """A progress callback that shows ``description: what (done/total)`` in the section's
        status, at most every :data:`PROGRESS_NOTE_S` seconds."""
        last = [-PROGRESS_NOTE_S]

        def note(record) -> None:
            now = time.monotonic()
            if now - last[0] < PROGRESS_NOTE_S or not hasattr(record, "stage"):
                return
            last[0] = now
            total = int(record.total or 0)
            what = getattr(record, "message", "") or record.stage
            count = f" ({int(record.done)}/{total})" if total > 0 else ""
            self.message.emit(section, f"{description}: {what}{count}…")

        return note

    def _progress_estimate(self, section: str, description: str):
        """Like :meth:`_progress_note`, with the time left at the pace since the first record:
        ``description: 37/108 tiles, about 40 s left…``."""
        from ..core.progress import describe_time_left, time_left

        start: list = []  # (time, done) of the first record: setup time is not in the pace
        last = [-PROGRESS_NOTE_S]

        def note(record) -> None:
            now = time.monotonic()
            if not start:
                start.append((now, int(record.done)))
            if now - last[0] < PROGRESS_NOTE_S:
                return
            last[0] = now
            total, done = int(record.total or 0), int(record.done)
            t0, done0 = start[0]
            left = time_left(done - done0, total - done0, now - t0)
            what = f"{done}/{total} tiles" if total > 0 else (record.message or record.stage)
            when = describe_time_left(left)
            self.message.emit(section, f"{description}: {what}" + (f", {when}" if when else "") + "…")

        return note

    def shutdown(self) -> None:
        """Stop the jobs and forget their results (edits and the saved head are on disk)."""
        self._live_timer.stop()
        self.live = False
        for job in list(self.jobs.values()):
            job.detach()
        self.jobs.clear()
        try:
            if self._view_timer.isActive():
                self._save_view()
            self._view_timer.stop()
            self._set_camera_hooks(False)
            cam = camera(self.viewer)
            cam.events.center.disconnect(self._view_moved)
            cam.events.zoom.disconnect(self._view_moved)
        except (RuntimeError, TypeError, ValueError):  # the viewer is already gone
            pass

    # --- the slide and its session -------------------------------------------------------------
    def open_for_layer(self, layer) -> None:
        """Follow the slide shown by ``layer``: its annotations are opened when it has some
        (nothing is created until the user segments); None closes the session."""
        if _same_layer(layer, self.image_layer):
            return
        if self.session is not None or self.running("open"):
            self.close_session()
        self.image_layer = layer
        if layer is None:
            return
        from ..engine.session.session_folder import existing_session_folder

        meta = layer.metadata
        existing = existing_session_folder(meta.get("slide_path"), meta.get("slide_identity", ""),
                                           root=self.store_root)
        if existing is not None:
            self._open_session(existing)
        else:
            self.message.emit("segment", "Press \"Segment view\" to start annotating this slide.")

    def reopen_in_folder(self, folder: str | Path) -> None:
        """Keep the current slide's edits and head in ``folder`` (reopen the session there); the
        folder is remembered for this slide."""
        layer = self.image_layer
        self.close_session()
        self.image_layer = layer
        if layer is not None:
            self._open_session(Path(folder), remember=True)

    def close_session(self) -> None:
        """Stop the session's jobs and remove its layers (everything is already on disk)."""
        self._after_open = None
        for name in ("open", "segment", "refresh", "train", "head", "generator", "generate"):
            if name in self.jobs:
                self.jobs[name].cancel()
        if self._view_timer.isActive():  # moved since the view was last kept
            self._save_view()
        self._view_timer.stop()
        self.layers.detach()
        self.session = None
        self.image_layer = None
        self.session_changed.emit()

    def with_session(self, section: str, then) -> None:
        """Run ``then()`` once the session of the current slide is open (creating it).

        While the session is being opened, ``then`` is queued (replacing an earlier queued
        action: the last click wins) and runs as soon as the session is open; the section says
        so, and says so again if opening fails.
        """
        if self.session is not None:
            then()
        elif self.image_layer is None:
            self.message.emit(section, _NO_SLIDE)
        elif self.running("open"):
            self._after_open = (section, then)
            self.message.emit(section, "Opening the slide's annotations: this runs as soon as they are "
                                       "open…")
        else:
            self._open_session(None, then=then)

    def _run_after_open(self) -> None:
        """Run the action queued while the session was opening (if any)."""
        queued, self._after_open = self._after_open, None
        if queued is not None and self.session is not None:
            queued[1]()

    def _drop_after_open(self, exc: BaseException) -> None:
        """Opening failed: say that the queued action did not run."""
        queued, self._after_open = self._after_open, None
        if queued is not None:
            self.message.emit(queued[0], "Not run: the slide's annotations could not be opened "
                                         f"({_describe_error(exc)}).")

    def _open_session(self, folder: Path | None, *, then=None, remember: bool = False) -> None:
        layer = self.image_layer
        path = layer.metadata.get("slide_path")
        if not path:
            self.message.emit("model", "This slide layer has no file: open the slide from a file.")
            return
        root, extractor = self.store_root, self.extractor

        def make():
            return open_session_work(path, folder=folder, root=root, extractor=extractor,
                                      remember=remember)

        def done(session):
            if not _same_layer(layer, self.image_layer) or layer not in self.viewer.layers:
                return
            # an action asked for while opening acts on the view the user has now: keep it
            self._session_opened(session, layer, restore_view=then is None and self._after_open is None)
            if then is not None:
                then()
            self._run_after_open()

        self.start_job("open", make, description="Opening the slide's annotations", on_done=done,
                    section="model", on_error=self._drop_after_open)

    def _session_opened(self, session, layer, *, restore_view: bool = True) -> None:
        self.session = session
        self.extractor = session.extractor
        self.layers.attach(session, layer)
        if restore_view:
            self._restore_view()
        self.session_changed.emit()
        self.classes_changed.emit()
        self.head_changed.emit()
        self.message.emit("model", " ".join(session.notes))
        session.notes.clear()
        if session.head is not None:  # regions an earlier head segmented are brought up to date
            self.refresh_stale()

    # --- the view, kept in the session folder ---------------------------------------------------
    def _view_moved(self, event=None) -> None:
        if self.session is not None:
            self._view_timer.start()

    def _save_view(self) -> None:
        """Keep the camera's centre and zoom in the session folder (written atomically)."""
        from ..engine.session.session_folder import save_view

        self._view_timer.stop()
        if self.session is None or self.image_layer is None or self.image_layer not in self.viewer.layers:
            return
        try:
            save_view(self.session.folder, *view_of(self.viewer, self.image_layer))
        except (OSError, ValueError):  # a convenience: the edits and the head are what matter
            pass

    def _restore_view(self) -> None:
        """Show the view kept in the session folder, if any."""
        from ..engine.session.session_folder import load_view

        view = load_view(self.session.folder)
        if view is not None:
            show_view(self.viewer, self.image_layer, *view)
            self._view_timer.stop()  # the view just restored is the one on disk

    # --- features and head ---------------------------------------------------------------------
    def choose_features(self, choice: str, *, folder: str | Path | None = None, device: str | None = None) -> None:
        """Use the default backbone, a backbone ``folder``, or a kind of the feature registry."""
        choices = feature_choices()
        if choice not in choices:
            raise ValueError(f"Unknown features {choice!r}: use one of {choices}.")
        if choice == "backbone folder" and not folder:
            self.message.emit("model", "Pick the backbone folder first.")
            return
        device = device or self.device
        self.device = device

        def make():
            return extractor_work(choice, folder, device)

        self.start_job("features", make, description="Loading the features", section="model",
                    on_done=self.use_extractor)

    def use_extractor(self, extractor) -> None:
        """Use ``extractor`` for the session (a head for other features is put aside)."""
        self.extractor = extractor
        if self.session is not None:
            self.session.set_extractor(extractor)
            for note in self.session.notes:
                self.message.emit("model", note)
            self.session.notes.clear()
        self.head_changed.emit()

    def new_head(self) -> None:
        if self.require_session("model"):
            self.session.new_head()
            self.message.emit("model", "New head: paint strokes of at least two classes, then train.")
            self.head_changed.emit()

    def open_head(self, folder: str | Path) -> None:
        """Load the head in ``folder``; a head for other features is refused with the reason."""
        if not self.require_session("model"):
            return
        session = self.session

        def make():
            return _as_work(session.open_head, folder)

        def done(_):
            self.message.emit("model", f"Opened the head {folder}.")
            self.classes_changed.emit()
            self.head_changed.emit()
            self.layers.set_classes(session.classes)

        self.start_job("head", make, description="Opening the head", section="model", on_done=done)

    def revert_head(self) -> None:
        """Go back to the previous head (the session folder's ``head-previous/``; the head it
        replaces becomes the previous one), and segment the edit window again with it."""
        if not self.require_session("model"):
            return
        if self.running("train"):
            self.message.emit("model", "Training is running: revert when it is done (or cancel it).")
            return
        session = self.session

        def make():
            return _as_work(session.revert_head)

        def done(_):
            head = session.head
            self.message.emit(
                "model",
                f"Reverted to the previous head ({', '.join(head.class_names)}). The head it replaced "
                "is kept as the previous one: revert again to bring it back.",
            )
            self.layers.set_classes(session.classes)
            self.classes_changed.emit()
            self.head_changed.emit()
            if session is self.session and self.layers.window is not None:
                self.segment_region(_window_region(session, self.layers.window))

        self.start_job("head", make, description="Reverting to the previous head", section="model",
                    on_done=done)

    def save_head_as(self, folder: str | Path) -> None:
        if not self.require_session("model"):
            return
        try:
            path = self.session.save_head_as(folder)
        except Exception as exc:  # noqa: BLE001 - shown to the user
            self.message.emit("model", _describe_error(exc))
            return
        self.message.emit("model", f"Saved the head to {path}.")

    def set_slide_mpp(self, text) -> None:
        """Give the level-0 µm/px (``text``, a number) of a slide whose file records none; it is
        kept in the slide's session folder (opened, or created, first)."""
        try:
            mpp = float(str(text).strip().replace(",", "."))
        except ValueError:
            self.message.emit("model", f"Error: {str(text)!r} is not a number: type the slide's µm per "
                                       "pixel at full resolution, e.g. 0.25 for a 40x scan.")
            return

        def apply() -> None:
            try:
                self.session.set_slide_mpp(mpp)
            except ValueError as exc:
                self.message.emit("model", _describe_error(exc))
                return
            self.layers.set_mpp(self.session.store.mpp)
            self.message.emit("model", f"Slide µm/px set to {mpp:g} and kept in its session folder: "
                                       "segmenting matches the head's µm/px and exports carry the scale.")
            self.head_changed.emit()

        self.with_session("model", apply)

    # --- classes -------------------------------------------------------------------------------
    def set_classes(self, classes) -> bool:
        """Replace the class table; returns whether it was accepted."""
        if not self.require_session("classes"):
            return False
        try:
            self.session.set_classes(classes)
        except ValueError as exc:
            self.message.emit("classes", _describe_error(exc))
            self.classes_changed.emit()  # show the table as it is
            return False
        self.layers.set_classes(self.session.classes)
        self.message.emit("classes", "")
        self.classes_changed.emit()
        return True

    def select_class(self, class_id: int) -> None:
        self.layers.select_class(class_id)

    def _class_key(self, chosen, position: int) -> None:
        """A number key on the edit window picked the class at ``position`` (or found none)."""
        if chosen is None:
            count = len(self.session.classes) if self.session is not None else 0
            self.message.emit("classes", f"No class {position}: the table has {count}. Add one, or "
                                         f"press 1 to {max(count, 1)}.")
            return
        self.message.emit("classes", f"Painting with {chosen.name} (key {position}).")
        self.class_picked.emit(chosen.id)

    # --- segmenting ----------------------------------------------------------------------------
    def segment_view(self, *, live: bool = False) -> None:
        """Segment the region of the slide visible now (a superseded segmentation is cancelled).

        Without a trained head the visible region becomes an empty editable window, to paint
        the first strokes in.
        """
        if self.image_layer is None:
            self.message.emit("segment", _NO_SLIDE)
            return
        if self.running("train"):
            if not live:
                self.message.emit("segment", "Training is running: segment when it is done.")
            return
        region = visible_region(self.viewer, self.image_layer)
        if region is None:
            self.message.emit("segment", "No part of the slide is visible: pan or zoom to it.")
            return
        self.with_session("segment", lambda: self.segment_region(region))

    def segment_region(self, region) -> None:
        """Segment ``region`` (any level) of the current slide."""
        if not self.require_session("segment"):
            return
        previous = self.jobs.get("segment")
        if previous is not None:
            previous.cancel()  # superseded: never queued
        self._stop_refresh()  # the view first; the refresh resumes after it
        session = self.session
        if session.head is None:
            self._empty_window(region)
            return

        def make():
            return session.segment(region)

        def done(result):
            if session is not self.session:
                return
            self.layers.show_window(result.region, result.uncertainty,
                                    show_uncertainty=self.show_uncertainty)
            notes = f" ({'; '.join(result.notes)})" if result.notes else ""
            r = result.region
            self.message.emit("segment", f"Segmented {r.width}x{r.height} px in {result.seconds:.1f} s{notes}.")
            self.segmented.emit(result)
            self.refresh_stale(first=result.region)

        def finished(job):
            if job.cancelled and job is self._cancelled_segment:
                self.message.emit("segment", "Segmentation cancelled: nothing of it was written and the "
                                             "labels shown are as they were. The tiles already done "
                                             "are cached, so segmenting again is faster.")

        self.start_job("segment", make, description="Segmenting the view", section="segment", on_done=done,
                    on_progress=self._progress_estimate("segment", "Segmenting the view"),
                    on_finished=finished)

    def cancel_segment(self) -> None:
        """Stop the running segmentation between two batches of tiles; nothing of it is written."""
        job = self.jobs.get("segment")
        if job is not None and job.running:
            self._cancelled_segment = job
            job.cancel()

    def refresh_stale(self, *, first=None) -> None:
        """Segment again, in the background, the regions an earlier head segmented (nearest to
        ``first`` first); the status line says how many are left, and Stop keeps them marked."""
        session, previous = self.session, self.jobs.get("refresh")
        if session is None or session.head is None or self.running("train"):
            return
        if previous is not None and previous.running and not previous.cancelled:
            return  # one is under way
        shown = [-1]

        def progress(record) -> None:
            if record.stage != "refresh":
                return
            if record.done != shown[0]:  # a region was written: show it in the overview
                shown[0] = record.done
                self.layers.refresh_overview()
                self.layers.reload_window()
            if record.total and record.done < record.total:
                self.message.emit("segment", f"Updating what an earlier head segmented: {record.message}… "
                                             f"({record.total - record.done} left; Stop keeps them as they are)")

        def done(count):
            if session is not self.session:
                return
            if count:
                self.layers.refresh_overview()
                self.layers.reload_window()
                self.message.emit("segment", f"Segmented again with the current head: {count} region(s) an "
                                             "earlier head had segmented.")
            self.refreshed.emit(count)

        def finished(job):
            if job.cancelled and getattr(job, "stopped_by_user", False) and session is self.session:
                left = len(session.stale_regions())
                if left:
                    self.message.emit("segment", f"Stopped: {left} chunk(s) still show an earlier head's labels; "
                                                 "they are updated after the next segmentation, and before an export.")
            if job.cancelled:
                self.refreshed.emit(None)

        self.start_job("refresh", lambda: session.refresh_stale(first=first),
                    description="Updating older regions", section="segment", on_done=done,
                    on_progress=progress, on_finished=finished, on_error=lambda exc: self.refreshed.emit(None))

    def cancel_refresh(self) -> None:
        """Stop segmenting older regions again (those done keep the new labels); the status
        line says how many still show an earlier head's labels."""
        job = self.jobs.get("refresh")
        if job is not None and job.running:
            job.stopped_by_user = True
            job.cancel()

    def _stop_refresh(self) -> None:
        job = self.jobs.get("refresh")
        if job is not None:
            job.cancel()

    def _empty_window(self, region) -> None:
        from ..engine.session.annotation import MAX_SEGMENT_PIXELS

        try:
            window = self.session.to_store_region(region)
        except ValueError as exc:
            self.message.emit("segment", _describe_error(exc))
            return
        if window.height * window.width > MAX_SEGMENT_PIXELS:
            self.message.emit("segment", "The view is too large to paint in at once: zoom in.")
            return
        self.layers.show_window(window)
        self.message.emit(
            "segment",
            "No trained head yet: paint a few strokes of two classes or more in the labels "
            "(edit window) layer, then press \"Train on my edits\".",
        )

    def set_live(self, on: bool) -> None:
        """Re-segment the view after every pan and zoom (debounced)."""
        self.live = bool(on)
        self._set_camera_hooks(self.live)
        if self.live:
            self._live_timer.start()

    def _set_camera_hooks(self, on: bool) -> None:
        cam = camera(self.viewer)
        events = (cam.events.center, cam.events.zoom)
        for ev in events:
            try:
                ev.disconnect(self._camera_moved)
            except (TypeError, ValueError, RuntimeError):
                pass
            if on:
                ev.connect(self._camera_moved)

    def _camera_moved(self, event=None) -> None:
        if self.live:
            self._live_timer.start()

    def set_show_uncertainty(self, on: bool) -> None:
        self.show_uncertainty = bool(on)
        self.layers.set_uncertainty_visible(on)

    def where_to_label_next(self) -> None:
        """Move the view to the most uncertain tissue region not yet painted (found in a job)."""
        if not self.require_session("segment"):
            return
        if self.running("suggest"):
            self.message.emit("segment", "Still finding where to label next: press again once the box is shown.")
            return
        session = self.session
        size = 256
        view = visible_region(self.viewer, self.image_layer)
        if view is not None:  # about half the view: the next correction should fit in it
            try:
                r = session.to_store_region(view)
                size = max(64, min(512, min(r.height, r.width) // 2))
            except ValueError:
                pass

        def done(suggestion):
            if session is not self.session:
                return
            self.last_suggestion = suggestion
            show_region(self.viewer, self.image_layer, suggestion.region, session.slide.downsamples)
            self.layers.show_suggestion(session.to_store_region(suggestion.region))
            self.message.emit(
                "segment",
                f"The most uncertain unpainted tissue (uncertainty {suggestion.uncertainty:.2f}), in "
                "the yellow box: correct it with the brush, then train.",
            )
            self.suggested.emit(suggestion)

        self.start_job("suggest", lambda: _as_work(session.where_to_label_next, size=size),
                    description="Finding where to label next", section="segment", on_done=done,
                    on_error=lambda exc: self.suggested.emit(None))

    # --- training ------------------------------------------------------------------------------
    def train(self) -> None:
        """Train on every painted pixel of the slide (of every slide, with a project open), then
        re-segment the view."""
        if self.project_trainer is not None and self.project_trainer():
            return  # the slide shown is in the open project: trained on all its slides
        if not self.require_session("train") or self.running("train"):
            return
        if "segment" in self.jobs:
            self.jobs["segment"].cancel()
        self._stop_refresh()
        session, steps, include = self.session, self.train_steps, self.include_synthetic

        def make():
            synthetic = []
            if include:
                from ..engine.session.session_synthesis import synthetic_samples

                synthetic = synthetic_samples(session)
            return session.train_on_edits(steps=steps, synthetic=synthetic, auto=True)

        outcomes = []

        def done(outcome):
            outcomes.append(outcome)
            if session is self.session:
                self.extractor = session.extractor  # auto may have chosen other features
            self.head_changed.emit()
            self.classes_changed.emit()
            what = "New head trained" if outcome.new_head else "Head fine-tuned"
            extra = f" and {outcome.synthetic} generated tiles" if outcome.synthetic else ""
            if outcome.result.history:
                how = f"{outcome.result.steps} steps, last loss {outcome.result.history[-1]['loss']:.3f}"
            else:
                how = f"{outcome.result.head.head_kind} head"
            self.message.emit(
                "train",
                f"{what} on {sum(outcome.painted.values())} painted px{extra} in {outcome.seconds:.1f} s "
                f"({how}); saved to {outcome.head_folder}." + (f"\n{outcome.note}." if outcome.note else ""),
            )
            if session is self.session:
                if self.layers.window is not None:
                    self.segment_region(_window_region(session, self.layers.window))
                else:
                    self.segment_view()

        def finished(job):
            if job.cancelled:
                self.message.emit("train", "Training cancelled: the previous head is kept.")
            self.train_finished.emit(outcomes[0] if outcomes else None)

        self.last_train_job = self.start_job(
            "train", make, description="Training on your edits", section="train", on_done=done,
            on_progress=self.train_progress.emit, on_finished=finished,
        )

    def cancel_training(self) -> None:
        job = self.jobs.get("train")
        if job is not None:
            job.cancel()

    # --- export --------------------------------------------------------------------------------
    def export(self, path: str | Path) -> None:
        """Write the labels (merged view) to ``path`` (.ome.tif, .ome.zarr or .geojson) in a job;
        ``exported`` gives the path written, or None. Regions an earlier head segmented are
        segmented again first, so the file never mixes two heads."""
        if not self.require_session("export"):
            self.exported.emit(None)
            return
        self._stop_refresh()  # the export segments them itself
        session = self.session

        def make():
            from ..engine.session.annotation_export import export_work

            return export_work(session, path)  # regions of an earlier head are segmented again first

        def done(written):
            if session is self.session:  # regions the export segmented again show their new labels
                self.layers.refresh_overview()
                self.layers.reload_window()
            self.message.emit("export", f"Wrote {written}.")
            self.exported.emit(written)

        self.start_job("export", make, description="Exporting the labels", section="export",
                    on_done=done, on_error=lambda exc: self.exported.emit(None))

    # --- helpers -------------------------------------------------------------------------------
    def require_session(self, section: str) -> bool:
        """Whether a session is open; if not, ``section``'s status line says what to do."""
        if self.session is None:
            if self.running("open"):
                text = "Opening the slide's annotations…"
            elif self.image_layer is None:
                text = _NO_SLIDE
            else:
                text = "Nothing annotated on this slide yet: press \"Segment view\" to start."
            self.message.emit(section, text)
            return False
        return True

    def _edited(self, change) -> None:
        self.message.emit("train", f"Painted pixels saved ({change.painted} painted, {change.erased} erased).")


def _window_region(session, window):
    from ..core.region import Region

    return Region(session.level, window.y, window.x, window.height, window.width)


def _same_layer(a, b) -> bool:
    """Whether two layer references are the same layer (a plugin widget sees napari's layers
    through proxies, so ``is`` compares wrappers)."""
    if a is None or b is None:
        return a is b
    return a == b


def _as_work(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` as a progress generator with no progress (run by a Job in its
    thread)."""
    return fn(*args, **kwargs)
    yield  # unreachable: makes this function a generator


def _describe_error(exc: BaseException) -> str:
    """One line for the user: the message of errors about their input, else the type too."""
    if isinstance(exc, (ValueError, FileNotFoundError)):
        return f"Error: {exc}"
    return f"Error: {type(exc).__name__}: {exc}"
