"""Fit an ``ensemble`` head: each part of the fused features gets its own head, fitted as usual.

The labelled tiles are gathered once with the fused features; each member is fitted on the
same tiles and labels with only its part's maps (:func:`part_tiles`), by its kind's own fit.
A member fitted from an earlier ensemble is fine-tuned or grown anew as that kind does.
"""

from __future__ import annotations

import time
from dataclasses import replace

from ...core.progress import Work
from ...models.heads.ensemble import EnsembleHead, new_ensemble_head
from .train_head import LabelledTiles, TrainResult, fit_head

#: Members of a new ensemble: an FCN on each part (BENCHMARKS.md, "Ensembles").
DEFAULT_MEMBER = "fcn"


def fit_ensemble(
    labelled: LabelledTiles,
    *,
    head: EnsembleHead | None = None,
    seed: int = 0,
    threads: int | None = 1,
    members: list[str] | None = None,
    member_settings: dict[str, dict] | None = None,
) -> Work[TrainResult]:
    """Fit one head per part of ``labelled``'s fused features; yields each member's progress.

    Parameters
    ----------
    labelled : LabelledTiles
        Gathered with fused features (``classic+cnn``, ...).
    head : EnsembleHead, optional
        Start from its members (same kinds, classes and settings); it is never changed.
    seed : int
        Seed of member ``k`` is ``seed + k``.
    threads : int or None
        CPU threads of each fit.
    members : list of str, optional
        Head kind of each part's member; default an FCN for every part.
    member_settings : dict, optional
        Settings of the members' fits by head kind, e.g. ``{"fcn": {"steps": 200}}``.
    """
    t0 = time.perf_counter()
    extractor = labelled.extractor
    parts = list(getattr(extractor, "parts", None) or [])
    if head is not None:
        kinds = list(head.config.member_kinds)
        if members is not None and list(members) != kinds:
            raise ValueError(f"The ensemble to start from has members {kinds}, not {list(members)}.")
        template = head
    else:
        kinds = list(members) if members is not None else [DEFAULT_MEMBER] * len(parts)
        template = new_ensemble_head(extractor, labelled.classes, member_kinds=kinds,
                                     class_names=labelled.class_names, class_colors=labelled.class_colors,
                                     mpp=labelled.mpp)
    fitted, results = [], []
    for k, kind in enumerate(kinds):
        start = head.members[k] if head is not None else None
        result = yield from fit_head(part_tiles(labelled, template, k), kind=kind, head=start, seed=seed + k,
                                     threads=threads, **(member_settings or {}).get(kind, {}))
        fitted.append(result.head)
        results.append(result)
    ensemble = EnsembleHead.from_config(dict(template.config))
    ensemble.set_members(fitted)
    return TrainResult(
        head=ensemble,
        steps=sum(r.steps for r in results),
        class_pixels=results[0].class_pixels,
        windows=results[0].windows,
        seconds=time.perf_counter() - t0,
    )


def part_tiles(labelled: LabelledTiles, ensemble: EnsembleHead, k: int) -> LabelledTiles:
    """The labelled tiles with only the maps of part ``k`` (and that part as the extractor)."""
    span = ensemble.member_maps(k)
    return replace(labelled, extractor=labelled.extractor.parts[k], feats=[f[span] for f in labelled.feats])
