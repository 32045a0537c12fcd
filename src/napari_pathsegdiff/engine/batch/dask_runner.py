"""Run a graph of block tasks: dask threads on this machine, or a dask.distributed cluster.

- default: dask's local scheduler on a pool of ``threads`` threads (default one per core) in
  this process, with dask's :class:`~dask.diagnostics.ProgressBar`;
- ``scheduler="tcp://host:8786"``: an existing cluster (dask.distributed, dask-jobqueue on SLURM,
  dask-kubernetes, ...) through a :class:`distributed.Client`; slides, head and output folder
  must be on storage the workers see under the same paths;
- ``workers=N``: a :class:`distributed.LocalCluster` of ``N`` worker processes with one thread
  each, started here and stopped at the end.

Each block sets its own torch thread count (:func:`~.block_worker.fix_torch_threads`), so the
layout changes the speed, never the result; a threads run gives this process's torch thread
count back when it ends.

With a cluster the progress is distributed's text bar, and the dashboard link is printed when
the scheduler serves one. When the output is not a terminal (a batch job's log), progress is
a plain line now and then instead of a bar (:class:`~napari_pathsegdiff.core.progress.PeriodicLines`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import dask
from dask.callbacks import Callback

from ...core.progress import PeriodicLines, Progress, is_terminal


class BlockRunner:
    """Context manager that computes lists of dask tasks (see the module docstring).

    Parameters
    ----------
    scheduler : str, optional
        Address of a running dask scheduler.
    workers : int, optional
        Start a local cluster of this many worker processes.
    threads : int, optional
        Blocks computed at once by a threads run (default: one per core); not used with a
        cluster, whose workers compute one block at a time each.
    show_progress : bool
        Show a progress bar for each computation.
    say : callable, optional
        Receives one-line messages (the dashboard link); default: none.
    """

    def __init__(
        self,
        *,
        scheduler: str | None = None,
        workers: int | None = None,
        threads: int | None = None,
        show_progress: bool = False,
        say: Callable[[str], Any] | None = None,
    ):
        if scheduler is not None and workers is not None:
            raise ValueError("Give either a scheduler address or a number of workers, not both.")
        if workers is not None and workers < 1:
            raise ValueError(f"The number of workers must be at least 1, got {workers}.")
        self.scheduler, self.workers = scheduler, workers
        self.show_progress = show_progress
        self._say = say or (lambda _line: None)
        if threads is not None and threads < 1:
            raise ValueError(f"--threads must be 1 or more, got {threads}.")
        self.threads = threads or os.cpu_count() or 1
        self.client = None
        self._cluster = None

    # --- lifetime ----------------------------------------------------------------------------
    def __enter__(self) -> "BlockRunner":
        if self.scheduler is None and self.workers is None:
            return self
        from distributed import Client, LocalCluster

        if self.workers is not None:
            self._cluster = LocalCluster(
                n_workers=self.workers,
                threads_per_worker=1,
                processes=True,
                silence_logs=logging.ERROR,
            )
            self.client = Client(self._cluster, set_as_default=False)
        else:
            try:
                self.client = Client(self.scheduler, timeout="20s", set_as_default=False)
            except (OSError, TimeoutError) as exc:
                raise ValueError(
                    f"Cannot reach the dask scheduler at {self.scheduler} ({exc}). Check the "
                    "address (e.g. tcp://host:8786) and that the scheduler is running."
                ) from exc
        link = self.dashboard_link
        self._say(f"dask cluster: {self.description}" + (f", dashboard {link}" if link else ""))
        return self

    def __exit__(self, *exc) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    # --- facts -------------------------------------------------------------------------------
    @property
    def description(self) -> str:
        if self.client is None:
            return f"dask threads on this machine ({self.threads})"
        n = len(self.client.scheduler_info().get("workers", {}))
        where = "local cluster" if self._cluster is not None else f"cluster at {self.scheduler}"
        return f"{where} with {n} worker{'s' if n != 1 else ''}"

    @property
    def dashboard_link(self) -> str | None:
        """The dashboard's URL when the scheduler serves one (it needs bokeh), else None."""
        if self.client is None:
            return None
        services = self.client.scheduler_info().get("services", {})
        return self.client.dashboard_link if "dashboard" in services else None

    # --- work --------------------------------------------------------------------------------
    def run(self, tasks: list) -> list:
        """Compute ``tasks`` (dask delayed objects) and return their results in order.

        The first task that raises stops the computation (tasks not started are cancelled)
        and its exception is raised here.
        """
        if not tasks:
            return []
        if self.client is None:
            # A pool of our own: leaving it waits for the tasks still running, so nothing of
            # this computation writes after run() returns or raises.
            with _keep_torch_threads(), ThreadPoolExecutor(self.threads) as pool, \
                    _progress_bar(self.show_progress):
                return list(dask.compute(*tasks, scheduler=pool))
        futures = self.client.compute(tasks)
        try:
            if self.show_progress and is_terminal(sys.stdout):
                from distributed import progress

                with self.client.as_current():
                    progress(futures)
            elif self.show_progress:
                _log_as_completed(futures)
            return self.client.gather(futures)
        finally:
            self.client.cancel(futures)


@contextlib.contextmanager
def _keep_torch_threads():
    """Give this thread's torch thread count back after blocks ran in this process."""
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    try:
        yield
    finally:
        torch = sys.modules.get("torch")
        if torch is not None and before is not None and torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _progress_bar(show: bool):
    """dask's bar on a terminal, periodic lines otherwise, nothing when not ``show``."""
    if not show:
        return contextlib.nullcontext()
    if not is_terminal(sys.stdout):
        return _TaskLines()
    from dask.diagnostics import ProgressBar

    return ProgressBar()


class _TaskLines(Callback):
    """dask callback: tasks done as :class:`PeriodicLines` (for logs, not terminals)."""

    def __init__(self):
        super().__init__()
        self._lines = PeriodicLines(sys.stdout)
        self._done = self._total = 0

    def _start_state(self, dsk, state):
        self._done, self._total = 0, len(state["ready"]) + len(state["waiting"])
        self._lines.update(Progress("blocks", 0, self._total))

    def _posttask(self, key, result, dsk, state, worker_id):
        self._done += 1
        self._lines.update(Progress("blocks", self._done, self._total))

    def _finish(self, dsk, state, errored):
        self._lines.close()


def _log_as_completed(futures) -> None:
    from distributed import as_completed

    lines = PeriodicLines(sys.stdout)
    lines.update(Progress("blocks", 0, len(futures)))
    for done, _ in enumerate(as_completed(futures), start=1):
        lines.update(Progress("blocks", done, len(futures)))
    lines.close()
