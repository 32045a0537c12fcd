"""Atomic files and folders, and recovery after a kill at each step (core/atomic.py)."""

import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from napari_pathsegdiff.core.atomic import (
    leftovers,
    recover_folder,
    remove_folder,
    replace_file,
    replace_folder,
    unfinished_files,
    write_bytes_atomic,
    write_text_atomic,
)


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def _fill(text):
    def write(tmp: Path) -> None:
        (tmp / "weights.bin").write_text(text)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "config.json").write_text("{}")

    return write


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_write_text_replaces_whole_file_with_umask_mode(tmp_path, umask_027):
    path = tmp_path / "a.json"
    path.write_text("old")
    assert write_text_atomic(path, "new ✓") == path
    assert path.read_text(encoding="utf-8") == "new ✓"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    write_bytes_atomic(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert _names(tmp_path) == ["a.json"]


def test_replace_file_keeps_suffixes_and_leaves_nothing_when_the_writer_fails(tmp_path):
    path = tmp_path / "labels.ome.tif"
    path.write_bytes(b"old")
    seen = []

    def fail(tmp: Path) -> None:
        seen.append(tmp.name)
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        replace_file(path, fail)
    assert seen[0].startswith(".labels.ome.tif.tmp-") and seen[0].endswith(".ome.tif")
    assert path.read_bytes() == b"old" and _names(tmp_path) == ["labels.ome.tif"]
    with pytest.raises(FileNotFoundError, match="made no file"):
        replace_file(path, lambda tmp: None)
    replace_file(path, lambda tmp: tmp.write_bytes(b"new"))
    assert path.read_bytes() == b"new" and _names(tmp_path) == ["labels.ome.tif"]


def test_unfinished_files_are_the_temporaries_never_renamed_whatever_their_name(tmp_path):
    # what a writer killed between writing its temporary file and the rename leaves
    kept = [tmp_path / ".r0-c1.json.tmp-0badf00d.json", tmp_path / ".labels.ome.tif.tmp-12345678.ome.tif"]
    for path in kept:
        path.write_bytes(b"half")
    write_text_atomic(tmp_path / "r0-c0.json", "{}")
    (tmp_path / ".hidden.json").write_text("{}")  # not a temporary: kept out
    (tmp_path / ".r0-c2.json.old-12345678").mkdir()  # a folder renamed out: recover_folder's business
    assert unfinished_files(tmp_path) == sorted(kept)
    assert unfinished_files(tmp_path / "absent") == []


def test_replace_folder_swaps_a_complete_group_readable_folder(tmp_path, umask_027):
    dest = tmp_path / "head"
    replace_folder(dest, _fill("one"))
    replace_folder(dest, _fill("two"))
    assert (dest / "weights.bin").read_text() == "two"
    assert (dest / "sub" / "config.json").is_file()
    assert stat.S_IMODE(dest.stat().st_mode) == 0o750
    assert _names(tmp_path) == ["head"]
    assert recover_folder(dest) is None


def test_a_failing_writer_leaves_the_old_folder(tmp_path):
    dest = tmp_path / "head"
    replace_folder(dest, _fill("one"))

    def fail(tmp: Path) -> None:
        (tmp / "weights.bin").write_text("half")
        raise OSError("no space left")

    with pytest.raises(OSError, match="no space"):
        replace_folder(dest, fail)
    assert (dest / "weights.bin").read_text() == "one" and _names(tmp_path) == ["head"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        replace_folder(tmp_path / "file", _fill("x"))


_KILL_CHILD = """
import os, signal, sys
from pathlib import Path
from napari_pathsegdiff.core import atomic

dest, when = Path(sys.argv[1]), sys.argv[2]
real_rename, real_rmtree = os.rename, atomic.shutil.rmtree
calls = []

def rename(src, dst):
    calls.append(src)
    if when == "between" and len(calls) == 2:   # the old folder is out, the new not yet in
        os.kill(os.getpid(), signal.SIGKILL)
    real_rename(src, dst)

def rmtree(path, **kw):
    if when == "before-cleanup":                # committed, the old folder not yet deleted
        os.kill(os.getpid(), signal.SIGKILL)
    real_rmtree(path, **kw)

def write(tmp):
    (tmp / "weights.bin").write_text("two")
    if when == "writing":
        os.kill(os.getpid(), signal.SIGKILL)

atomic.os.rename, atomic.shutil.rmtree = rename, rmtree
atomic.replace_folder(dest, write)
"""


def _killed_replace(tmp_path: Path, when: str) -> Path:
    dest = tmp_path / "head"
    replace_folder(dest, _fill("one"))
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(_KILL_CHILD))
    proc = subprocess.run([sys.executable, str(script), str(dest), when], capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    return dest


def test_kill_between_the_two_renames_restores_the_old_folder(tmp_path):
    dest = _killed_replace(tmp_path, "between")
    assert not dest.exists()
    kinds = sorted(kind for kind, _ in leftovers(dest))
    assert kinds == ["old", "tmp"]
    said = recover_folder(dest)
    assert "restored head" in said and "removed 1 leftover" in said
    assert (dest / "weights.bin").read_text() == "one"
    assert _names(tmp_path) == ["child.py", "head"]
    assert recover_folder(dest) is None


@pytest.mark.parametrize("when, content", [("writing", "one"), ("before-cleanup", "two")])
def test_kill_while_writing_or_cleaning_keeps_the_folder_and_removes_leftovers(tmp_path, when, content):
    dest = _killed_replace(tmp_path, when)
    assert (dest / "weights.bin").read_text() == content
    assert len(leftovers(dest)) == 1
    assert "removed 1 leftover" in recover_folder(dest)
    assert _names(tmp_path) == ["child.py", "head"]


def test_recover_knows_older_names_and_leaves_other_files_alone(tmp_path):
    dest = tmp_path / "head"
    dest.mkdir()
    for name in (".head.k2j4x_9a", ".head.partial", ".head.old", ".head.old-k2j4x_9a",
                 ".head.trash-0a1b2c3d"):
        (tmp_path / name).mkdir()
    others = [".head-previous.tmp-0a1b2c3d", "head2", ".headx", ".head.json.bak", "head.old"]
    for name in others:
        (tmp_path / name).write_text("keep")
    said = recover_folder(dest)
    assert "removed 5 leftovers" in said
    assert _names(tmp_path) == sorted(["head", *others])


def test_recover_without_the_folder_puts_back_the_newest_old_one(tmp_path):
    dest = tmp_path / "head"
    older, newer = tmp_path / ".head.old-aaaa", tmp_path / ".head.old-bbbb"
    older.mkdir()
    (older / "v").write_text("1")
    newer.mkdir()
    (newer / "v").write_text("2")
    assert "restored head" in recover_folder(dest)
    assert (dest / "v").read_text() == "2" and _names(tmp_path) == ["head"]


def test_remove_folder_goes_through_a_trash_name(tmp_path):
    dest = tmp_path / "head"
    replace_folder(dest, _fill("one"))
    remove_folder(dest)
    remove_folder(dest)  # absent: nothing to do
    assert _names(tmp_path) == []
