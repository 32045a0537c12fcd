"""What every long training run shares: checkpoints, resume state, JSON records, loss logs, signals.

A run folder (``backbone train --out``, ``generator train --out``) holds ``run.json`` (what was
asked), ``loss.jsonl`` (one JSON line per logged step) and checkpoint folders, each with a
``state.json`` (step, budget, optimizer metadata) beside safetensors weights. Checkpoints are
replaced whole (:func:`~napari_pathsegdiff.core.atomic.replace_folder`), so a run killed at any
moment resumes from the last complete one: :func:`open_checkpoints` repairs what a kill between
the two renames left, and :func:`trim_log` drops the log lines written after it.

Optimizer state is stored as tensors in safetensors plus JSON metadata
(:func:`flatten_optimizer`, :func:`restore_optimizer`): nothing is pickled.
"""

from __future__ import annotations

import json
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from ...core.atomic import recover_folder, replace_folder, write_text_atomic

__all__ = [
    "flatten_optimizer",
    "restore_optimizer",
    "write_json",
    "read_state",
    "save_checkpoint",
    "open_checkpoints",
    "trim_log",
    "stop_on_signals",
    "check_resume",
]

STATE_FILE = "state.json"


def flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """The optimizer's state as ``(tensors, metadata)``: tensors named ``"<param id>.<key>"``
    for safetensors, and the parameter groups and scalar entries as JSON-able metadata."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, entry in sd["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Load what :func:`flatten_optimizer` produced back into ``optimizer``."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in list(tensors.items()) + list(meta["scalars"].items()):
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def write_json(path: str | Path, data: dict) -> Path:
    """Write ``data`` as indented JSON, atomically (values JSON cannot hold are written as text)."""
    return write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def check_resume(run_file: str | Path, identity: dict, *, resume: bool, what: str) -> None:
    """Refuse to write over a run, or to resume one made with other data or settings.

    Parameters
    ----------
    run_file : path
        The run's ``run.json``; nothing is checked when it does not exist yet (a new run).
    identity : dict
        What must be the same to resume (JSON-able); compared key by key with the file.
    resume : bool
        Whether continuing the run was asked (``--resume``).
    what : str
        The run's kind in messages (``"training run"``, ``"generator run"``).
    """
    run_file = Path(run_file)
    if not run_file.exists():
        return
    out = run_file.parent
    if not resume:
        raise ValueError(f"{out} already holds a {what}: pass --resume to continue it, or choose another --out.")
    old = json.loads(run_file.read_text(encoding="utf-8"))
    for key, value in identity.items():
        if json.dumps(old.get(key), sort_keys=True) != json.dumps(value, sort_keys=True):
            raise ValueError(
                f"{out}: cannot resume: {key} differs from the run in this folder "
                f"(was {json.dumps(old.get(key))[:100]}, now {json.dumps(value)[:100]}). Resume with "
                "the same data and settings, or choose another --out."
            )


def read_state(checkpoint: str | Path) -> dict:
    """The ``state.json`` of a checkpoint folder, or ``{}`` when there is no checkpoint yet."""
    path = Path(checkpoint) / STATE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def save_checkpoint(checkpoint: str | Path, write: Callable[[Path], None], state: dict) -> Path:
    """Replace the checkpoint folder by the one ``write(tmp)`` fills plus ``state.json``."""

    def fill(tmp: Path) -> None:
        write(tmp)
        write_json(tmp / STATE_FILE, state)

    return replace_folder(checkpoint, fill)


def open_checkpoints(checkpoints: list[Path]) -> list[str]:
    """Repair what killed checkpoint saves left beside ``checkpoints``; what was done, as lines."""
    return [said for said in (recover_folder(c) for c in checkpoints) if said]


def trim_log(log: str | Path, keep: Callable[[dict], bool]) -> None:
    """Keep only the lines of the JSON-lines ``log`` whose record ``keep`` accepts (and that
    parse): the lines of steps after the last checkpoint of a killed run go."""
    path = Path(log)
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and keep(record):
            kept.append(line)
    write_text_atomic(path, "".join(line + "\n" for line in kept))


@contextmanager
def stop_on_signals(program: str) -> Iterator[Callable[[], bool]]:
    """Within the block, Ctrl-C and SIGTERM ask the run to checkpoint and stop.

    Yields a function that says whether a stop was asked (the runs' ``should_stop``); the
    previous handlers are restored when the block ends.
    """
    asked = {"stop": False}

    def request_stop(signum, frame):
        asked["stop"] = True
        print(f"{program}: signal {signum}: checkpointing and stopping after this step", flush=True)

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: asked["stop"]
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
