"""Files and folders written whole or not at all, and recovered after a kill.

Everything here writes under a temporary name beside the destination (same folder, so the
same file system) and renames it into place; data and names are flushed to disk
(``fsync``) before the rename that publishes them, so a crash or power loss leaves either the
old content or the new one, never a mixture.

Names used beside a destination ``NAME`` (all hidden, all removable)::

    .NAME.tmp-XXXXXXXX    the new file or folder being written
    .NAME.old-XXXXXXXX    the folder being replaced, between the two renames
    .NAME.trash-XXXXXXXX  a folder being deleted

A folder is replaced with two renames (the old one out, the new one in), which no POSIX call
does in one step. :func:`recover_folder` repairs what a kill between them leaves: when
``NAME`` is missing, the folder renamed out is put back (the replacement had not been
committed); every other leftover is removed. Call it when opening the place that holds the
folder, while holding that place's lock (:mod:`~napari_pathsegdiff.core.locks`): a writer
that is running has leftovers too.

Files and folders made here get the permissions of the process umask, like files made with
``open``: a temporary folder is not left private (``tempfile`` makes them ``0700``), so a
folder shared with a group stays readable by the group.

Examples
--------
>>> import tempfile
>>> root = Path(tempfile.mkdtemp())
>>> write_text_atomic(root / "a.json", '{"ok": true}').read_text()
'{"ok": true}'
>>> folder = replace_folder(root / "head", lambda tmp: write_text_atomic(tmp / "x.txt", "1"))
>>> sorted(p.name for p in folder.iterdir())
['x.txt']
>>> recover_folder(root / "head") is None
True
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from pathlib import Path
from contextlib import contextmanager
from typing import Callable, Iterator

__all__ = [
    "write_bytes_atomic",
    "write_text_atomic",
    "replace_file",
    "replace_folder",
    "folder_replaced",
    "remove_folder",
    "recover_folder",
    "leftovers",
    "unfinished_files",
    "umask_permissions",
]

_TMP, _OLD, _TRASH = "tmp", "old", "trash"


# --- files -------------------------------------------------------------------------------------
def write_bytes_atomic(path: str | os.PathLike, data: bytes, *, durable: bool = True) -> Path:
    """Write ``data`` to ``path``: a temporary file beside it, flushed, then renamed over it.

    Parameters
    ----------
    path : str or path-like
        The destination; its folder must exist.
    data : bytes
        The whole content.
    durable : bool
        Flush to disk (``fsync``) before and after the rename. Without it the write is still
        whole or absent for every reader and after a killed process, but a power loss may
        leave an empty or partial file: only for data that its reader checks and can rebuild
        (a cache).

    Returns
    -------
    Path
        ``path``. A reader sees the old content or the new one, never part of it.
    """

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    return replace_file(path, write, durable=durable)


def write_text_atomic(path: str | os.PathLike, text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`write_bytes_atomic`).

    Parameters
    ----------
    path : str or path-like
        The destination; its folder must exist.
    text : str
        The whole content.
    encoding : str
        Text encoding (default UTF-8).

    Returns
    -------
    Path
        ``path``.
    """
    return write_bytes_atomic(path, text.encode(encoding))


def replace_file(path: str | os.PathLike, write: Callable[[Path], None], *, durable: bool = True) -> Path:
    """Make ``path`` the file that ``write(tmp)`` writes, replacing it only once complete.

    Use it for files that a library writes to a path (an OME-TIFF, an image). ``write``
    receives a path beside ``path`` (``.NAME.tmp-XXXXXXXX``, not yet existing, with the same
    suffixes as ``path``) and must create the file there. If ``write`` raises, the temporary
    file is removed and ``path`` is unchanged.

    Parameters
    ----------
    path : str or path-like
        The destination file; its folder must exist.
    write : callable
        Writes the complete file to the path it is given.
    durable : bool
        Flush to disk before and after the rename (see :func:`write_bytes_atomic`).

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    tmp = _temporary_name(path, _TMP, keep_suffix=True)
    try:
        write(tmp)
        if not tmp.is_file():
            raise FileNotFoundError(f"Writing {path}: the writer made no file at {tmp}.")
        umask_permissions(tmp)
        if durable:
            _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    if durable:
        _fsync_dir(path.parent)
    return path


# --- folders -----------------------------------------------------------------------------------
def replace_folder(dest: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Make ``dest`` the folder that ``write(tmp)`` fills, replacing it only once complete.

    ``write`` receives an empty folder beside ``dest`` (``.NAME.tmp-XXXXXXXX``); when it
    returns, the folder's files are flushed to disk, the old ``dest`` (if any) is renamed to
    ``.NAME.old-XXXXXXXX``, the new folder renamed to ``dest``, and the old one deleted. If
    ``write`` raises, the temporary folder is removed and ``dest`` is unchanged. A kill
    between the two renames leaves no ``dest``; :func:`recover_folder` puts the old one back.

    Parameters
    ----------
    dest : str or path-like
        The folder to create or replace; its parent is created if needed.
    write : callable
        Fills the (existing, empty) folder it is given. It may also replace that folder by
        renaming a complete folder onto it.

    Returns
    -------
    Path
        ``dest``.

    Raises
    ------
    NotADirectoryError
        ``dest`` exists and is a file.
    """
    with folder_replaced(dest) as tmp:
        write(tmp)
    return Path(dest)


