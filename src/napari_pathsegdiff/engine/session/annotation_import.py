"""QuPath annotations in: a GeoJSON file becomes painted labels of a slide.

:func:`import_annotations` reads the file (:mod:`~napari_pathsegdiff.core.geojson_read`), maps its
class names to the class table (a name matches exactly, else ignoring case; a new name becomes a
new class with the file's colour), checks that the file belongs to the slide, and paints the
areas at the analysis level of the label store, as if a person had painted them. It is a
generator yielding :class:`~napari_pathsegdiff.core.progress.Progress`.

Nothing painted is lost: imported areas never paint over a labelled pixel (painted by a person,
imported before, or by an earlier area of the same file); such pixels are kept and counted.
Every check runs before the first pixel is written, so a file that is refused changes nothing.

A file for another slide is recognised by its extent: areas reaching more than
:data:`MISMATCH_MARGIN` of the slide's size beyond its edges are refused with a clear error;
areas crossing the edge by less are clipped, and counted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ...core.geojson_read import GeoJSONError, RasterStats, ReadAnnotations, rasterise, read_annotations
from ...core.label_canvas import LabelCanvas
from ...core.label_store import ClassInfo
from ...core.progress import Progress, Work
from ..training.slide_labels import class_ids_for
from .class_presets import next_class

MISMATCH_MARGIN = 0.05
"""Share of the slide's width (height) that areas may reach beyond its edges before the file is
taken for another slide's."""

__all__ = ["ImportReport", "MISMATCH_MARGIN", "check_extent", "import_annotations", "paint_annotations"]


@dataclass
class ImportReport:
    """What :func:`import_annotations` did.

    Attributes
    ----------
    path : Path
        The file.
    areas : int
        Classified areas read.
    painted : dict
        Pixels painted per class id (analysis level).
    kept : int
        Pixels of the areas already labelled, kept as they were.
    new_classes : list of ClassInfo
        Classes added to the table for names it lacked.
    unclassified, not_areas, empty : int
        Features skipped: without a class, points and lines, empty geometries.
    clipped : int
        Areas cut at the slide's edge.
    seconds : float
        Wall time.
    """

    path: Path
    areas: int = 0
    painted: dict[int, int] = field(default_factory=dict)
    kept: int = 0
    new_classes: list[ClassInfo] = field(default_factory=list)
    unclassified: int = 0
    not_areas: int = 0
    empty: int = 0
    clipped: int = 0
    seconds: float = 0.0

    def text(self) -> str:
        """One paragraph for the user."""
        px = sum(self.painted.values())
        parts = [f"Imported {self.areas} areas of {Path(self.path).name} ({px} px painted)"]
        if self.new_classes:
            parts.append("new classes " + ", ".join(repr(c.name) for c in self.new_classes))
        if self.kept:
            parts.append(f"{self.kept} px already labelled kept as they were")
        skipped = [(self.unclassified, "without a class"), (self.not_areas, "points or lines"),
                   (self.empty, "empty")]
        if any(n for n, _ in skipped):
            parts.append("skipped " + ", ".join(f"{n} {w}" for n, w in skipped if n))
        if self.clipped:
            parts.append(f"{self.clipped} clipped at the slide's edge")
        return "; ".join(parts) + "."


def check_extent(read: ReadAnnotations, slide_size: tuple[int, int], *, slide_name: str = "this slide") -> None:
    """Refuse a file whose areas reach far beyond the slide (made for another slide).

    Raises
    ------
    GeoJSONError
        Naming the file, how far its areas reach, and the slide's size.
    """
    import shapely

    H, W = int(slide_size[0]), int(slide_size[1])
    minx, miny, maxx, maxy = shapely.total_bounds([a.geometry for a in read.annotations])
    mx, my = MISMATCH_MARGIN * W, MISMATCH_MARGIN * H
    if minx < -mx or miny < -my or maxx > W + mx or maxy > H + my:
        raise GeoJSONError(
            f"{read.source}: its annotations reach x {minx:.0f}..{maxx:.0f}, y {miny:.0f}..{maxy:.0f} "
            f"(level-0 pixels), far beyond {slide_name} ({W} x {H} px): the file was made for another "
            "slide (or another scan of it). Import it on the slide it was exported from; nothing was changed."
        )


def paint_annotations(read: ReadAnnotations, ids: dict[str, int], canvas: LabelCanvas, *,
                      downsample: tuple[float, float], report: ImportReport) -> Work[ImportReport]:
    """Paint the areas of ``read`` on ``canvas`` (a grid of level-0 ``downsample``); a generator."""
    stats = RasterStats()
    n = len(read.annotations)
    yield Progress("import", 0, n, f"painting {n} areas")
    done = 0
    for index, annotation in enumerate(read.annotations):
        for block in rasterise([annotation], ids, shape=canvas.shape, downsample=downsample, stats=stats):
            painted, kept = canvas.paint(block.y, block.x, block.mask)
            report.kept += kept
            for i, k in painted.items():
                report.painted[i] = report.painted.get(i, 0) + k
        done = index + 1
        if done % 50 == 0 or done == n:
            yield Progress("import", done, n, f"{done}/{n} areas")
    canvas.flush()
    report.clipped += stats.clipped
    report.areas += n - stats.outside
    return report


def import_annotations(path: str | Path, *, store, slide_size: tuple[int, int], slide_name: str = "this slide",
                       on_classes=None) -> Work[ImportReport]:
    """Paint the classified areas of the QuPath GeoJSON ``path`` into ``store``'s edits.

    Parameters
    ----------
    path : path
        The GeoJSON file (coordinates in level-0 pixels of the slide).
    store : LabelStore
        The slide's label store (analysis level); its class table gains the new names.
    slide_size : (int, int)
        (height, width) of the slide's level 0, to recognise a file made for another slide.
    slide_name : str
        The slide, for messages.
    on_classes : callable, optional
        Called with the new class table instead of ``store.set_classes`` (a session checks it).

    Raises
    ------
    GeoJSONError
        Malformed, empty, unclassified or another slide's file (nothing is changed).
    """
    t0 = time.perf_counter()
    yield Progress("import", 0, 1, f"reading {Path(path).name}")
    read = read_annotations(path)
    check_extent(read, slide_size, slide_name=slide_name)
    ids, new = class_ids_for(read.class_colors(), store.classes, new_class=next_class)
    report = ImportReport(Path(path), new_classes=new, unclassified=read.unclassified,
                          not_areas=read.not_areas, empty=read.empty)
    if new:
        (on_classes or store.set_classes)(list(store.classes) + new)
    canvas = LabelCanvas(store.shape, array=store.edits)
    yield from paint_annotations(read, ids, canvas, downsample=store.downsample, report=report)
    report.seconds = time.perf_counter() - t0
    return report
