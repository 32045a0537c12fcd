"""Where the annotation session of a slide is kept, and how its head is saved there.

A session folder holds everything a person made for one slide:

``labels.zarr``
    the :class:`~napari_pathsegdiff.core.label_store.LabelStore` (predictions and painted edits);
``uncertainty.zarr``
    per-pixel uncertainty of the predictions (``uint8``, 0 = not computed);
``head/``
    the current head, replaced atomically after every training;
``head-previous/``
    the head it replaced.

By default the folder is ``<slide file>.pathsegdiff`` beside the slide. When that folder cannot
be written (a read-only share), or the slide lies inside this package (the bundled sample), it
is ``<user cache>/napari-pathsegdiff/stores/<hash of the slide's identity>`` instead, where the
user cache is ``$XDG_CACHE_HOME`` or ``~/.cache``. A folder the user picks instead is
remembered in ``<user cache>/napari-pathsegdiff/stores/<hash>.folder`` (one line: its path), so
that it is found again when the slide is reopened.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

FOLDER_SUFFIX = ".pathsegdiff"
LABELS = "labels.zarr"
UNCERTAINTY = "uncertainty.zarr"
HEAD = "head"
PREVIOUS_HEAD = "head-previous"


def user_store_root() -> Path:
    """``<user cache>/napari-pathsegdiff/stores`` (``$XDG_CACHE_HOME`` or ``~/.cache``)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "napari-pathsegdiff" / "stores"


def identity_hash(identity: str) -> str:
    """16 hex digits naming a slide identity in the user cache."""
    return hashlib.sha256(identity.encode("utf-8")).hexdigest()[:16]


def existing_session_folder(slide_path: str | Path | None, identity: str, *,
                            root: str | Path | None = None) -> Path | None:
    """The session folder already made for a slide, or None (file checks only, nothing created).

    Parameters
    ----------
    slide_path : path or None
        The slide file (None for in-memory images).
    identity : str
        The slide's identity (``Slide.identity``).
    root : path, optional
        Folder of the per-user stores; default :func:`user_store_root`.
    """
    root = Path(root or user_store_root())
    candidates = []
    if slide_path is not None:
        path = Path(slide_path).resolve()
        candidates.append(path.with_name(path.name + FOLDER_SUFFIX))
    pointer = root / f"{identity_hash(identity)}.folder"
    if pointer.is_file():
        candidates.append(Path(pointer.read_text(encoding="utf-8").strip()))
    candidates.append(root / identity_hash(identity))
    return next((c for c in candidates if (c / LABELS).is_dir()), None)


def remember_folder(identity: str, folder: str | Path, *, root: str | Path | None = None) -> None:
    """Remember that the session of the slide ``identity`` lives in ``folder`` (picked by the user)."""
    root = Path(root or user_store_root())
    root.mkdir(parents=True, exist_ok=True)
    pointer = root / f"{identity_hash(identity)}.folder"
    tmp = pointer.with_name(pointer.name + ".partial")
    tmp.write_text(str(Path(folder).resolve()) + "\n", encoding="utf-8")
    tmp.replace(pointer)


def session_folder_for(slide, *, root: str | Path | None = None) -> Path:
    """The session folder of ``slide``: beside the slide file if possible, else in the user cache.

    An existing folder is preferred (beside the slide first), so a session is found again
    whichever rule made it.

    Parameters
    ----------
    slide : Slide
        The slide (``slide.path`` None for in-memory images, which always use the cache).
    root : path, optional
        Folder of the per-user stores; default :func:`user_store_root`.
    """
    existing = existing_session_folder(slide.path, slide.identity, root=root)
    if existing is not None:
        return existing
    cached = Path(root or user_store_root()) / identity_hash(slide.identity)
    if slide.path is None:
        return cached
    path = Path(slide.path).resolve()
    beside = path.with_name(path.name + FOLDER_SUFFIX)
    if _inside_package(path) or not os.access(path.parent, os.W_OK):
        return cached
    return beside


def save_session_head(folder: str | Path, head, *, extra: dict | None = None) -> Path:
    """Save ``head`` as the session's current head, keeping the one it replaces.

    The current head is first copied to ``head-previous/`` (through a temporary folder and a
    rename), then the new one is written by :func:`~napari_pathsegdiff.models.heads.save_head`,
    which swaps a complete folder in: an interruption at any point leaves a complete head.
    """
    from ..models.heads import save_head

    folder = Path(folder)
    current = folder / HEAD
    if current.is_dir():
        _replace_dir(folder / PREVIOUS_HEAD, lambda tmp: shutil.copytree(current, tmp))
    return save_head(head, current, extra=extra)


def retire_session_head(folder: str | Path) -> None:
    """Move the current head to ``head-previous/`` (a new, untrained head starts)."""
    folder = Path(folder)
    current = folder / HEAD
    if current.is_dir():
        _replace_dir(folder / PREVIOUS_HEAD, lambda tmp: current.rename(tmp))


def _replace_dir(target: Path, fill) -> None:
    """Make ``target`` the folder that ``fill(tmp)`` creates, replacing it only once complete."""
    tmp = target.with_name(f".{target.name}.partial")
    old = target.with_name(f".{target.name}.old")
    for leftover in (tmp, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    fill(tmp)
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _inside_package(path: Path) -> bool:
    package = Path(__file__).resolve().parents[1]
    try:
        path.relative_to(package)
    except ValueError:
        return False
    return True
