"""Revert to the previous head: the session folder's two heads swapped through whole-folder
replacements, a swap killed at any step finished or undone on open, and a previous head that
does not suit the session's features refused with nothing changed."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from napari_pathsegdiff.core.atomic import leftovers
from napari_pathsegdiff.core.label_store import ClassInfo
from napari_pathsegdiff.engine.session.annotation import AnnotationError, AnnotationSession
from napari_pathsegdiff.engine.session.session_folder import (
    HEAD,
    PREVIOUS_HEAD,
    SWAP_HEAD,
    recover_session_folder,
    swap_session_heads,
)
from napari_pathsegdiff.models.features import ClassicFeatures, RGBFeatures
from napari_pathsegdiff.models.heads import load_head, new_head, save_head


def _head_folder(path, text):
    path.mkdir(parents=True)
    (path / "config.json").write_text(text)
    (path / "sub").mkdir()
    (path / "sub" / "w.bin").write_bytes(text.encode() * 3)


def _heads(folder):
    """What each head folder of ``folder`` holds (its config text), and the other names."""
    found = {name: (folder / name / "config.json").read_text() for name in (HEAD, PREVIOUS_HEAD, SWAP_HEAD)
             if (folder / name).is_dir()}
    others = sorted(p.name for p in folder.iterdir() if p.name not in found)
    return found, others


def test_swapping_twice_brings_the_first_head_back(tmp_path):
    _head_folder(tmp_path / HEAD, "A")
    _head_folder(tmp_path / PREVIOUS_HEAD, "B")
    swap_session_heads(tmp_path)
    assert _heads(tmp_path) == ({HEAD: "B", PREVIOUS_HEAD: "A"}, [])
    assert (tmp_path / PREVIOUS_HEAD / "sub" / "w.bin").read_bytes() == b"AAA"
    swap_session_heads(tmp_path)
    assert _heads(tmp_path) == ({HEAD: "A", PREVIOUS_HEAD: "B"}, [])


def test_without_a_current_head_the_previous_one_becomes_current(tmp_path):
    _head_folder(tmp_path / PREVIOUS_HEAD, "B")
    swap_session_heads(tmp_path)
    assert _heads(tmp_path) == ({HEAD: "B"}, [])
    with pytest.raises(FileNotFoundError, match=f"There is no previous head in {tmp_path}"):
        swap_session_heads(tmp_path)
    assert _heads(tmp_path) == ({HEAD: "B"}, [])


@pytest.mark.parametrize(
    ("state", "after"),
    [
        ({HEAD: "A", PREVIOUS_HEAD: "B", SWAP_HEAD: "A"}, {HEAD: "A", PREVIOUS_HEAD: "B"}),  # killed after step 1
        ({HEAD: "B", PREVIOUS_HEAD: "B", SWAP_HEAD: "A"}, {HEAD: "B", PREVIOUS_HEAD: "A"}),  # after step 2
        ({HEAD: "B", PREVIOUS_HEAD: "A", SWAP_HEAD: "A"}, {HEAD: "B", PREVIOUS_HEAD: "A"}),  # after step 3
    ],
)
def test_a_swap_killed_after_any_step_ends_with_both_heads(tmp_path, state, after):
    for name, text in state.items():
        _head_folder(tmp_path / name, text)
    said = recover_session_folder(tmp_path)
    assert _heads(tmp_path) == (after, [])
    assert len(said) == 1 and "interrupted swap of the heads" in said[0]


_KILLED_SWAP = """
import os, signal, sys
from napari_pathsegdiff.core import atomic
from napari_pathsegdiff.engine.session import session_folder

real, calls = atomic.replace_folder, []

def replace_folder(dest, write):
    calls.append(dest)
    if len(calls) == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)  # killed before this step's rename
    return real(dest, write)

session_folder.replace_folder = replace_folder
session_folder.swap_session_heads(sys.argv[1])
"""


@pytest.mark.parametrize("killed_at", [2, 3])
def test_a_killed_revert_is_repaired_when_the_session_opens(tmp_path, killed_at):
    extractor = RGBFeatures(tile_size=64, halo=4)
    heads = {k: new_head(extractor, [1, 2], class_names=["a", "b"], class_colors=["#ff0000", "#00ff00"])
             for k in "AB"}
    assert not _same(heads["A"], heads["B"])
    save_head(heads["A"], tmp_path / HEAD)
    save_head(heads["B"], tmp_path / PREVIOUS_HEAD)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_KILLED_SWAP), str(tmp_path), str(killed_at)],
                          capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert (tmp_path / SWAP_HEAD).is_dir()

    slide = _slide()
    session = AnnotationSession.open(slide, folder=tmp_path, extractor=extractor,
                                     classes=[ClassInfo(1, "a", "#ff0000")])
    try:
        assert any("interrupted swap" in note for note in session.notes), session.notes
        assert not (tmp_path / SWAP_HEAD).exists() and leftovers(tmp_path / HEAD) == []
        # killed before step 2 committed: nothing changed; before step 3: the swap is finished
        current, previous = ("A", "B") if killed_at == 2 else ("B", "A")
        assert _same(session.head, heads[current]) and _same(load_head(tmp_path / HEAD), heads[current])
        assert _same(load_head(tmp_path / PREVIOUS_HEAD), heads[previous])
    finally:
        session.close()


def test_a_previous_head_for_other_features_is_refused_and_nothing_changes(tmp_path):
    rgb = RGBFeatures(tile_size=64, halo=4)
    classic = ClassicFeatures(num_sigma=1, sigma_max=1, tile_size=64)
    mine = new_head(rgb, [1, 2], class_names=["a", "b"], class_colors=["#ff0000", "#00ff00"])
    save_head(new_head(classic, [1, 2], class_names=["a", "b"], class_colors=["#ff0000", "#00ff00"]),
              tmp_path / PREVIOUS_HEAD)
    session = AnnotationSession.open(_slide(), folder=tmp_path, extractor=rgb, head=mine)
    try:
        before = _heads(tmp_path)
        with pytest.raises(AnnotationError, match=r"The previous head in .*head-previous was not restored: "
                                                  r"This head was trained on features 'classic:"):
            session.revert_head()
        assert session.head is mine and _heads(tmp_path) == before
    finally:
        session.close()


def test_revert_without_a_previous_head_says_so(tmp_path):
    rgb = RGBFeatures(tile_size=64, halo=4)
    session = AnnotationSession.open(_slide(), folder=tmp_path, extractor=rgb,
                                     classes=[ClassInfo(1, "a", "#ff0000")])
    try:
        with pytest.raises(AnnotationError, match="There is no previous head to go back to"):
            session.revert_head()
    finally:
        session.close()


def _slide():
    from napari_pathsegdiff.core.slide import Slide

    return Slide.from_array(np.full((256, 256, 3), 200, np.uint8), mpp=0.5, identity="heads-slide")


def _same(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all((sa[k] == sb[k]).all() for k in sa)
