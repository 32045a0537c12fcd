"""Progress records that long-running generators yield, and a driver for them.

Long work in this project is a generator: it yields :class:`Progress` records between small
steps and can be stopped by simply not asking for the next one (``gen.close()``). The command
line drives it with a tqdm bar (:func:`drive`); a napari widget wraps the same generator in
``thread_worker``. The generator's ``return`` value is the result.

Bars are for terminals. When the output is a file or a pipe (a batch job's log), a bar's
carriage-return redraws would pile up into megabytes of one line, so :func:`drive` writes
:class:`PeriodicLines` instead: one plain line when a stage starts, at most one every
:data:`LINE_EVERY` seconds while it runs, and one when it ends.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Generator, TypeVar

T = TypeVar("T")


@dataclass
class Progress:
    """One step of long work.

    Parameters
    ----------
    stage : str
        What is being done ("features", "train", "predict", ...).
    done, total : int
        Steps finished and steps planned in this stage (``total`` 0 when unknown).
    message : str
        A short human-readable line.
    metrics : dict
        Numbers worth showing (loss, dice, ...).
    """

    stage: str
    done: int
    total: int = 0
    message: str = ""
    metrics: dict[str, float] = field(default_factory=dict)


Work = Generator[Progress, None, T]

LINE_EVERY = 30.0
"""Seconds between two progress lines written to a file or a pipe."""


def is_terminal(stream: IO | None = None) -> bool:
    """Whether ``stream`` (default ``sys.stderr``) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


class PeriodicLines:
    """Progress records as plain lines for logs: at a stage's start and end, and at most one
    every ``every`` seconds in between.

    Parameters
    ----------
    stream : file-like, optional
        Where lines go (default ``sys.stderr``).
    every : float
        Seconds between two lines of one stage.
    clock : callable
        Monotonic seconds (a parameter for tests).

    Examples
    --------
    >>> import io
    >>> out = io.StringIO()
    >>> lines = PeriodicLines(out, every=60)
    >>> for done in range(4):
    ...     lines.update(Progress("train", done, 3, metrics={"loss": 0.5}))
    >>> print(out.getvalue(), end="")
    train: 0/3 (0%) loss=0.5
    train: 3/3 (100%) loss=0.5
    """

    def __init__(self, stream: IO | None = None, *, every: float = LINE_EVERY,
                 clock: Callable[[], float] = time.monotonic):
        self.stream = stream
        self.every = float(every)
        self.clock = clock
        self._stage: str | None = None
        self._last = float("-inf")
        self._pending: Progress | None = None

    def update(self, rec: Progress) -> None:
        """Write ``rec`` as a line if a stage starts or ends, or ``every`` seconds passed."""
        now = self.clock()
        new_stage = rec.stage != self._stage
        if new_stage and self._pending is not None:
            self._write(self._pending)  # how far the previous stage got
        finished = rec.total > 0 and rec.done >= rec.total
        if new_stage or finished or now - self._last >= self.every:
            self._write(rec)
            self._last = now
            self._pending = None
        else:
            self._pending = rec
        self._stage = rec.stage

    def close(self) -> None:
        """Write the last record not yet written (a stage that stopped before its end)."""
        if self._pending is not None:
            self._write(self._pending)
            self._pending = None

    def _write(self, rec: Progress) -> None:
        parts = [f"{rec.stage}: {rec.done}/{rec.total}" if rec.total else f"{rec.stage}: {rec.done}"]
        if rec.total:
            parts.append(f"({100 * rec.done // rec.total}%)")
        if rec.message:
            parts.append(rec.message)
        parts += [f"{k}={v:.4g}" for k, v in rec.metrics.items()]
        stream = sys.stderr if self.stream is None else self.stream
        print(" ".join(parts), file=stream, flush=True)


def time_left(done: int, total: int, elapsed: float) -> float | None:
    """Seconds left at the pace so far: ``elapsed`` seconds for ``done`` of ``total`` steps.

    None when there is no pace yet (nothing done, or no total).

    Examples
    --------
    >>> round(time_left(37, 108, 21.0), 1)
    40.3
    >>> time_left(0, 108, 2.0) is None
    True
    """
    if done <= 0 or total <= 0 or elapsed <= 0:
        return None
    return elapsed * max(total - done, 0) / done


def describe_time_left(seconds: float | None) -> str:
    """``seconds`` left in words, rounded as a person reads them.

    Examples
    --------
    >>> [describe_time_left(s) for s in (None, 0.4, 7.2, 40.3, 95, 4000)]
    ['', 'almost done', 'about 7 s left', 'about 40 s left', 'about 2 min left', 'about 67 min left']
    """
    if seconds is None:
        return ""
    if seconds < 1:
        return "almost done"
    if seconds < 60:
        return f"about {round(seconds)} s left"
    return f"about {round(seconds / 60)} min left"


def drive(
    work: "Work[T]",
    *,
    show: bool = True,
    callback: Callable[[Progress], Any] | None = None,
) -> T:
    """Run a progress generator to the end and return its result.

    When ``show`` is true, shows one tqdm bar per stage on a terminal, and
    :class:`PeriodicLines` when ``sys.stderr`` is a file or a pipe; ``callback`` sees every
    record.
    """
    if show and not is_terminal():
        lines = PeriodicLines()
        callback = _both(callback, lines.update)
        try:
            return drive(work, show=False, callback=callback)
        finally:
            lines.close()
    bar = None
    stage = None
    try:
        while True:
            try:
                rec = next(work)
            except StopIteration as stop:
                return stop.value
            if callback is not None:
                callback(rec)
            if not show:
                continue
            if rec.stage != stage:
                if bar is not None:
                    bar.close()
                from tqdm.auto import tqdm

                bar = tqdm(total=rec.total or None, desc=rec.stage, leave=False)
                stage = rec.stage
            bar.total = rec.total or None
            bar.n = rec.done
            if rec.metrics:
                bar.set_postfix({k: f"{v:.4g}" for k, v in rec.metrics.items()}, refresh=False)
            bar.refresh()
    finally:
        if bar is not None:
            bar.close()
        work.close()


def _both(first: Callable[[Progress], Any] | None, second: Callable[[Progress], Any]):
    if first is None:
        return second

    def call(rec: Progress) -> None:
        first(rec)
        second(rec)

    return call