@contextmanager
def folder_replaced(dest: str | os.PathLike) -> Iterator[Path]:
    """The context-manager form of :func:`replace_folder`, for writers that are generators.

    The block fills the empty folder it is given; ``dest`` is replaced when the block ends
    normally, and left unchanged (the folder removed) when it raises or the generator driving
    it is closed.

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> with folder_replaced(root / "out") as tmp:
    ...     _ = (tmp / "a.txt").write_text("1")
    >>> [p.name for p in (root / "out").iterdir()]
    ['a.txt']
    """
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise NotADirectoryError(f"{dest} is a file, not a folder: give a folder to replace.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(dest, _TMP)
    tmp.mkdir()
    try:
        yield tmp
        umask_permissions(tmp)
        _fsync_tree(tmp)
    except BaseException:
        _remove(tmp)
        raise
    old = None
    if dest.exists():
        old = _temporary_name(dest, _OLD)
        os.rename(dest, old)
    os.rename(tmp, dest)  # the commit point
    _fsync_dir(dest.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_folder(dest: str | os.PathLike) -> None:
    """Delete the folder ``dest`` so that a kill never leaves it half deleted.

    It is renamed to ``.NAME.trash-XXXXXXXX`` first (one step), then deleted; a leftover
    trash folder is removed by :func:`recover_folder`. Nothing happens when ``dest`` is absent.
    """
    dest = Path(dest)
    if not dest.exists():
        return
    trash = _temporary_name(dest, _TRASH)
    os.rename(dest, trash)
    _fsync_dir(dest.parent)
    shutil.rmtree(trash, ignore_errors=True)


def recover_folder(dest: str | os.PathLike) -> str | None:
    """Repair what an interrupted :func:`replace_folder` (or file write) left beside ``dest``.

    - ``dest`` missing and a folder renamed out (``.NAME.old-*``) present: the replacement was
      not committed, so the old folder is put back (the newest, when there are several);
    - every other leftover (``.NAME.tmp-*``, ``.NAME.trash-*``, other ``.NAME.old-*``, and the
      names older versions used: ``.NAME.<random>``, ``.NAME.partial``, ``.NAME.old``) is deleted.

    Call it only while no other process writes ``dest`` (hold the lock of its folder).

    Parameters
    ----------
    dest : str or path-like
        The file or folder whose leftovers to repair.

    Returns
    -------
    str or None
        What was done, in one line for the user; None when there was nothing to do.
    """
    dest = Path(dest)
    found = leftovers(dest)
    if not found:
        return None
    said = []
    olds = sorted((p for kind, p in found if kind == _OLD), key=_changed_time)
    if not dest.exists() and olds:
        restored = olds.pop()
        os.rename(restored, dest)
        _fsync_dir(dest.parent)
        said.append(f"restored {dest.name} from an interrupted replacement ({restored.name})")
    removed = [p for kind, p in found if kind != _OLD] + olds
    for path in removed:
        _remove(path)
    if removed:
        said.append(f"removed {len(removed)} leftover{'s' if len(removed) != 1 else ''} of "
                    f"interrupted writes ({', '.join(sorted(p.name for p in removed))})")
    return f"{dest.parent}: " + "; ".join(said)


def leftovers(dest: str | os.PathLike) -> list[tuple[str, Path]]:
    """``(kind, path)`` of the temporary names beside ``dest``; kind is ``"tmp"``, ``"old"``
    or ``"trash"`` (older spellings included: see :func:`recover_folder`)."""
    dest = Path(dest)
    if not dest.parent.is_dir():
        return []
    pattern = re.compile(
        r"^\." + re.escape(dest.name) + r"\.(?:(?P<kind>tmp|old|trash)(?:-\w+)?(?:\..*)?|\w+)$"
    )
    found = []
    for entry in dest.parent.iterdir():
        match = pattern.match(entry.name)
        if match:
            found.append((match.group("kind") or _TMP, entry))
    return sorted(found, key=lambda kp: kp[1].name)


def unfinished_files(folder: str | os.PathLike) -> list[Path]:
    """The temporary files of atomic writes into ``folder`` that were never renamed into place
    (``.NAME.tmp-XXXXXXXX``): what a writer killed mid-write leaves, whatever NAME was."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = re.compile(r"^\..+\." + _TMP + r"-[0-9a-f]{8}(?:\..*)?$")
    return sorted(p for p in folder.iterdir() if p.is_file() and pattern.match(p.name))


def umask_permissions(path: str | os.PathLike) -> None:
    """Give ``path`` the permissions ``open``/``mkdir`` give a new file or folder under the
    process umask (``tempfile`` makes private ones: ``0600`` files, ``0700`` folders)."""
    path = Path(path)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_umask())


# --- helpers -----------------------------------------------------------------------------------
def _temporary_name(dest: Path, kind: str, *, keep_suffix: bool = False) -> Path:
    """A fresh ``.NAME.KIND-XXXXXXXX`` beside ``dest`` (plus ``dest``'s suffixes if asked,
    for writers that choose the format by extension)."""
    suffix = "".join(dest.suffixes) if keep_suffix else ""
    while True:
        candidate = dest.with_name(f".{dest.name}.{kind}-{secrets.token_hex(4)}{suffix}")
        if not candidate.exists():
            return candidate


def _umask() -> int:
    """The process umask, read without changing it where Linux tells it."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Flush a folder's entries (renames, new names); a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for root, dirs, files in os.walk(folder):
        for name in files:
            _fsync_file(Path(root) / name)
        _fsync_dir(Path(root))


def _changed_time(path: Path) -> float:
    try:
        return path.lstat().st_ctime
    except OSError:
        return 0.0


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
