"""A project: several slides with one class table and one head.

A project is a small file, ``project.json``, in a folder of its own (often the folder of the
slides)::

    {
      "format": 1,
      "slides": ["slide-a.svs", "scans/slide-b.tif"],
      "classes": [{"id": 1, "name": "tumour", "color": "#e6194b"}, ...],
      "head": "head"
    }

Slide paths and the head folder are relative to the project's folder (absolute paths are kept
as given). Each slide keeps its own session folder
(:mod:`~napari_pathsegdiff.engine.session.session_folder`: edits, predictions, uncertainty, its
copy of the head); the project adds the class table all slides share and the head trained on
all of them (``<head>/``, the one it replaced in ``<head>-previous/``).

The file is read strictly (:func:`read_project`): unknown keys, wrong types, a missing slide
or a bad class are errors that name the file and what to fix; it is written whole or not at
all (:func:`~napari_pathsegdiff.core.atomic.write_text_atomic`).

:func:`train_project` learns from the painted pixels of every slide (through
:mod:`~napari_pathsegdiff.engine.training.slide_labels`) and saves the head in the project.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from ...core.atomic import replace_folder, write_text_atomic
from ...core.label_store import ClassInfo, LabelStore, LabelStoreError
from ...core.progress import Progress, Work
from .session_folder import LABELS, existing_session_folder

PROJECT_FILE = "project.json"
FORMAT = 1
#: Files a folder of slides is listed by (lower case).
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".scn", ".bif", ".qptiff")
_KEYS = {"format", "slides", "classes", "head"}

__all__ = ["PROJECT_FILE", "Project", "ProjectError", "new_project", "painted_slide", "read_project",
           "slides_in_folder", "project_slide_labels", "train_project", "write_project"]


class ProjectError(ValueError):
    """A project file that cannot be used: the message names the file and what to fix."""


@dataclass(frozen=True)
class Project:
    """A set of slides with one class table and one head.

    Attributes
    ----------
    path : Path
        The ``project.json`` file.
    slides : tuple of Path
        The slide files (absolute).
    classes : tuple of ClassInfo
        The class table (ids 1..255).
    head : Path
        The project's head folder (absolute; it may not exist yet).
    """

    path: Path
    slides: tuple[Path, ...]
    classes: tuple[ClassInfo, ...]
    head: Path

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def previous_head(self) -> Path:
        """Where the head replaced by the last training is kept."""
        return self.head.with_name(self.head.name + "-previous")

    def with_classes(self, classes: Sequence[ClassInfo]) -> "Project":
        return replace(self, classes=tuple(classes))

    def to_json(self) -> dict:
        return {"format": FORMAT, "slides": [_relative(p, self.folder) for p in self.slides],
                "classes": [dict(c.__dict__) for c in self.classes], "head": _relative(self.head, self.folder)}


def slides_in_folder(folder: str | Path) -> list[Path]:
    """The slide files directly in ``folder`` (by :data:`SLIDE_SUFFIXES`), sorted by name."""
    folder = Path(folder)
    return sorted(p.resolve() for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in SLIDE_SUFFIXES)


def new_project(folder: str | Path, slides: Sequence[str | Path] | None = None, *,
                classes: Sequence[ClassInfo] = (), head: str = "head") -> Project:
    """Make ``folder/project.json`` for ``slides`` (default: the slide files in ``folder``).

    Raises
    ------
    ProjectError
        The folder already holds a project, no slide was found, or a slide is missing.
    """
    folder = Path(folder).resolve()
    path = folder / PROJECT_FILE
    if path.exists():
        raise ProjectError(f"{path} already exists: open it, or pick another folder for a new project.")
    if slides is None:
        if not folder.is_dir():
            raise ProjectError(f"No folder {folder}: give a folder of slides or the slides themselves.")
        slides = slides_in_folder(folder)
    project = Project(path, tuple(Path(s).resolve() for s in slides), tuple(classes), (folder / head).resolve())
    _check(project, str(path))
    folder.mkdir(parents=True, exist_ok=True)
    write_project(project)
    return project


def read_project(path: str | Path) -> Project:
    """Read ``project.json`` (or the one in the folder ``path``), strictly.

    Raises
    ------
    ProjectError
        Not JSON, unknown or missing keys, wrong types, a slide that does not exist, or a bad
        class table; the message names the file.
    FileNotFoundError
        No project file there.
    """
    path = Path(path)
    if path.is_dir():
        path = path / PROJECT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"No project file at {path}: make one with a folder of slides first.")
    path = path.resolve()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProjectError(f"{path} is not a project file (not readable as JSON: {exc}).") from None
    if not isinstance(data, dict):
        raise ProjectError(f"{path}: expected a JSON object with {sorted(_KEYS)}.")
    unknown, missing = sorted(set(data) - _KEYS), sorted(_KEYS - set(data))
    if unknown or missing:
        raise ProjectError(f"{path}: " + "; ".join(
            ([f"unknown keys {unknown}"] if unknown else []) + ([f"missing keys {missing}"] if missing else []))
            + f". A project file has exactly {sorted(_KEYS)}.")
    if data["format"] != FORMAT:
        raise ProjectError(f"{path} has format {data['format']!r}; this version reads format {FORMAT}.")
    slides, classes, head = data["slides"], data["classes"], data["head"]
    if not isinstance(slides, list) or not all(isinstance(s, str) and s for s in slides):
        raise ProjectError(f"{path}: 'slides' must be a list of slide paths.")
    if not isinstance(head, str) or not head:
        raise ProjectError(f"{path}: 'head' must be a folder path.")
    if not isinstance(classes, list):
        raise ProjectError(f"{path}: 'classes' must be a list of {{'id', 'name', 'color'}}.")
    table = []
    for i, c in enumerate(classes):
        if not (isinstance(c, dict) and set(c) == {"id", "name", "color"} and isinstance(c["id"], int)
                and isinstance(c["name"], str) and isinstance(c["color"], str)):
            raise ProjectError(f"{path}: class {i} must be {{'id': int, 'name': str, 'color': '#rrggbb'}}, got {c!r}.")
        table.append(ClassInfo(c["id"], c["name"], c["color"]))
    folder = path.parent
    project = Project(path, tuple((folder / s).resolve() for s in slides), tuple(table), (folder / head).resolve())
    _check(project, str(path))
    return project


def write_project(project: Project) -> Path:
    """Write ``project.json`` whole or not at all."""
    _check(project, str(project.path))
    return write_text_atomic(project.path, json.dumps(project.to_json(), indent=2) + "\n")


def _check(project: Project, source: str) -> None:
    if not project.slides:
        raise ProjectError(f"{source}: a project needs at least one slide (none given or found).")
    seen = set()
    for s in project.slides:
        if s in seen:
            raise ProjectError(f"{source}: the slide {s} is listed twice.")
        seen.add(s)
        if not s.is_file():
            raise ProjectError(f"{source}: the slide {s} does not exist: move it back, or remove it "
                               "from the project's 'slides'.")
    ids = [c.id for c in project.classes]
    names = [c.name.strip() for c in project.classes]
    if len(set(ids)) != len(ids) or any(not 1 <= i <= 255 for i in ids):
        raise ProjectError(f"{source}: class ids must be unique and within 1..255, got {ids}.")
    if any(not n for n in names) or len(set(names)) != len(names):
        raise ProjectError(f"{source}: class names must be distinct and not empty, got {names}.")
    for c in project.classes:
        if not (len(c.color) == 7 and c.color.startswith("#") and _is_hex(c.color[1:])):
            raise ProjectError(f"{source}: the colour of class {c.name!r} must be '#rrggbb', got {c.color!r}.")


def _is_hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return True


def _relative(path: Path, folder: Path) -> str:
    try:
        return Path(path).relative_to(folder).as_posix()
    except ValueError:
        return str(path)


# --- training on every slide -----------------------------------------------------------------
def project_slide_labels(project: Project, *, root: str | Path | None = None):
    """The painted labels of every slide that has a session, as ``PaintedSlide`` (slides without
    one are left out: nothing is painted there)."""
    from ...core.slide import open_slide

    found = (painted_slide(open_slide(path), root=root) for path in project.slides)
    return [p for p in found if p is not None]


def painted_slide(slide, *, root: str | Path | None = None):
    """The ``PaintedSlide`` of an open slide's session (its edits), or None when it has none."""
    from ..training.slide_labels import PaintedSlide

    path = Path(slide.path)
    folder = existing_session_folder(path, slide.identity, root=root)
    if folder is None:
        return None
    try:
        store = LabelStore.open(folder / LABELS)
    except LabelStoreError as exc:
        raise ProjectError(f"The annotations of {path.name} cannot be read: {exc}") from exc
    if slide.mpp is None and store.given_slide_mpp is not None:  # given by a person in the session
        from .annotation import GIVEN_MPP

        slide = slide.with_mpp(store.given_slide_mpp, GIVEN_MPP)
    level = next((i for i, lv in enumerate(slide.levels) if tuple(int(s) for s in lv.shape[:2]) == store.shape), None)
    if level is None:
        raise ProjectError(f"The label store {store.path} fits no pyramid level of {path.name}: "
                           "move it away (the slide file was replaced?).")
    return PaintedSlide(slide, store, level, store.classes, path.name)


