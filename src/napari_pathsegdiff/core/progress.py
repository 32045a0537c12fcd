"""Progress records that long-running generators yield, and a driver for them.

Long work in this project is a generator: it yields :class:`Progress` records between small
steps and can be stopped by simply not asking for the next one (``gen.close()``). The command
line drives it with a tqdm bar (:func:`drive`); a napari widget wraps the same generator in
``thread_worker``. The generator's ``return`` value is the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generator, TypeVar

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


def drive(
    work: "Work[T]",
    *,
    show: bool = True,
    callback: Callable[[Progress], Any] | None = None,
) -> T:
    """Run a progress generator to the end and return its result.

    Shows one tqdm bar per stage when ``show`` is true; ``callback`` sees every record.
    """
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
