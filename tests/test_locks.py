"""Locks on folders that one process at a time writes: the lock itself (core/locks.py), a
session folder opened by two processes, and a killed head save repaired on open."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from napari_pathsegdiff.core import locks
from napari_pathsegdiff.core.locks import FolderInUse, FolderLock, Holder, pid_running

# A child that takes a lock (as the code under test does), says so, and waits to be killed.
_HOLDER = """
import sys, time
from napari_pathsegdiff.core.locks import FolderLock
lock = FolderLock(sys.argv[1], sys.argv[2], purpose="the test's first writer").acquire()
print("locked", flush=True)
time.sleep(600)
"""


def _start(code: str, *args) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if line.strip() not in ("locked", "opened"):
        proc.kill()
        raise AssertionError(f"the child did not start: {line!r} {proc.stderr.read()}")
    return proc


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_a_second_process_is_refused_with_the_holders_name(tmp_path):
    child = _start(_HOLDER, tmp_path, ".x.lock")
    try:
        with pytest.raises(FolderInUse) as caught:
            FolderLock(tmp_path, ".x.lock", purpose="a second writer").acquire()
        message = str(caught.value)
        assert f"process {child.pid} on host {socket.gethostname()}, since 20" in message
        assert "the test's first writer" in message and str(tmp_path) in message
        assert caught.value.holder.pid == child.pid
    finally:
        _kill(child)
    # the OS released the lock of the killed holder: taken over, naming whose it was
    lock = FolderLock(tmp_path, ".x.lock", purpose="the next writer").acquire()
    assert lock.taken_over is not None and lock.taken_over.pid == child.pid
    assert json.loads((tmp_path / ".x.lock").read_text())["pid"] == os.getpid()
    lock.release()
    assert (tmp_path / ".x.lock").read_text() == ""  # a clean release leaves no holder
    again = FolderLock(tmp_path, ".x.lock", purpose="later").acquire()
    assert again.taken_over is None
    again.release()


def test_locks_within_one_process_are_exclusive_or_shared_as_asked(tmp_path):
    first = FolderLock(tmp_path, ".x.lock", purpose="first").acquire()
    with pytest.raises(FolderInUse, match=f"process {os.getpid()}"):
        FolderLock(tmp_path, ".x.lock", purpose="second").acquire()
    first.release()
    a = FolderLock(tmp_path, ".s.lock", purpose="a", shared_in_process=True).acquire()
    b = FolderLock(tmp_path, ".s.lock", purpose="b", shared_in_process=True).acquire()
    a.release()
    with pytest.raises(FolderInUse):  # b still holds it
        FolderLock(tmp_path, ".s.lock", purpose="c").acquire()
    b.release()
    FolderLock(tmp_path, ".s.lock", purpose="c").acquire().release()


def test_without_flock_the_record_decides(tmp_path, monkeypatch):
    monkeypatch.setattr(locks, "fcntl", None)
    path = tmp_path / ".x.lock"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    assert not pid_running(dead_pid)
    here = socket.gethostname()
    path.write_text(json.dumps({"pid": dead_pid, "host": here, "started": "2026-01-01T00:00:00+00:00"}))
    lock = FolderLock(tmp_path, ".x.lock", purpose="p").acquire()
    assert lock.taken_over == Holder(dead_pid, here, "2026-01-01T00:00:00+00:00")
    lock.release()
    path.write_text(json.dumps({"pid": dead_pid, "host": "other-host", "started": "x"}))
    with pytest.raises(FolderInUse, match=f"process {dead_pid} on host other-host"):
        FolderLock(tmp_path, ".x.lock", purpose="p").acquire()
    path.write_text(json.dumps({"pid": os.getppid(), "host": here, "started": "x"}))
    with pytest.raises(FolderInUse, match=f"process {os.getppid()} on host"):
        FolderLock(tmp_path, ".x.lock", purpose="p").acquire()


# --- session folders ---------------------------------------------------------------------------
_SESSION_CHILD = """
import sys, time
import numpy as np
from napari_pathsegdiff.core.label_store import ClassInfo
from napari_pathsegdiff.core.slide import Slide
from napari_pathsegdiff.engine.session.annotation import AnnotationSession

