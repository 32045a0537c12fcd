"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# napari saves its settings file on every change and napari's `make_napari_viewer` fixture
# resets the settings: keep every test away from the user's file. napari reads NAPARI_CONFIG
# when napari.settings is first imported; empty means no settings file at all.
os.environ["NAPARI_CONFIG"] = ""

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real H&E data beside the project; tests that need it are skipped without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA.name!r} beside the project is absent (fresh clone)")
    return SHARED_DATA
