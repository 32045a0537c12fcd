"""The annotate-and-retrain loop without a GUI: segment a region, learn from painted edits,
and point at the region where a correction helps most.

An :class:`AnnotationSession` ties together one slide, its label store (predictions and a
person's edits, on disk in the session folder, see
:mod:`~napari_pathsegdiff.engine.session.session_folder`), the current head, the feature extractor and
a feature cache in memory backed by the session folder's ``features/`` (so a reopened slide is
warm). The napari widget and the simulated-annotator benchmark both drive
it; its long operations are generators yielding
:class:`~napari_pathsegdiff.core.progress.Progress` that can be stopped between yields.

Class ids. The store and the GUI use ids 1..255 (0 is "not labelled / not segmented"). A head
keeps its own ids: a head whose ids include 0 (trained on masks where 0 is background) is
shown with every id shifted by one (:func:`store_ids_for`).

The analysis level. The store covers one pyramid level of the slide: the coarsest whose µm/px is
at most the head's (or the backbone's, or :data:`DEFAULT_ANALYSIS_MPP`), chosen when the store
is created and kept afterwards. A head of another µm/px still predicts on it: prediction
resamples tiles to the head's µm/px and the result back.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import zarr

from ...core.disk_feature_cache import DEFAULT_DISK_BUDGET_BYTES, DiskFeatureCache
from ...core.feature_cache import FeatureCache
from ...core.label_store import ClassInfo, LabelStore, LabelStoreError
from ...core.progress import Progress, Work
from ...core.region import Region
from ...core.scale_plan import DEFAULT_ANALYSIS_MPP, plan_for_labels
from ...core.slide import Slide
from .session_folder import (
    FEATURES,
    HEAD,
    LABELS,
    PREVIOUS_HEAD,
    UNCERTAINTY,
    lock_session_folder,
    recover_session_folder,
    retire_session_head,
    save_session_head,
    session_folder_for,
    session_head_identity,
    swap_session_heads,
)
from .suggestion import (
    BLOCK,
    Suggestion,
    best_window,
    decode_uncertainty,
    encode_uncertainty,
    painted_blocks,
    uncertainty_blocks,
)

MAX_SEGMENT_PIXELS = 4096 * 4096
"""Largest region (analysis pixels) one "Segment" segments; larger views must zoom in."""
SUGGESTION_BLOCK = BLOCK
GIVEN_MPP = "given (kept in the session)"
"""The ``mpp_source`` of a level-0 µm/px given in the session (its slide file records none)."""
REFRESH_BLOCK = 2048
"""Side (analysis pixels) of the blocks that :meth:`AnnotationSession.refresh_stale` segments
at once: stale chunks of one block are segmented together, so tiles are shared."""

__all__ = [
    "AnnotationError",
    "AnnotationSession",
    "SegmentResult",
    "Suggestion",
    "TrainOutcome",
    "store_ids_for",
    "DEFAULT_ANALYSIS_MPP",
    "MAX_SEGMENT_PIXELS",
]


class AnnotationError(ValueError):
    """A request the session cannot carry out as asked; nothing was changed, and the message
    says what to do."""


@dataclass
class SegmentResult:
    """What :meth:`AnnotationSession.segment` returns.

    Attributes
    ----------
    region : Region
        The segmented region at the analysis level (clipped to the slide).
    labels : ndarray of uint8
        Predicted class ids (store ids) on the region; painted pixels are not applied here
        (read the store's merged view for what is shown).
    uncertainty : ndarray of float32 or None
        Normalised entropy in [0, 1] per pixel, when asked for.
    cache : dict
        Feature-cache hits and misses.
    notes : list of str
        What the user should know (e.g. an unknown µm/px).
    seconds : float
        Wall time of the whole call.
    """

    region: Region
    labels: np.ndarray
    uncertainty: np.ndarray | None
    cache: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class TrainOutcome:
    """What :meth:`AnnotationSession.train_on_edits` returns.

    Attributes
    ----------
    result : TrainResult
        The training record (history, steps, class pixels).
    head_folder : Path
        Where the head was saved.
    new_head : bool
        Whether a new head was made (no head yet, or new classes painted) rather than fine-tuned.
    painted : dict
        Painted pixels per store class id.
    windows : int
        Edited chunks of the store the labels came from.
    seconds : float
        Wall time, features included.
    synthetic : int
        Generated pairs trained on besides the edits.
    note : str
        What ``auto`` chose (features and head, cross-validated score), or why it fell back.
    """

    result: object
    head_folder: Path
    new_head: bool
    painted: dict[int, int]
    windows: int
    seconds: float = 0.0
    synthetic: int = 0
    note: str = ""


def store_ids_for(head_ids: Sequence[int]) -> list[int]:
    """Store (GUI) ids of a head's class ids: the same ids, or all shifted by one when the head
    has a class 0 (0 means "not labelled" in the store).

    Examples
    --------
    >>> store_ids_for([1, 2, 4]), store_ids_for([0, 1])
    ([1, 2, 4], [1, 2])
    """
    ids = [int(i) for i in head_ids]
    if 0 not in ids:
        return ids
    if max(ids) >= 255:
        raise AnnotationError(
            f"The head's classes {ids} include 0 and 255: shifted by one to make room for "
            "'not labelled' (0) they would exceed 255. Use a head with fewer class ids."
        )
    return [i + 1 for i in ids]


class AnnotationSession:
    """One slide's annotation: label store, current head, features and feature cache.

    Use :meth:`open`. Attributes ``slide``, ``store``, ``folder``, ``level`` (the analysis
    pyramid level), ``head`` (None until one is trained or opened), ``extractor``, ``cache``
    and ``notes`` (messages for the user) are public and read-only by convention.
    """

    def __init__(self, slide: Slide, store: LabelStore, folder: Path, *, level: int, extractor=None,
                 cache: FeatureCache | None = None):
        self.slide = slide
        self.store = store
        self.folder = Path(folder)
        self.level = int(level)
        self.extractor = extractor
        self.head = None
        self.head_identity: str | None = None  # recorded with every prediction (see stale_regions)
        self.cache = cache if cache is not None else FeatureCache()
        self.notes: list[str] = []
        self._tissue: np.ndarray | None = None
        self._lock = None  # the session folder's lock, set by open()

    # --- opening ----------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        slide: Slide,
        *,
        folder: str | Path | None = None,
        root: str | Path | None = None,
        extractor=None,
        head=None,
        classes: Sequence[ClassInfo] | None = None,
        analysis_mpp: float | None = None,
        cache: FeatureCache | None = None,
        restore_head: bool = True,
        feature_disk_bytes: int = DEFAULT_DISK_BUDGET_BYTES,
    ) -> "AnnotationSession":
        """Open the session of ``slide``, creating its store on first use.

        The session folder is locked for this process until :meth:`close` (sessions of one
        process share the lock): a second process that opens the same folder is refused with
        :class:`~napari_pathsegdiff.core.locks.FolderInUse`, naming the process that has it
        open. Leftovers of a head save that was killed are repaired first (see ``notes``).

        Parameters
        ----------
        slide : Slide
            The slide (or an in-memory image wrapped with ``Slide.from_array``).
        folder : path, optional
            Session folder; default :func:`~napari_pathsegdiff.engine.session.session_folder.session_folder_for`.
        root : path, optional
            Folder of the per-user stores (used when the slide's folder is not writable).
        extractor : FeatureExtractor, optional
            Features to use; default those of the saved head (if any).
        head : SegmentationHead, optional
            Head to use instead of the saved one (it must suit ``extractor``).
        classes : sequence of ClassInfo, optional
            Class table of a new store (default: the head's classes).
        analysis_mpp : float, optional
            µm/px that chooses the analysis level of a new store (default: the head's, the
            features', or :data:`DEFAULT_ANALYSIS_MPP`).
        cache : FeatureCache, optional
            Shared feature cache; default one in memory backed by the session folder's
            ``features/``.
        restore_head : bool
            Load the head saved in the session folder when no ``head`` is given.
        feature_disk_bytes : int
            Budget of ``features/`` when ``cache`` is not given (default 2 GiB; 0 keeps no
            features on disk). The least recently used tiles are deleted beyond it.

        Raises
        ------
        AnnotationError
            The folder holds the store of another slide, or a saved head that cannot be read.
        HeadError
            ``head`` does not suit ``extractor``.
        FolderInUse
            Another process has this session folder open (a ``ValueError``).
        """
        folder = Path(folder) if folder is not None else session_folder_for(slide, root=root)
        lock = lock_session_folder(folder)
        if cache is None:
            disk = DiskFeatureCache(folder / FEATURES, max_bytes=feature_disk_bytes) if feature_disk_bytes else None
            cache = FeatureCache(disk=disk)
        try:
            return cls._open_locked(slide, folder, lock, extractor=extractor, head=head,
                                    classes=classes, analysis_mpp=analysis_mpp, cache=cache,
                                    restore_head=restore_head)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def _open_locked(cls, slide, folder: Path, lock, *, extractor, head, classes, analysis_mpp,
                     cache, restore_head) -> "AnnotationSession":
        """:meth:`open`, once the session folder is locked by this process."""
        from ...models.heads import HeadError, load_head

        notes = recover_session_folder(folder)
        saved = None
        if head is None and restore_head and (folder / HEAD).is_dir():
            try:
                saved = load_head(folder / HEAD)
            except (HeadError, FileNotFoundError) as exc:
                raise AnnotationError(
                    f"The head saved for this slide in {folder / HEAD} cannot be read ({exc}). "
                    "Move that folder away to start a new head; the edits are kept."
                ) from exc
        given = head if head is not None else saved
        if extractor is None and given is not None:
            from ...models.features import build_extractor

            extractor = build_extractor(given.feature_config)
        store, level = _open_store(slide, folder / LABELS, extractor=extractor, head=given,
                                   classes=classes, analysis_mpp=analysis_mpp)
        if slide.mpp is None and store.given_slide_mpp is not None:
            slide = slide.with_mpp(store.given_slide_mpp, GIVEN_MPP)
        session = cls(slide, store, folder, level=level, extractor=extractor, cache=cache)
        session._lock = lock
        if head is not None:
            session.set_head(head)
        elif saved is not None:
            try:
                session.set_head(saved, save=False)
            except HeadError as exc:
                notes.append(f"The head saved in {folder / HEAD} was not loaded: {exc}")
        session.notes.extend(notes)
        return session

    def close(self) -> None:
        """Release the session folder (its lock); everything is already on disk.

        A session dropped without ``close()`` releases it when garbage-collected, and the
        operating system releases it when the process ends.
        """
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()

    def __enter__(self) -> "AnnotationSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- classes ----------------------------------------------------------------------------
    @property
    def classes(self) -> list[ClassInfo]:
        """The class table (store ids 1..255, names, colours)."""
        return self.store.classes

    def set_classes(self, classes: Sequence[ClassInfo]) -> None:
        """Replace the class table.

        Raises
        ------
        AnnotationError
            A class that has painted pixels would be removed, or the ids or colours are invalid.
        """
        classes = list(classes)
        for c in classes:
            if not (isinstance(c.color, str) and len(c.color) == 7 and c.color.startswith("#")):
                raise AnnotationError(f"Colour of class {c.name!r} must be '#rrggbb', got {c.color!r}.")
        names = [c.name.strip() for c in classes]
        if any(not n for n in names) or len(set(names)) != len(names):
            raise AnnotationError(f"Class names must be distinct and not empty, got {names}.")
        painted = self.painted_counts()
        removed = {i for i in painted if i not in {c.id for c in classes}}
        if removed:
            old = {c.id: c.name for c in self.classes}
            which = ", ".join(f"{old.get(i, i)!r} ({painted[i]} px)" for i in sorted(removed))
            raise AnnotationError(
                f"Class {which} has painted pixels: erase them (eraser, label 0) before removing "
                "the class."
            )
        try:
            self.store.set_classes(classes)
        except LabelStoreError as exc:
            raise AnnotationError(str(exc)) from exc

    def painted_counts(self) -> dict[int, int]:
        """Painted pixels per store class id, over the whole slide."""
        counts: dict[int, int] = {}
        for window in self.store.edited_windows():
            ids, n = np.unique(self.store.read(*window, which="edits"), return_counts=True)
            for i, k in zip(ids.tolist(), n.tolist()):
                if i:
                    counts[i] = counts.get(i, 0) + k
        return counts

    # --- head and features --------------------------------------------------------------------
    def set_extractor(self, extractor) -> None:
        """Use ``extractor``; a head made for other features is put aside (kept on disk)."""
        from ...models.heads import HeadError

        self.extractor = extractor
        if self.head is not None:
            try:
                self.head.check_compatible(extractor)
            except HeadError as exc:
                self.head, self.head_identity = None, None
                self.notes.append(f"The current head was put aside: {exc}")

    def set_head(self, head, *, save: bool = True) -> None:
        """Use ``head`` (and save it as the session's head when ``save``).

        Its classes join the class table (same store id: the head's name and colour win).

        Raises
        ------
        HeadError
            The head needs features other than the session's (the message says which).
        """
        if self.extractor is None:
            from ...models.features import build_extractor

            self.extractor = build_extractor(head.feature_config)
        head.check_compatible(self.extractor)
        ids = store_ids_for(head.class_ids)
        table = {c.id: c for c in self.classes}
        for i, name, color in zip(ids, head.class_names, head.class_colors):
            table[i] = ClassInfo(i, name, color)
        self.store.set_classes(sorted(table.values(), key=lambda c: c.id))
        self.head = head
        if save:
            save_session_head(self.folder, head)
        self.head_identity = session_head_identity(self.folder)

    def open_head(self, folder: str | Path) -> None:
        """Load the head in ``folder`` and make it the session's head.

        Raises
        ------
        FileNotFoundError, HeadError
            The folder is missing or not a head, or the head was trained for other features
            (another backbone): the message gives the reason; nothing is changed.
        """
        from ...models.heads import load_head

        self.set_head(load_head(folder))

    def new_head(self) -> None:
        """Forget the current head: the next training makes a new one (the old one is kept as
        ``head-previous``)."""
        self.head, self.head_identity = None, None
        retire_session_head(self.folder)

    def revert_head(self) -> None:
        """Go back to the previous head: ``head-previous/`` becomes the session's head and the
        head it replaces becomes ``head-previous/`` (reverting again brings it back).

        Raises
        ------
        AnnotationError
            There is no previous head, it cannot be read, or it needs other features than the
            session's (the message says which); nothing is changed.
        """
        from ...models.heads import HeadError, load_head

        previous = self.folder / PREVIOUS_HEAD
        if not previous.is_dir():
            raise AnnotationError(
                "There is no previous head to go back to: one is kept when a training or New "
                "replaces the current head."
            )
        try:
            head = load_head(previous)
            if self.extractor is not None:
                head.check_compatible(self.extractor)
        except (HeadError, FileNotFoundError) as exc:
            raise AnnotationError(f"The previous head in {previous} was not restored: {exc}") from exc
        swap_session_heads(self.folder)
        self.set_head(head, save=False)

    def save_head_as(self, folder: str | Path) -> Path:
        """Write the current head to ``folder`` (a head folder, replaced atomically)."""
        from ...models.heads import save_head

        head = self._require_head()
        return save_head(head, folder)

    # --- scale --------------------------------------------------------------------------------
    @property
    def mpp_given(self) -> bool:
        """Whether the slide's µm/px was given by a person (its file records none)."""
        return self.store.given_slide_mpp is not None

    def set_slide_mpp(self, mpp: float) -> None:
        """Give the level-0 µm/px of a slide whose file records none; it is kept in the session
        folder (used again when the session is reopened), segmenting then matches the head's
        µm/px, and exports carry the scale.

        Raises
        ------
        AnnotationError
            ``mpp`` is not a positive number, or the slide file records its own µm/px.
        """
        if isinstance(mpp, bool) or not isinstance(mpp, (int, float)) or not (math.isfinite(mpp) and mpp > 0):
            raise AnnotationError(f"The µm/px must be a positive number of µm per pixel, got {mpp!r}.")
        if self.slide.mpp is not None and not self.mpp_given:
            raise AnnotationError(
                f"The slide file records its µm/px ({self.slide.mpp:.4g}): that one is used."
            )
        self.store.set_given_slide_mpp(float(mpp))
        self.slide = self.slide.with_mpp(float(mpp), GIVEN_MPP)

    # --- geometry -----------------------------------------------------------------------------
    @property
    def level_shape(self) -> tuple[int, int]:
        """(height, width) of the analysis level (the store's grid)."""
        return self.store.shape

    def to_store_region(self, region: Region) -> Region:
        """``region`` (any level) at the analysis level, clipped to it.

        Raises
        ------
        AnnotationError
            The region lies outside the slide.
        """
        at = region.to_level(self.level, self.slide.downsamples)
        try:
            return at.clip(self.level_shape)
        except ValueError as exc:
            raise AnnotationError(f"The region {region} lies outside the slide: nothing to segment.") from exc

    # --- segmenting ---------------------------------------------------------------------------
    def segment(self, region: Region, *, uncertainty: bool = True, batch_size: int = 4,
                only_predicted: bool = False) -> Work[SegmentResult]:
        """Predict ``region`` and write it into the store; a generator of :class:`Progress`.

        Painted pixels stay as painted (the store's merged view shows edits over predictions).
        The store records the head that predicted every pixel. Nothing is written when the
        generator is closed before it finishes.

        Parameters
        ----------
        region : Region
            Any level; converted to the analysis level and clipped to the slide.
        uncertainty : bool
            Also compute and store the per-pixel normalised entropy.
        batch_size : int
            Tiles per batch.
        only_predicted : bool
            Write only pixels that hold a prediction already (re-segmenting what an earlier
            head predicted, without growing the segmented area).

        Raises
        ------
        AnnotationError
            No head yet, or the region is larger than :data:`MAX_SEGMENT_PIXELS`.
        """
        from ..inference.predict import predict_region
        from ..inference.predict import uncertainty as entropy

        head, identity = self._require_head(), self.head_identity
        region = self.to_store_region(region)
        if region.height * region.width > MAX_SEGMENT_PIXELS:
            side = int(math.sqrt(MAX_SEGMENT_PIXELS))
            raise AnnotationError(
                f"The view covers {region.width}x{region.height} pixels at the analysis level, "
                f"more than one segmentation takes (about {side}x{side}): zoom in, or segment the "
                "whole slide with the command line."
            )
        t0 = time.perf_counter()
        pred = yield from predict_region(self.slide, region, head=head, extractor=self.extractor,
                                         cache=self.cache, batch_size=batch_size,
                                         return_probabilities=uncertainty)
        labels = self._head_to_store(head)[pred.labels]
        keep = None
        if only_predicted:
            keep = self.store.read(region.y, region.x, region.height, region.width, which="prediction") > 0
            labels = np.where(keep, labels, 0).astype(np.uint8)
        self.store.write_prediction(region.y, region.x, labels, head=identity)
        unc = None
        if uncertainty:
            unc = entropy(pred.probabilities)
            coded = encode_uncertainty(unc)
            array = self._uncertainty_array(create=True)
            if keep is not None:
                coded = np.where(keep, coded, np.asarray(array[region.slices]))
            array[region.slices] = coded
        return SegmentResult(region, labels, unc, cache=dict(pred.cache), notes=list(pred.notes),
                             seconds=time.perf_counter() - t0)

    def stale_regions(self) -> list[Region]:
        """Store chunks (analysis level) holding predictions that the current head did not make.

        They were segmented by an earlier head (or before heads were recorded); empty without
        a head. :meth:`refresh_stale` segments them again.
        """
        if self.head is None:
            return []
        return [Region(self.level, *w) for w in self.store.stale_windows(self.head_identity)]

    def refresh_stale(self, *, first: Region | None = None, batch_size: int = 4,
                      block: int = REFRESH_BLOCK) -> Work[int]:
        """Segment again, with the current head, every region an earlier head predicted.

        A generator of :class:`Progress` (stage ``"refresh"``, counting regions); it returns
        the number of regions segmented. Stale chunks are grouped into blocks of ``block``
        pixels and segmented block by block, nearest to ``first`` (e.g. the view) first; only pixels
        predicted before are written, painted pixels stay as painted, and closing the
        generator keeps every region already done (each is written whole).
        """
        self._require_head()
        groups = _group_windows(self.store.stale_windows(self.head_identity), block)
        if first is not None:
            at = self.to_store_region(first)
            cy, cx = at.y + at.height / 2, at.x + at.width / 2
            groups.sort(key=lambda g: (g[0] + g[2] / 2 - cy) ** 2 + (g[1] + g[3] / 2 - cx) ** 2)
        n = len(groups)
        for i, (y, x, h, w) in enumerate(groups):
            what = f"region {i + 1} of {n} segmented by an earlier head"
            yield Progress("refresh", i, n, what)
            work = self.segment(Region(self.level, y, x, h, w), batch_size=batch_size, only_predicted=True)
            yield from _as_stage(work, "refresh", i, n, what)
        if n:
            yield Progress("refresh", n, n, "every segmented region is up to date")
        return n

    def uncertainty(self, region: Region) -> np.ndarray:
        """Stored uncertainty of ``region`` (analysis level) in [0, 1]; NaN where not computed."""
        array = self._uncertainty_array(create=False)
        if array is None:
            return np.full(region.shape, np.nan, np.float32)
        return decode_uncertainty(np.asarray(array[region.slices]))

    # --- training -----------------------------------------------------------------------------
    def train_on_edits(
        self,
        *,
        steps: int | None = None,
        seed: int = 0,
        lr: float = 1e-2,
        batch_size: int = 32,
        feature_batch_size: int = 4,
        synthetic: Sequence = (),
        auto: bool = False,
        budget_s: float | None = None,
    ) -> Work[TrainOutcome]:
        """Train the head on every pixel painted on the slide, then save it; a generator.

        Every edited part of the slide counts, not only the visible one. Unpainted pixels are
        ignored. The current head is fine-tuned when it knows every painted class; otherwise
        (no head yet, or a class it lacks was painted) a new head is made for the class table.
        Closing the generator before it finishes changes nothing: the saved head and
        ``self.head`` are replaced only at the end.

        Parameters
        ----------
        steps : int, optional
            Optimisation steps (default from the number of labelled windows).
        seed, lr, batch_size, feature_batch_size
            See :func:`~napari_pathsegdiff.engine.training.train_head.train_head`.
        synthetic : sequence of TrainSample
            Generated pairs (masks of store ids, 0 not labelled, usually of weight below 1) to
            train on as well; their classes count as painted ones for choosing the classes.
        auto : bool
            For a new head, choose the features (the session's, alone or stacked with the
            filter bank) and the head kind by cross-validation over the painted tiles
            (:func:`~napari_pathsegdiff.engine.training.auto_select.auto_train`); the session then uses
            the chosen features. A fine-tune keeps the head's kind and features.
        budget_s : float, optional
            Seconds for ``auto``'s scoring (default
            :data:`~napari_pathsegdiff.engine.training.auto_select.WIDGET_BUDGET_S`).

        Raises
        ------
        AnnotationError
            No pixel is painted, only one class is painted, or a painted id is not in the class
            table. Nothing is changed.
        """
        from ..training.train_head import TrainSample, fcn_settings_for, train_head

        t0 = time.perf_counter()
        extractor = self._require_extractor()
        windows = self.store.edited_windows()
        masks = [self.store.read(*w, which="edits") for w in windows]
        painted: dict[int, int] = {}
        for m in masks:
            ids, n = np.unique(m, return_counts=True)
            for i, k in zip(ids.tolist(), n.tolist()):
                if i:
                    painted[i] = painted.get(i, 0) + k
        table = {c.id: c for c in self.classes}
        if not painted:
            raise AnnotationError(
                "No pixel is painted yet: paint a few strokes of at least two classes with the "
                "brush on the labels layer, then train."
            )
        if len(painted) < 2:
            [only] = painted
            name = table[only].name if only in table else f"id {only}"
            raise AnnotationError(
                f"Only class {name!r} is painted ({painted[only]} px): paint at least one more "
                "class so the head can learn to tell them apart."
            )
        unknown = sorted(set(painted) - set(table))
        if unknown:
            raise AnnotationError(
                f"Painted class id(s) {unknown} are not in the class table: add them as classes "
                "or erase them."
            )
        synthetic = list(synthetic)
        generated = {int(v) for s in synthetic for v in np.unique(s.mask)} - {0}
        unknown = sorted(generated - set(table))
        if unknown:
            raise AnnotationError(
                f"Generated masks hold class id(s) {unknown} that are not in the class table: "
                "generate them again or train without them."
            )
        head = self.head
        head_ids = store_ids_for(head.class_ids) if head is not None else []
        fine_tune = head is not None and set(painted) | generated <= set(head_ids)
        if fine_tune:
            lut, unlabelled = _store_to_head_lut(head.class_ids)
            class_kwargs = {}
        else:
            ids = sorted(table)
            lut, unlabelled = np.arange(256, dtype=np.uint8), 0
            class_kwargs = {"class_ids": ids, "class_names": [table[i].name for i in ids],
                            "class_colors": [table[i].color for i in ids]}
        samples = [
            TrainSample(self.slide, lut[m], Region(self.level, y, x, h, w), name=f"edits at y={y}, x={x}")
            for (y, x, h, w), m in zip(windows, masks)
        ]
        samples += [replace(s, mask=lut[np.asarray(s.mask)]) for s in synthetic]
        note = ""
        if auto and not fine_tune:
            chosen = yield from self._auto_train(samples, extractor, unlabelled=unlabelled, seed=seed,
                                                 budget_s=budget_s, class_kwargs=class_kwargs)
            result, note, self.extractor = chosen.result, chosen.note, chosen.extractor
        else:
            kind = head.head_kind if head is not None else "fcn"
            options = fcn_settings_for(kind, {"steps": steps, "lr": lr, "batch_size": batch_size})
            result = yield from train_head(
                samples, extractor=extractor, head=head if fine_tune else None, unlabelled=unlabelled,
                seed=seed, cache=self.cache, feature_batch_size=feature_batch_size, **options, **class_kwargs,
            )
        trained = result.head
        _apply_class_table(trained, table)
        yield Progress("save", 0, 1, "saving the head")
        summary = dict(result.summary(), painted={str(k): v for k, v in painted.items()},
                       fine_tuned=bool(fine_tune), synthetic=len(synthetic), head=trained.head_kind,
                       features=self.extractor.config(), auto=note or None)
        folder = save_session_head(self.folder, trained, extra={"training.json": summary})
        self.head, self.head_identity = trained, session_head_identity(self.folder)
        return TrainOutcome(result, folder, not fine_tune, painted, len(windows),
                            seconds=time.perf_counter() - t0, synthetic=len(synthetic), note=note)

    def _auto_train(self, samples, extractor, *, unlabelled, seed, budget_s, class_kwargs):
        """``auto`` over the session's features, alone and stacked with the filter bank, x head kinds,
        and the CNN features with a forest."""
        from ..training.auto_select import WIDGET_BUDGET_S, auto_train

        candidates, build = auto_candidates(extractor)
        return (yield from auto_train(
            samples, make_extractor=build, candidates=candidates, unlabelled=unlabelled, seed=seed,
            budget_s=WIDGET_BUDGET_S if budget_s is None else budget_s, cache_for=lambda ex: self.cache,
            **class_kwargs,
        ))

    # --- QuPath annotations in ----------------------------------------------------------------
    def import_annotations(self, path: str | Path) -> Work:
        """Paint the classified areas of a QuPath GeoJSON file as edits of this slide; a generator
        returning an :class:`~napari_pathsegdiff.engine.session.annotation_import.ImportReport`
        (see :func:`~napari_pathsegdiff.engine.session.annotation_import.import_annotations`)."""
        from .annotation_import import import_annotations

        name = Path(self.slide.path).name if self.slide.path else "this slide"
        return (yield from import_annotations(path, store=self.store, slide_size=self.slide.shape,
                                              slide_name=name, on_classes=self.set_classes))

    # --- suggestions --------------------------------------------------------------------------
    def where_to_label_next(self, *, size: int = 512) -> Suggestion:
        """The most uncertain segmented tissue region (``size`` analysis pixels a side) that
        holds no painted pixel.

        Raises
        ------
        AnnotationError
            Nothing was segmented with uncertainty yet, or every such region is painted.
        """
        array = self._uncertainty_array(create=False)
        if array is None:
            raise AnnotationError("Nothing has been segmented with uncertainty yet: segment a region first.")
        b = SUGGESTION_BLOCK
        total, known = uncertainty_blocks(array, self.folder / UNCERTAINTY, block=b)
        if not known.any():
            raise AnnotationError("Nothing has been segmented with uncertainty yet: segment a region first.")
        tissue = self._tissue_blocks(*total.shape, b)
        best = best_window(total, known, tissue, painted_blocks(self.store, block=b),
                           shape=self.level_shape, size=size, block=b)
        if best is None:
            raise AnnotationError(
                "Every segmented tissue region already holds painted pixels: segment another "
                "region (or pan to unsegmented tissue) first."
            )
        y, x, side, score = best
        return Suggestion(Region(self.level, y, x, side, side).clip(self.level_shape), score)

    # --- helpers ------------------------------------------------------------------------------
    def _require_extractor(self):
        if self.extractor is None:
            raise AnnotationError("No features chosen yet: pick a backbone (or classic features) first.")
        return self.extractor

    def _require_head(self):
        if self.head is None:
            raise AnnotationError(
                "There is no trained head yet: paint a few strokes of at least two classes and "
                "press Train, or open a head."
            )
        self._require_extractor()
        return self.head

    @staticmethod
    def _head_to_store(head) -> np.ndarray:
        lut = np.zeros(256, np.uint8)
        lut[head.class_ids] = store_ids_for(head.class_ids)
        return lut

    def _uncertainty_array(self, *, create: bool):
        path = self.folder / UNCERTAINTY
        if path.exists():
            return zarr.open_array(str(path), mode="r+")
        if not create:
            return None
        return zarr.create_array(store=str(path), shape=self.level_shape,
                                 chunks=self.store.prediction.chunks, dtype="uint8", fill_value=0)

    def _tissue_blocks(self, gh: int, gw: int, b: int) -> np.ndarray:
        """Tissue at the centre of every block, from a mask of the coarsest level."""
        from ...core.tissue import tissue_mask

        coarse = len(self.slide.levels) - 1
        if self._tissue is None:
            self._tissue = tissue_mask(np.asarray(self.slide.levels[coarse]))
        mask = self._tissue
        (dy, dx), (cy, cx) = self.slide.downsamples[self.level], self.slide.downsamples[coarse]
        ys = np.clip(((np.arange(gh) + 0.5) * b * dy / cy).astype(int), 0, mask.shape[0] - 1)
        xs = np.clip(((np.arange(gw) + 0.5) * b * dx / cx).astype(int), 0, mask.shape[1] - 1)
        return mask[np.ix_(ys, xs)]


# --- module helpers -------------------------------------------------------------------------
def auto_candidates(extractor):
    """``auto``'s candidates for a session using ``extractor``, and the function building their
    features: the session's features, alone and stacked with the filter bank, x head kinds, and
    the CNN features with a forest."""
    from ...models.features import make_extractor
    from ...models.fused_features import FusedFeatures
    from ..training.auto_select import Candidate

    base = extractor.kind
    stacked = f"{base}+classic" if base not in ("classic", "fused") else None
    names = [stacked, base] if stacked else [base]
    candidates = [Candidate(n, h) for n in names for h in ("fcn", "forest")]
    if base != "cnn":  # the strongest without a backbone on the validation splits
        candidates.append(Candidate("cnn", "forest"))

    def build(name):
        parts = [extractor if p == base else make_extractor(p) for p in name.split("+")]
        return parts[0] if len(parts) == 1 else FusedFeatures(parts)

    return candidates, build


def _open_store(slide: Slide, path: Path, *, extractor, head, classes, analysis_mpp):
    """The label store at ``path`` (created on first use) and its pyramid level."""
    if path.exists():
        try:
            store = LabelStore.open(path)
        except LabelStoreError as exc:
            raise AnnotationError(str(exc)) from exc
        if store.slide_identity != slide.identity:
            raise AnnotationError(
                f"The label store {path} belongs to another slide ({store.slide_identity!r}), "
                f"not to {slide.identity!r} (the slide file was changed or replaced). Move the "
                "folder away or pick another session folder; it was left unchanged."
            )
        level = _level_of(slide, store)
        return store, level
    level = plan_for_labels(slide, analysis_mpp, head.mpp if head is not None else None,
                            extractor.mpp if extractor is not None else None).level
    if classes is None and head is not None:
        ids = store_ids_for(head.class_ids)
        classes = [ClassInfo(i, n, c) for i, n, c in zip(ids, head.class_names, head.class_colors)]
    path.parent.mkdir(parents=True, exist_ok=True)
    store = LabelStore.create(
        path,
        shape=tuple(int(s) for s in slide.levels[level].shape[:2]),
        mpp=slide.level_mpp(level),
        downsample=slide.downsamples[level],
        slide_identity=slide.identity,
        classes=list(classes or []),
    )
    return store, level


def _group_windows(windows, block: int) -> list[tuple[int, int, int, int]]:
    """Bounding boxes ``(y, x, h, w)`` of ``windows`` grouped by the ``block`` they start in."""
    groups: dict[tuple[int, int], list[int]] = {}
    for y, x, h, w in windows:
        g = groups.setdefault((y // block, x // block), [y, x, y + h, x + w])
        g[:] = [min(g[0], y), min(g[1], x), max(g[2], y + h), max(g[3], x + w)]
    return [(y0, x0, y1 - y0, x1 - x0) for y0, x0, y1, x1 in (groups[k] for k in sorted(groups))]


def _as_stage(work, stage: str, done: int, total: int, what: str):
    """Run ``work``, reporting its progress as step ``done`` of ``total`` of ``stage``."""
    while True:
        try:
            record = next(work)
        except StopIteration as stop:
            return stop.value
        inner = f" ({record.done}/{record.total} tiles)" if record.total else ""
        yield Progress(stage, done, total, what + inner)


def _level_of(slide: Slide, store: LabelStore) -> int:
    for level, lv in enumerate(slide.levels):
        if tuple(int(s) for s in lv.shape[:2]) == store.shape:
            return level
    raise AnnotationError(
        f"The label store {store.path} has shape {store.shape}, which is no pyramid level of the "
        "slide: move it away or pick another session folder."
    )


def _store_to_head_lut(head_ids: Sequence[int]) -> tuple[np.ndarray, int]:
    """Store id → head id, and the head-space value of "not labelled" (an id the head lacks)."""
    head_ids = [int(i) for i in head_ids]
    unlabelled = 0 if 0 not in head_ids else max(set(range(256)) - set(head_ids))
    lut = np.full(256, unlabelled, np.uint8)
    lut[store_ids_for(head_ids)] = head_ids
    return lut, unlabelled


def _apply_class_table(head, table: dict[int, ClassInfo]) -> None:
    """Give the head the table's names and colours for the classes the table knows."""
    names, colors = head.class_names, head.class_colors
    for k, i in enumerate(store_ids_for(head.class_ids)):
        if i in table:
            names[k], colors[k] = table[i].name, table[i].color
    head.register_to_config(class_names=names, class_colors=colors)
