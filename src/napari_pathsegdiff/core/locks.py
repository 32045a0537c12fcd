"""Advisory locks on folders that one process at a time may write (an output folder, a session).

A :class:`FolderLock` holds ``fcntl.flock`` on a small file inside the folder and writes who
holds it there (process id, host, start time, command). A second process that asks for the lock
gets :class:`FolderInUse`, whose message names the holder. The operating system releases the
lock when the holder ends, however it ends (a crash, ``kill -9``, a power loss), so a lock is
never stale: the record a dead holder left behind is simply overwritten by the next one, and
:attr:`FolderLock.taken_over` says whose it was. Linux NFS clients forward ``flock`` to the
server's lock manager, so the lock also holds between machines sharing a folder.

Where the file system cannot lock (``flock`` fails with an error other than "held"), the record
alone decides: a record naming a live process, or a process on another host, refuses; a record
of a process of this host that no longer runs is taken over.

Never delete a lock file by hand while its folder is in use: a process that opens a new file
of the same name would hold a lock of its own.

Examples
--------
>>> import tempfile
>>> folder = tempfile.mkdtemp()
>>> with FolderLock(folder, ".demo.lock", purpose="a demo"):
...     try:
...         FolderLock(folder, ".demo.lock", purpose="a second demo").acquire()
...     except FolderInUse as exc:
...         print("refused:", exc.holder.command)
refused: a demo
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import threading
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None

__all__ = ["FolderInUse", "FolderLock", "Holder", "pid_running"]


class FolderInUse(ValueError):
    """Another process holds the lock of a folder; the message names it and what to do."""

    def __init__(self, message: str, holder: "Holder | None"):
        super().__init__(message)
        self.holder = holder


@dataclass(frozen=True)
class Holder:
    """Who holds a lock: process id, host name, start time (UTC, ISO 8601) and command."""

    pid: int
    host: str
    started: str
    command: str = ""

    @classmethod
    def this_process(cls, purpose: str) -> "Holder":
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        return cls(os.getpid(), socket.gethostname(), started, purpose)

    def describe(self) -> str:
        """``"process 123 on host lab-7, since 2026-01-05T10:00:00+00:00 (segment-slide)"``."""
        what = f" ({self.command})" if self.command else ""
        return f"process {self.pid} on host {self.host}, since {self.started}{what}"

    def gone(self) -> bool:
        """Whether this is a process of this host that no longer runs."""
        return self.host == socket.gethostname() and not pid_running(self.pid)


def pid_running(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (signal 0; a zombie counts as ended)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, as another user
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


# Locks held by this process, by lock file: locks shared in a process are counted here.
_held: dict[str, list] = {}
_held_guard = threading.Lock()


class FolderLock:
    """An advisory lock on ``folder``, held through the file ``folder / name``.

    Parameters
    ----------
    folder : path
        The folder to lock (created if missing).
    name : str
        The lock file's name inside it.
    purpose : str
        What the holder does, shown to a process that is refused (e.g. ``"segment-slide"``).
    shared_in_process : bool
        When true, locks of the same file in this process share one lock (counted; the last
        release frees it): for objects that one program may open twice. When false, a second
        lock in this process is refused like one in another process.

    Attributes
    ----------
    holder : Holder
        This process's record (written into the lock file while held).
    taken_over : Holder or None
        The record a holder that ended without releasing left behind, when there was one.
    """

    def __init__(self, folder, name: str, *, purpose: str, shared_in_process: bool = False):
        self.folder = Path(folder)
        self.path = self.folder / name
        self.purpose = purpose
        self.shared_in_process = shared_in_process
        self.holder = Holder.this_process(purpose)
        self.taken_over: Holder | None = None
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "FolderLock":
        """Take the lock now, without waiting.

        Raises
        ------
        FolderInUse
            Another process (or, unless shared, another lock of this process) holds it.
        """
        if self.held:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        key = str(self.path.resolve())
        with _held_guard:
            if self.shared_in_process and key in _held:
                _held[key][1] += 1
                self._fd = _held[key][0]
                return self
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                previous = _read_record(fd)
                self._lock(fd, previous)
                if previous is not None and previous.pid != os.getpid():
                    self.taken_over = previous
                _write_record(fd, self.holder)
            except BaseException:
                os.close(fd)
                raise
            if self.shared_in_process:
                _held[key] = [fd, 1]
            self._fd = fd
        return self

    def release(self) -> None:
        """Free the lock (the record is cleared; the file stays, for the next holder)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        key = str(self.path.resolve())
        with _held_guard:
            if self.shared_in_process:
                _held[key][1] -= 1
                if _held[key][1] > 0:
                    return
                del _held[key]
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                except OSError:
                    pass
            os.close(fd)

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):  # a lock object dropped without release() frees its lock
        try:
            self.release()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # --- helpers ---------------------------------------------------------------------------
    def _lock(self, fd: int, previous: Holder | None) -> None:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError as exc:
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise self._in_use(_read_record(fd) or previous) from None
                # the file system cannot lock: the record decides (see the module docstring)
        if previous is not None and not previous.gone() and previous.pid != os.getpid():
            raise self._in_use(previous)

    def _in_use(self, holder: Holder | None) -> FolderInUse:
        who = holder.describe() if holder else "another process (it has not written its name yet)"
        return FolderInUse(f"{self.folder} is in use by {who}. Wait until it ends, or use "
                           "another folder.", holder)


def _read_record(fd: int) -> Holder | None:
    try:
        raw = os.pread(fd, 4096, 0)
        data = json.loads(raw.decode("utf-8")) if raw.strip() else None
        return Holder(int(data["pid"]), str(data["host"]), str(data["started"]),
                      str(data.get("command", ""))) if data else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_record(fd: int, holder: Holder) -> None:
    data = (json.dumps(asdict(holder) | {"argv": sys.argv[:8]}) + "\n").encode("utf-8")
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)
