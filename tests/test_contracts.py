"""The import-layer contracts cover every module of the package, and the GUI stays optional."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import napari_pathsegdiff
import napari_pathsegdiff.engine

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "napari_pathsegdiff"


def _contracts() -> dict[str, dict]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return {c["name"]: c for c in config["tool"]["importlinter"]["contracts"]}


def _layer_members(contract: dict) -> set[str]:
    return {name.strip() for layer in contract["layers"] for name in layer.split("|")}


def _contract_starting(prefix: str) -> dict:
    found = [c for name, c in _contracts().items() if name.startswith(prefix)]
    assert len(found) == 1, f"one contract named {prefix!r}..., found {len(found)}"
    return found[0]


def test_every_top_level_module_is_in_the_layers_contract():
    members = _layer_members(_contract_starting("Layers:"))
    modules = {f"{PACKAGE}.{m.name}" for m in pkgutil.iter_modules(napari_pathsegdiff.__path__)}
    assert modules - members == set(), "modules in no layer"
    assert members - modules == set(), "layers naming no module"


def test_every_engine_wing_is_in_the_wings_contract():
    members = _layer_members(_contract_starting("Engine wings:"))
    wings = {m.name for m in pkgutil.iter_modules(napari_pathsegdiff.engine.__path__)}
    assert wings == members


def test_the_gui_and_the_cli_are_peers():
    top = _contract_starting("Layers:")["layers"][0]
    assert {n.strip() for n in top.split("|")} == {f"{PACKAGE}._widgets", f"{PACKAGE}.cli"}


def test_only_widgets_may_import_qt():
    contract = _contract_starting("Qt only under _widgets")
    sources = set(contract["source_modules"])
    modules = {f"{PACKAGE}.{m.name}" for m in pkgutil.iter_modules(napari_pathsegdiff.__path__)}
    assert sources == modules - {f"{PACKAGE}._widgets"}
    assert {"qtpy", "magicgui", "PyQt6", "PySide6", "vispy"} <= set(contract["forbidden_modules"])


def test_the_cli_and_the_engine_run_without_napari_or_qt():
    """Importing every module outside ``_widgets`` and ``_setup_reader`` with napari and the Qt
    bindings made unimportable, then parsing a command line, works."""
    code = r"""
import importlib, pkgutil, sys
BLOCKED = ("napari", "npe2", "qtpy", "magicgui", "PyQt5", "PyQt6", "PySide2", "PySide6", "superqt", "vispy")
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Block())
import napari_pathsegdiff as p
for m in pkgutil.walk_packages(p.__path__, "napari_pathsegdiff."):
    if m.name.startswith(("napari_pathsegdiff._widgets", "napari_pathsegdiff._setup_reader")):
        continue
    if m.name.endswith("__main__"):
        continue
    importlib.import_module(m.name)
from napari_pathsegdiff.cli import build_parser
build_parser().parse_args(["segment-slide", "a.svs", "--head", "h", "--out", "o"])
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")
