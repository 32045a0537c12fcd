"""Strict loading of a model folder (diffusers ``config.json`` + safetensors weights).

The head and the style generator are both saved with ``save_pretrained``; both load through
:func:`load_strict`: the config must name the expected class, the weights must be a readable
safetensors file that matches the config exactly. Nothing is unpickled, and a missing or
corrupt file is an error that names it, never a silently random model.
"""

from __future__ import annotations

import json
from pathlib import Path

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"


def load_strict(folder: str | Path, cls, *, error: type[Exception], what: str):
    """An instance of ``cls`` built from ``folder/config.json`` with the folder's weights.

    Parameters
    ----------
    folder : path
        The model folder.
    cls : type
        A ``ModelMixin`` + ``ConfigMixin`` class; the config's ``_class_name`` must be its name.
    error : exception type
        Raised for every problem with the folder's files.
    what : str
        The model's name in messages, capitalised (``"Head"``, ``"Generator"``).

    Raises
    ------
    FileNotFoundError
        The folder does not exist.
    error
        The config or the weights are missing, unreadable, or do not match each other.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder).expanduser()
    config = read_config(folder, cls, error=error, what=what)
    cfg_path, weights = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not weights.is_file():
        raise error(f"{what} weights {weights} are missing: the {what.lower()} folder is incomplete.")
    try:
        model = cls.from_config(config)
    except (TypeError, ValueError, KeyError) as exc:
        raise error(f"{what} config {cfg_path} is invalid: {exc}") from exc
    try:
        state = load_file(weights)
    except (SafetensorError, OSError, ValueError) as exc:
        raise error(f"{what} weights {weights} are corrupt or not a safetensors file: {exc}") from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise error(f"{what} weights {weights} do not match {cfg_path}: {exc}") from exc
    return model.eval()


def read_config(folder: str | Path, cls, *, error: type[Exception], what: str) -> dict:
    """The ``config.json`` of a model folder, checked to name ``cls`` (see :func:`load_strict`)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder {folder} does not exist.")
    cfg_path = folder / CONFIG_FILE
    if not cfg_path.is_file():
        raise error(f"{folder} is not a {what.lower()} folder: {cfg_path} is missing.")
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{what} config {cfg_path} is not readable JSON: {exc}") from exc
    if not isinstance(config, dict) or config.get("_class_name") != cls.__name__:
        raise error(f"{cfg_path} is not the config of a {what.lower()} ({cls.__name__}).")
    return config
