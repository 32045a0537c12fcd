"""Where the annotation session of a slide is kept, and how its head is saved there.

A session folder holds everything a person made for one slide:

``labels.zarr``
    the :class:`~napari_pathsegdiff.core.label_store.LabelStore` (predictions and painted edits);
``uncertainty.zarr``
    per-pixel uncertainty of the predictions (``uint8``, 0 = not computed);
``head/``
    the current head, replaced atomically after every training;
``head-previous/``
    the head it replaced (Revert to previous head swaps the two);
``view.json``
    where the viewer looked last (centre in level-0 pixels and screen pixels per level-0
    pixel), to show the same place when the session is reopened.
``features/``
    tile features of this slide kept between sessions, within a byte budget
    (:class:`~napari_pathsegdiff.core.disk_feature_cache.DiskFeatureCache`): a reopened slide
    segments without computing them again. Deleting the folder only costs time.

Heads are replaced as whole folders (:mod:`~napari_pathsegdiff.core.atomic`); a save killed
between its two renames is repaired by :func:`recover_session_folder` when the session is
opened again: the head it was replacing is put back, and leftovers of killed saves are deleted.
Swapping the two heads goes through a third folder, ``head-swap/`` (a complete copy of the
head being replaced); a swap killed half-way is finished, or undone, the same way.

One process at a time has a session folder open: it holds the lock ``.session.lock`` in the
folder (:func:`lock_session_folder`), and a second process opening the same folder is refused
with a message naming the first (process, host, since when). Refusing, rather than opening a
read-only view, keeps the rule simple for both people: every edit a session accepts is kept,
and no one paints strokes that are then thrown away. The lock ends with the process, so a
crashed napari never blocks the folder.

By default the folder is ``<slide file>.pathsegdiff`` beside the slide. When that folder cannot
be written (a read-only share), or the slide lies inside this package (the bundled sample), it
is ``<user cache>/napari-pathsegdiff/stores/<hash of the slide's identity>`` instead, where the
user cache is ``$XDG_CACHE_HOME`` or ``~/.cache``. A folder the user picks instead is
remembered in ``<user cache>/napari-pathsegdiff/stores/<hash>.folder`` (one line: its path), so
that it is found again when the slide is reopened.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path

from ...core.atomic import (
    recover_folder,
    remove_folder,
    replace_folder,
    umask_permissions,
    write_text_atomic,
)
from ...core.locks import FolderInUse, FolderLock

FOLDER_SUFFIX = ".pathsegdiff"
LABELS = "labels.zarr"
UNCERTAINTY = "uncertainty.zarr"
HEAD = "head"
PREVIOUS_HEAD = "head-previous"
SWAP_HEAD = "head-swap"
VIEW = "view.json"
FEATURES = "features"
SESSION_LOCK = ".session.lock"


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
    write_text_atomic(root / f"{identity_hash(identity)}.folder", str(Path(folder).resolve()) + "\n")


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

    The current head is first copied to ``head-previous/`` (a complete copy swapped in), then
    the new one is written by :func:`~napari_pathsegdiff.models.heads.save_head`, which swaps a
    complete folder in: an interruption at any point leaves a complete head, or leftovers that
    :func:`recover_session_folder` turns back into one.
    """
    from ...models.heads import save_head

    folder = Path(folder)
    current = folder / HEAD
    if current.is_dir():
        replace_folder(folder / PREVIOUS_HEAD, lambda tmp: _copy_into(current, tmp))
    saved = save_head(head, current, extra=extra)
    umask_permissions(saved)  # not tempfile's 0700: cluster workers of the group read it
    return saved


def session_head_identity(folder: str | Path) -> str | None:
    """A hash of the files of the session's current head (None when there is none).

    The label store records it beside every prediction, so a retrained head, a head opened
    from elsewhere or a head put back by hand is told apart from the one before.
    """
    current = Path(folder) / HEAD
    if not current.is_dir():
        return None
    digest = hashlib.sha256()
    for path in sorted(p for p in current.iterdir() if p.is_file()):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def retire_session_head(folder: str | Path) -> None:
    """Move the current head to ``head-previous/`` (a new, untrained head starts).

    The head is copied to ``head-previous/`` before it is removed, so a kill in between
    leaves it in both places, never in neither.
    """
    folder = Path(folder)
    current = folder / HEAD
    if current.is_dir():
        replace_folder(folder / PREVIOUS_HEAD, lambda tmp: _copy_into(current, tmp))
        remove_folder(current)


