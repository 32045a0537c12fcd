"""The models that may ship inside the package: the default backbone and the demo head.

Only file checks here (no torch import): the GUI asks cheaply whether they are installed.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

DEFAULT_BACKBONE = "backbone-default"
DEMO_HEAD = "head-demo"


def weights_folder() -> Path:
    """The package's ``weights`` folder (it may not exist)."""
    return Path(str(files("napari_pathsegdiff") / "weights"))


def default_backbone_installed() -> bool:
    """Whether the default backbone ships with this copy of the package."""
    return (weights_folder() / DEFAULT_BACKBONE).is_dir()


def demo_head_folder() -> Path | None:
    """The shipped demo head (background / stroma / nuclei-rich tissue), or None when absent."""
    folder = weights_folder() / DEMO_HEAD
    if (folder / "config.json").is_file() and (folder / "diffusion_pytorch_model.safetensors").is_file():
        return folder
    return None