slide = Slide.from_array(np.full((256, 256, 3), 200, np.uint8), mpp=0.5, identity="locked-slide")
session = AnnotationSession.open(slide, folder=sys.argv[1], classes=[ClassInfo(1, "a", "#ff0000")])
session.store.write_edits(0, 0, np.ones((8, 8), np.uint8))
print("opened", flush=True)
time.sleep(600)
"""


def _slide():
    from napari_pathsegdiff.core.slide import Slide

    return Slide.from_array(np.full((256, 256, 3), 200, np.uint8), mpp=0.5, identity="locked-slide")


def test_a_session_folder_open_in_another_process_is_refused(tmp_path):
    from napari_pathsegdiff.core.label_store import ClassInfo
    from napari_pathsegdiff.engine.session.annotation import AnnotationSession

    folder = tmp_path / "slide.tif.pathsegdiff"
    child = _start(_SESSION_CHILD, folder)
    try:
        with pytest.raises(FolderInUse) as caught:
            AnnotationSession.open(_slide(), folder=folder, classes=[ClassInfo(1, "a", "#ff0000")])
        message = str(caught.value)
        assert f"The session folder {folder} is open in process {child.pid} on host" in message
        assert "an annotation session" in message and "Close the slide there first" in message
    finally:
        _kill(child)
    # the holder is gone (killed): the folder opens, with the edit the child made
    with AnnotationSession.open(_slide(), folder=folder) as session:
        assert session.store.read(0, 0, 8, 8, which="edits").tolist() == np.ones((8, 8)).tolist()
        again = AnnotationSession.open(_slide(), folder=folder)  # same process: shared
        again.close()
    FolderLock(folder, ".session.lock", purpose="check").acquire().release()  # closed: free


_KILLED_SAVE = """
import os, signal, sys
from pathlib import Path
from napari_pathsegdiff.core import atomic
from napari_pathsegdiff.engine.session.session_folder import HEAD

dest = Path(sys.argv[1]) / HEAD
real = os.rename
calls = []

def rename(src, dst):
    calls.append(src)
    if len(calls) == 2:  # the old head renamed out, the new one not yet in
        os.kill(os.getpid(), signal.SIGKILL)
    real(src, dst)

atomic.os.rename = rename
atomic.replace_folder(dest, lambda tmp: (tmp / "config.json").write_text("{}"))
"""


def test_a_head_save_killed_between_the_renames_is_repaired_on_open(tmp_path):
    from napari_pathsegdiff.core.atomic import leftovers
    from napari_pathsegdiff.core.label_store import ClassInfo
    from napari_pathsegdiff.engine.session.annotation import AnnotationSession
    from napari_pathsegdiff.engine.session.session_folder import HEAD, save_session_head
    from napari_pathsegdiff.models.features import RGBFeatures
    from napari_pathsegdiff.models.heads import load_head, new_head

    folder = tmp_path / "session"
    extractor = RGBFeatures(tile_size=64, halo=4)
    head = new_head(extractor, [1, 2], class_names=["a", "b"], class_colors=["#ff0000", "#00ff00"])
    save_session_head(folder, head)
    weights = {k: v.clone() for k, v in load_head(folder / HEAD).state_dict().items()}
    old_umask = os.umask(0o027)
    try:
        save_session_head(folder, head)  # the second save also keeps head-previous
    finally:
        os.umask(old_umask)
    assert (folder / HEAD).stat().st_mode & 0o777 == 0o750  # group-readable, not 0700
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_KILLED_SAVE), str(folder)],
                          capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not (folder / HEAD).exists()
    assert sorted(kind for kind, _ in leftovers(folder / HEAD)) == ["old", "tmp"]

    session = AnnotationSession.open(_slide(), folder=folder, extractor=extractor,
                                     classes=[ClassInfo(1, "a", "#ff0000")])
    try:
        assert any("restored head" in note for note in session.notes), session.notes
        assert session.head is not None
        restored = session.head.state_dict()
        assert all((restored[k] == v).all() for k, v in weights.items())
        assert leftovers(folder / HEAD) == []
    finally:
        session.close()


def test_retire_keeps_the_head_as_previous_and_leaves_no_leftovers(tmp_path):
    from napari_pathsegdiff.engine.session.session_folder import HEAD, PREVIOUS_HEAD, retire_session_head

    folder = tmp_path / "session"
    (folder / HEAD).mkdir(parents=True)
    (folder / HEAD / "config.json").write_text('{"v": 1}')
    retire_session_head(folder)
    assert not (folder / HEAD).exists()
    assert (folder / PREVIOUS_HEAD / "config.json").read_text() == '{"v": 1}'
    assert sorted(p.name for p in folder.iterdir()) == [PREVIOUS_HEAD]


def test_a_session_folder_that_cannot_be_written_is_named(tmp_path, monkeypatch):
    from napari_pathsegdiff.engine.session.session_folder import lock_session_folder

    def read_only(path, flags, mode=0o777):
        raise PermissionError(13, "Permission denied", str(path))

    folder = tmp_path / "share" / "slide.svs.pathsegdiff"
    folder.mkdir(parents=True)
    monkeypatch.setattr(locks.os, "open", read_only)  # a read-only share (root ignores chmod)
    with pytest.raises(PermissionError, match=f"session folder {folder} cannot be written "
                                              r"\(Permission denied\)"):
        lock_session_folder(folder)