def swap_session_heads(folder: str | Path) -> None:
    """Make ``head-previous/`` the current head, and the current one ``head-previous/``.

    Swapping again brings the first back. Without a current head (after a new, untrained one
    started), the previous head simply becomes the current one. Every step replaces one whole
    folder; a kill at any point leaves both heads complete on disk, and
    :func:`recover_session_folder` finishes or undoes the swap.

    Raises
    ------
    FileNotFoundError
        There is no ``head-previous/`` (nothing was trained over, or retired, yet).
    """
    folder = Path(folder)
    current, previous, swap = folder / HEAD, folder / PREVIOUS_HEAD, folder / SWAP_HEAD
    if not previous.is_dir():
        raise FileNotFoundError(
            f"There is no previous head in {folder}: one is kept there when a training or "
            "New replaces the current head."
        )
    if not current.is_dir():
        replace_folder(current, lambda tmp: _copy_into(previous, tmp))
        remove_folder(previous)
        return
    replace_folder(swap, lambda tmp: _copy_into(current, tmp))  # 1. the head being replaced, kept
    replace_folder(current, lambda tmp: _copy_into(previous, tmp))  # 2. the previous is current
    replace_folder(previous, lambda tmp: _copy_into(swap, tmp))  # 3. the replaced is previous
    remove_folder(swap)  # 4. done


def save_view(folder: str | Path, center: tuple[float, float], zoom: float) -> Path:
    """Keep where the viewer looks (atomically, in ``view.json``).

    Parameters
    ----------
    folder : path
        The session folder (it exists: the session holds its lock).
    center : (float, float)
        Centre of the view in level-0 pixels, (y, x).
    zoom : float
        Screen pixels per level-0 pixel.
    """
    values = [float(v) for v in center] + [float(zoom)]
    if len(values) != 3 or not all(math.isfinite(v) for v in values) or values[2] <= 0:
        raise ValueError(f"A view is a centre (y, x) and a positive zoom, got {center!r}, {zoom!r}.")
    text = json.dumps({"center_level0_yx": values[:2], "screen_px_per_level0_px": values[2]})
    return write_text_atomic(Path(folder) / VIEW, text + "\n")


def load_view(folder: str | Path) -> tuple[tuple[float, float], float] | None:
    """The view kept by :func:`save_view` as ``(center, zoom)``, or None when there is none or
    the file is not one (a view is a convenience: an unreadable one is ignored)."""
    try:
        data = json.loads((Path(folder) / VIEW).read_text(encoding="utf-8"))
        y, x = (float(v) for v in data["center_level0_yx"])
        zoom = float(data["screen_px_per_level0_px"])
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if not all(math.isfinite(v) for v in (y, x, zoom)) or zoom <= 0:
        return None
    return (y, x), zoom


def lock_session_folder(folder: str | Path) -> FolderLock:
    """Lock the session folder ``folder`` for this process (created if missing).

    Sessions of one process share the lock (the widget may reopen a slide before the previous
    session object is gone); release it with ``lock.release()``.

    Raises
    ------
    FolderInUse
        Another process has the folder open; the message names it and says what to do.
    PermissionError
        The folder cannot be written (a read-only share): no session can keep edits there.
    """
    lock = FolderLock(folder, SESSION_LOCK, purpose="an annotation session", shared_in_process=True)
    try:
        return lock.acquire()
    except PermissionError as exc:
        raise PermissionError(
            f"The session folder {Path(folder)} cannot be written ({exc.strerror}): edits could "
            "not be kept there. Pick a session folder you can write."
        ) from exc
    except FolderInUse as exc:
        raise FolderInUse(
            f"The session folder {Path(folder)} is open in "
            f"{exc.holder.describe() if exc.holder else 'another process'}: "
            "two sessions writing the same edits would lose strokes of each other. Close the "
            "slide there first, or pick another session folder for this one.",
            exc.holder,
        ) from None


def recover_session_folder(folder: str | Path) -> list[str]:
    """Repair the heads of a session folder after a killed save (see :func:`recover_folder`).

    Call it when the session is opened, while holding the session's lock.

    Returns
    -------
    list of str
        One line per repair, for the user; empty when there was nothing to repair.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    said = [recover_folder(folder / name) for name in (HEAD, PREVIOUS_HEAD, SWAP_HEAD)]
    if (folder / SWAP_HEAD).is_dir():
        said.append(_finish_swap(folder))
    return [line for line in said if line]


def _finish_swap(folder: Path) -> str:
    """Finish (or undo) a :func:`swap_session_heads` killed after its first step."""
    current, previous, swap = folder / HEAD, folder / PREVIOUS_HEAD, folder / SWAP_HEAD
    if current.is_dir() and _same_files(current, swap):  # step 2 had not happened: undo
        remove_folder(swap)
        return f"{folder}: an interrupted swap of the heads had not begun; nothing changed"
    replace_folder(previous, lambda tmp: _copy_into(swap, tmp))
    remove_folder(swap)
    return f"{folder}: finished an interrupted swap of the heads (the previous head is now current)"


def _same_files(a: Path, b: Path) -> bool:
    """Whether folders ``a`` and ``b`` hold the same files with the same bytes."""
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    return files_a == files_b and all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)


def _copy_into(source: Path, target: Path) -> None:
    shutil.copytree(source, target, dirs_exist_ok=True)


def _inside_package(path: Path) -> bool:
    package = Path(__file__).resolve().parents[2]
    try:
        path.relative_to(package)
    except ValueError:
        return False
    return True