def train_project(project: Project, *, extractor, head=None, auto: bool = True, root: str | Path | None = None,
                  cache=None, seed: int = 0, budget_s: float | None = None, **sampling) -> Work:
    """Train the project's head on the painted pixels of every slide, then save it in the project.

    The head is fine-tuned when it knows every painted class, else a new one is made (chosen by
    ``auto`` like the widget's *Train on my edits*). New class names join the project's table,
    which is written back. Returns ``(SlidesTrainResult, Project)``.
    """
    from ...models.heads import save_head
    from .slides_training import train_on_slides
    from .annotation import auto_candidates

    slides = project_slide_labels(project, root=root)
    if not slides:
        raise ProjectError(f"No slide of the project {project.path} has annotations yet: paint or import "
                           "some on at least one slide first.")
    options = {}
    if auto:
        candidates, build = auto_candidates(extractor)
        options = {"make_extractor": build, "candidates": candidates}
    result = yield from train_on_slides(slides, extractor=extractor, head=head, classes=project.classes,
                                        cache=cache, seed=seed, budget_s=budget_s, **options, **sampling)
    yield Progress("save", 0, 1, "saving the project's head")
    if project.head.is_dir():
        replace_folder(project.previous_head, lambda tmp: shutil.copytree(project.head, tmp, dirs_exist_ok=True))
    summary = dict(result.summary(), features=result.extractor.config(), head=result.result.head.head_kind)
    save_head(result.result.head, project.head, extra={"training.json": summary})
    if list(result.classes) != list(project.classes):
        project = project.with_classes(result.classes)
        write_project(project)
    return result, project
