"""Run the engine's progress generators in napari thread workers.

Progress goes to the ``on_progress`` callback (the widget shows it in its sections), not to
napari's progress bar: while that bar is shown it keeps the window repainting, which takes the
CPU from the job on a machine that draws without a GPU (segmenting was about 4 times slower,
``scripts/bench_gui.py``).

The generator is *made* inside the worker thread (``make()`` runs there), so heavy imports and
model loading never block the GUI. Results, progress records and errors come back through
callbacks that run on the main thread. Errors are returned, not raised in the worker, so that
the widget shows its own clear message instead of a traceback dialog.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass
class Failed:
    """The exception that ended a job."""

    error: BaseException


class Job:
    """One piece of long work running in a ``thread_worker``.

    Parameters
    ----------
    make : callable
        Returns the engine generator (called in the worker thread).
    description : str
        What the job does, in words (for progress notes).
    on_progress, on_done, on_error, on_finished : callable, optional
        Main-thread callbacks: each :class:`~napari_pathsegdiff.core.progress.Progress`, the
        result, the exception, and the end of the job whatever happened (called last).

    Attributes
    ----------
    produced : int
        Progress records the generator has produced (counted in the worker thread).
    cancelled_at : int or None
        ``produced`` when :meth:`cancel` was called.
    cancelled : bool
        Whether the job was cancelled.
    """

    def __init__(
        self,
        make: Callable[[], Any],
        *,
        description: str,
        on_progress: Callable | None = None,
        on_done: Callable | None = None,
        on_error: Callable | None = None,
        on_finished: Callable | None = None,
    ):
        from napari.qt.threading import create_worker

        self.description = description
        self.produced = 0
        self.cancelled_at: int | None = None
        self.running = True
        self.detached = False
        self._on_progress, self._on_done = on_progress, on_done
        self._on_error, self._on_finished = on_error, on_finished
        self.worker = create_worker(self._run, make, _start_thread=False)
        self.worker.yielded.connect(self._yielded)
        self.worker.returned.connect(self._returned)
        self.worker.finished.connect(self._finished)
        self.worker.start()

    @property
    def cancelled(self) -> bool:
        return self.cancelled_at is not None

    @property
    def yields_after_cancel(self) -> int | None:
        """Progress records produced after :meth:`cancel` (at most one: the step under way)."""
        return None if self.cancelled_at is None else self.produced - self.cancelled_at

    def cancel(self) -> None:
        """Stop at the next progress record; the generator's work after it never runs."""
        if self.running and self.cancelled_at is None:
            self.cancelled_at = self.produced
            self.worker.quit()

    def detach(self) -> None:
        """Cancel, and call none of the callbacks any more (their owner is going away)."""
        self.cancel()
        self.detached = True

    # --- worker thread -----------------------------------------------------------------------
    def _run(self, make):
        gen = None
        try:
            gen = make()
            result = None
            while True:
                try:
                    record = next(gen)
                except StopIteration as stop:
                    result = stop.value
                    break
                self.produced += 1
                yield record
            return result
        except Exception as exc:  # noqa: BLE001 - shown to the user by on_error
            return Failed(exc)
        finally:
            if gen is not None:
                gen.close()

    # --- main thread -------------------------------------------------------------------------
    def _yielded(self, record) -> None:
        if self.detached:
            return
        if self._on_progress is not None and not self.cancelled:
            self._on_progress(record)

    def _returned(self, value) -> None:
        if self.cancelled or self.detached:
            return
        if isinstance(value, Failed):
            if self._on_error is not None:
                self._on_error(value.error)
        elif self._on_done is not None:
            self._on_done(value)

    def _finished(self) -> None:
        self.running = False
        if self._on_finished is not None and not self.detached:
            self._on_finished(self)
