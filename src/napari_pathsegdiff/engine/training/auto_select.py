"""``auto``: choose features and head by cross-validation on the user's own labels, then train it.

Candidates (features x head) are scored in order, within a time budget, by grouped
cross-validation: the labelled tiles are split by image when there are two images or more
(the command line), otherwise by tile, which is how painted regions fall apart in the widget.
Each fold trains the candidate's head on the other groups and scores it on the labelled
pixels of its own group (Dice pooled over the folds, background left out of the mean as in
the benchmarks). The best candidate is then trained on everything.

Features are gathered once per feature kind and shared by the candidates that use it. When
there is only one group, or the budget runs out before a candidate is scored, ``auto`` trains
the first candidate and says so in :attr:`AutoResult.note`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ...core.metrics import confusion_matrix, scores
from ...core.progress import Progress, Work
from .train_head import LabelledTiles, TrainResult, fit_head, gather_labelled_tiles


@dataclass(frozen=True)
class Candidate:
    """One configuration ``auto`` may choose: ``--features`` kind, ``--head`` kind, head settings."""

    features: str
    head: str
    settings: tuple[tuple[str, object], ...] = ()

    @property
    def name(self) -> str:
        extra = "".join(f" {k}={v}" for k, v in self.settings)
        return f"{self.features} / {self.head}{extra}"

    def options(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.settings}


#: The candidates of ``auto``, in order of preference (the first is the fallback): the
#: strongest on the validation splits first, since the budget may stop the list (BENCHMARKS.md,
#: "Features x heads"). The ensemble of an FCN on the filter bank and one on the CNN features
#: comes first: on all four validation sets it beats the peers' baseline. The FCN on stacked
#: diffusion + filter-bank maps is left out: it trains at full resolution, about 20x slower,
#: and scored lower on GlaS.
DEFAULT_CANDIDATES = (
    Candidate("classic+cnn", "ensemble"),
    Candidate("cnn", "forest"),
    Candidate("classic", "forest"),
    Candidate("classic", "fcn"),
    Candidate("diffusion", "fcn"),
    Candidate("diffusion+classic", "forest"),
)
#: Budgets (seconds) of ``pathsegdiff train`` and of the widget's *Train on my edits*.
CLI_BUDGET_S = 900.0
WIDGET_BUDGET_S = 30.0


@dataclass
class AutoResult:
    """What :func:`auto_train` returns.

    Attributes
    ----------
    result : TrainResult
        The chosen candidate trained on all labelled tiles.
    extractor : FeatureExtractor
        Its features.
    chosen : Candidate
        The chosen candidate.
    candidates : list of dict
        Every candidate: ``name``, ``features``, ``head``, ``cv_dice`` (None when not scored),
        ``seconds`` and ``status`` (``"scored"``, ``"skipped: budget"``, ``"failed: ..."``).
    grouping : str
        ``"image"`` or ``"tile"``; ``folds``: number of folds.
    note : str
        One line for the user: the choice, or what ``auto`` fell back to and why.
    """

    result: TrainResult
    extractor: object
    chosen: Candidate
    candidates: list[dict] = field(default_factory=list)
    grouping: str = "image"
    folds: int = 0
    note: str = ""

    def record(self) -> dict:
        """JSON-ready record of the choice (for ``training.json``)."""
        return {"chosen": {"features": self.chosen.features, "head": self.chosen.head,
                           "settings": self.chosen.options()},
                "grouping": self.grouping, "folds": self.folds, "note": self.note,
                "candidates": self.candidates}


def auto_train(
    samples,
    *,
    make_extractor,
    candidates=DEFAULT_CANDIDATES,
    budget_s: float = CLI_BUDGET_S,
    folds: int = 3,
    class_ids=None,
    class_names=None,
    class_colors=None,
    unlabelled: int | None = None,
    seed: int = 0,
    cache_for=None,
    threads: int | None = 1,
) -> Work[AutoResult]:
    """Score the candidates by grouped cross-validation within ``budget_s``, train the best.

    Parameters
    ----------
    samples : list of TrainSample
        The labelled images or regions.
    make_extractor : callable
        ``make_extractor(features: str) -> FeatureExtractor``.
    candidates : sequence of Candidate
        In order of preference: the first is the fallback.
    budget_s : float
        Seconds for scoring; a candidate starts only while time is left.
    folds : int
        Most folds of the cross-validation (groups are dealt round-robin into folds).
    class_ids, class_names, class_colors, unlabelled, seed, threads
        As :func:`~napari_pathsegdiff.engine.training.train_head.train_head`.
    cache_for : callable, optional
        ``cache_for(extractor) -> FeatureCache`` for the features of each kind.

    Raises
    ------
    ValueError
        No candidate, a budget that is not positive, or labels of one class only.
    """
    candidates = list(candidates)
    if not candidates:
        raise ValueError("auto needs at least one candidate (features x head).")
    if not budget_s > 0:
        raise ValueError(f"The auto budget must be a positive number of seconds, got {budget_s}.")
    t_start = time.perf_counter()
    gathered: dict[str, LabelledTiles] = {}
    extractors: dict[str, object] = {}

    def gather(features: str) -> Work[LabelledTiles]:
        if features not in gathered:
            extractor = extractors[features] = make_extractor(features)
            gathered[features] = yield from gather_labelled_tiles(
                samples, extractor=extractor, class_ids=class_ids, class_names=class_names,
                class_colors=class_colors, unlabelled=unlabelled,
                cache=cache_for(extractor) if cache_for else None,
            )
        return gathered[features]

    # 1. labels and the first candidate's features; the class check
    first = yield from gather(candidates[0].features)
    if (first.class_counts() > 0).sum() < 2:
        present = [first.classes[i] for i in np.flatnonzero(first.class_counts())]
        raise ValueError(f"Only class {present} has labelled pixels: label at least two classes to train a head.")
    grouping, groups = _groups(first)
    n_folds = min(int(folds), len(set(groups)))
    del first  # the tiles stay in ``gathered`` while a candidate needs them

    # 2. score candidates while the budget lasts
    records: list[dict] = []
    for i, cand in enumerate(candidates):
        elapsed = time.perf_counter() - t_start
        entry = {"name": cand.name, "features": cand.features, "head": cand.head, "cv_dice": None,
                 "seconds": 0.0, "status": "skipped: budget"}
        records.append(entry)
        if n_folds < 2 or elapsed >= budget_s:
            if n_folds < 2:
                entry["status"] = "skipped: one group"
            continue
        yield Progress("auto", i, len(candidates), f"scoring {cand.name}")
        t0 = time.perf_counter()
        try:
            labelled = yield from gather(cand.features)
            entry["cv_dice"] = _cross_validate(labelled, _groups(labelled)[1], n_folds, cand, seed=seed,
                                               threads=threads)
            entry["status"] = "scored" if entry["cv_dice"] is not None else "failed: no fold could be scored"
        except ValueError as exc:
            entry["status"] = f"failed: {exc}"
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        labelled = None
        best = _best_scored(records)
        _release_features(gathered, keep={c.features for c in candidates[i + 1:]}
                          | ({candidates[best].features} if best is not None else set()))
    yield Progress("auto", len(candidates), len(candidates), "scored")

    # 3. the best (or the fallback) trained on everything
    best = _best_scored(records)
    if best is not None:
        chosen = candidates[best]
        n_scored = sum(r["cv_dice"] is not None for r in records)
        note = (f"auto chose {chosen.name}: cross-validated Dice {records[best]['cv_dice']:.3f} "
                f"({n_folds} folds by {grouping}, {n_scored} of {len(candidates)} candidates scored)")
    else:
        chosen = candidates[0]
        why = ("only one labelled " + grouping) if n_folds < 2 else f"the budget of {budget_s:g} s ran out"
        note = f"auto fell back to {chosen.name} without cross-validation: {why}"
    labelled = yield from gather(chosen.features)
    result = yield from fit_head(labelled, kind=chosen.head, seed=seed, threads=threads, **chosen.options())
    return AutoResult(result=result, extractor=extractors[chosen.features], chosen=chosen, candidates=records,
                      grouping=grouping, folds=n_folds, note=note)


def _best_scored(records: list[dict]) -> int | None:
    """Index of the best cross-validated score so far, the earliest of equals (None: no score)."""
    scored = [(r["cv_dice"], -k) for k, r in enumerate(records) if r["cv_dice"] is not None]
    return -max(scored)[1] if scored else None


def _release_features(gathered: dict, *, keep: set[str]) -> None:
    """Drop the gathered tiles of features that neither a later candidate nor the best so far
    needs: on large label sets every kind's features at once would not fit in memory."""
    for features in [f for f in gathered if f not in keep]:
        del gathered[features]


def _groups(labelled: LabelledTiles) -> tuple[str, list[int]]:
    """Group of every tile: its slide or image when there are two or more, else the tile itself
    (given groups, the slides of a project, are negative: ``train_head._group_of``)."""
    if len(set(labelled.sources)) >= 2:
        return ("slide" if min(labelled.sources) < 0 else "image"), list(labelled.sources)
    return "tile", list(range(len(labelled.labels)))


def _cross_validate(labelled: LabelledTiles, groups: list[int], n_folds: int, cand: Candidate, *,
                    seed: int, threads) -> float | None:
    """Pooled mean Dice over the folds (groups dealt round-robin in a seeded order)."""
    from ...core.progress import drive

    distinct = sorted(set(groups))
    order = np.random.default_rng(seed).permutation(len(distinct))
    fold_of = {distinct[j]: k % n_folds for k, j in enumerate(order)}
    tile_fold = np.array([fold_of[g] for g in groups])
    total = np.zeros((256, 256), np.int64)
    ids = np.asarray(labelled.classes, dtype=np.int64)
    for f in range(n_folds):
        train, test = np.flatnonzero(tile_fold != f), np.flatnonzero(tile_fold == f)
        part = labelled.subset(train)
        if len(test) == 0 or (part.class_counts() > 0).sum() < 2:
            continue
        result = drive(fit_head(part, kind=cand.head, seed=seed, threads=threads, **cand.options()), show=False)
        for t in test:
            lab = labelled.labels[t]
            maps = [_tensor(m) for m in labelled.feats[t]]
            pred = result.head.predict_proba(maps)[0].argmax(0).cpu().numpy()
            keep = lab >= 0
            total += confusion_matrix(ids[pred[keep]], ids[lab[keep]])
    return scores(total)["mean_dice"] if total.sum() else None


def _tensor(m):
    import torch

    return torch.from_numpy(np.asarray(m))[None]
