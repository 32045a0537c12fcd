"""Benchmark of features x heads (x test-time augmentation, ensembles) on the validation splits.

Usage::

    python scripts/bench_heads.py [--datasets glas gleason monuseg miccai2015]
                                  [--candidates NAME ...] [--subsets 1 3 all]
                                  [--out benchmarks/heads.md] [--state FILE.json] [--quick]

Every candidate is a feature kind (``--features``), a head kind (``--head``) with its settings,
and prediction options (``tta``: dihedral test-time augmentation; ``seeds``: an ensemble of
heads trained with several seeds whose probabilities are averaged). On the fixed splits of
``core.splits`` (GlaS 7/3, Gleason 3/2, MoNuSeg 24/6, MICCAI 2015 10/5), heads are trained on
1, 3 and all training images (nested subsets, as ``bench_backbone.py``) and scored on the
validation images: Dice per class, mean Dice and mIoU with pixels pooled over the validation
images (background left out of the means), the head's training time (features excluded: they
are gathered once per feature kind and subset and shared by every head) and the head's predict
time per megapixel from cached features.

``ilastik`` is the peers' baseline: the filter bank (Gaussian, gradient, Hessian at sigma 1-16)
with a random forest of 100 trees grown to purity, as ilastik, QuPath and napari-apoc do.

Results go to ``--state`` (JSON) after every head, so a killed run resumes where it stopped;
the Markdown table is printed and written to ``--out``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
STATE = Path.home() / ".cache" / "napari-pathsegdiff" / "bench_heads.json"


def _bench_backbone():
    spec = importlib.util.spec_from_file_location("bench_backbone", ROOT / "scripts" / "bench_backbone.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_backbone"] = module
    spec.loader.exec_module(module)
    return module


BB = _bench_backbone()

#: The ilastik-style forest: 100 trees grown to purity on the filter bank.
ILASTIK = {"algorithm": "random_forest", "n_estimators": 100, "max_depth": 64, "min_samples_leaf": 1,
           "context_sigmas": []}

#: name -> (features, head, fit settings, prediction options)
CANDIDATES = {
    "ilastik": ("classic", "forest", ILASTIK, {}),
    "classic/fcn": ("classic", "fcn", {}, {}),
    "classic/forest": ("classic", "forest", {}, {}),
    "classic/forest 64t s1 noctx": ("classic", "forest", {"n_estimators": 64, "predict_stride": 1, "context_sigmas": []}, {}),
    "diffusion/fcn": ("diffusion", "fcn", {}, {}),
    "diffusion/forest": ("diffusion", "forest", {}, {}),
    "diffusion+classic/fcn": ("diffusion+classic", "fcn", {}, {}),
    "diffusion+classic/forest": ("diffusion+classic", "forest", {}, {}),
    "diffusion+classic/forest 64t s1 noctx": ("diffusion+classic", "forest",
                                              {"n_estimators": 64, "predict_stride": 1, "context_sigmas": []}, {}),
    "diffusion+classic/forest 64t s1": ("diffusion+classic", "forest", {"n_estimators": 64, "predict_stride": 1}, {}),
    "diffusion+classic/forest 64t noctx": ("diffusion+classic", "forest", {"n_estimators": 64, "context_sigmas": []}, {}),
    "cnn/fcn": ("cnn", "fcn", {}, {}),
    "cnn/forest": ("cnn", "forest", {}, {}),
    "classic+cnn/ensemble": ("classic+cnn", "ensemble", {}, {}),
    "cnn+classic/forest": ("cnn+classic", "forest", {}, {}),
    "diffusion+cnn/forest": ("diffusion+cnn", "forest", {}, {}),
    "cnn/forest tta8": ("cnn", "forest", {}, {"tta": 8}),
    "classic/fcn tta8": ("classic", "fcn", {}, {"tta": 8}),
    "classic/forest tta8": ("classic", "forest", {}, {"tta": 8}),
    "cnn/forest x3": ("cnn", "forest", {}, {"seeds": 3}),
    "diffusion+classic/fcn tta8": ("diffusion+classic", "fcn", {}, {"tta": 8}),
    "diffusion+classic/forest tta8": ("diffusion+classic", "forest", {}, {"tta": 8}),
    "diffusion+classic/fcn x3": ("diffusion+classic", "fcn", {}, {"seeds": 3}),
    "classic/fcn x3": ("classic", "fcn", {}, {"seeds": 3}),
}
MAIN = tuple(k for k in CANDIDATES if "tta" not in k and "x3" not in k)
#: The default of ``pathsegdiff train``: features and head chosen by cross-validation.
AUTO = "auto (default)"


def candidate_groups(names):
    """Candidates grouped by feature kind, in first-seen order: ``{features: [name, ...]}``."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(CANDIDATES[name][0], []).append(name)
    return groups


def fit(labelled, head_kind: str, settings: dict, *, seeds: int):
    """Heads (one per seed) fitted on gathered tiles, and the mean fit time in seconds."""
    from napari_pathsegdiff.core.progress import drive
    from napari_pathsegdiff.engine.training.train_head import fit_head

    heads, seconds = [], []
    for seed in range(seeds):
        t0 = time.perf_counter()
        result = drive(fit_head(labelled, kind=head_kind, seed=seed, threads=2 if head_kind == "forest" else 1,
                                **settings), show=False)
        seconds.append(time.perf_counter() - t0)
        heads.append(result.head)
    return heads, float(np.mean(seconds))


def predict(item, heads, extractor, *, cache, mpp, tta: int):
    """Labels of one validation item (probabilities averaged over the heads) and the seconds."""
    from napari_pathsegdiff.core.progress import drive
    from napari_pathsegdiff.engine.inference.predict import predict_region

    t0 = time.perf_counter()
    total = None
    for head in heads:
        pred = drive(predict_region(item.slide, head=head, extractor=extractor, cache=cache, mpp=mpp,
                                    return_probabilities=len(heads) > 1, tta=tta), show=False)
        if len(heads) == 1:
            return pred.labels, time.perf_counter() - t0
        p = pred.probabilities.astype(np.float32)
        total = p if total is None else total + p
    return heads[0].decode_indices(total.argmax(0)), time.perf_counter() - t0


def run_feature(spec, features: str, names: list[str], train, val, *, subsets, state, save, log):
    """Every candidate of one feature kind on one dataset, for every subset."""
    from napari_pathsegdiff.core.feature_cache import FeatureCache
    from napari_pathsegdiff.core.metrics import evaluate
    from napari_pathsegdiff.core.progress import drive
    from napari_pathsegdiff.engine.training.train_head import TrainSample, gather_labelled_tiles
    from napari_pathsegdiff.models.features import make_extractor

    todo = [(n, k) for k in subsets for n in names if k not in state.get(n, {}).get(spec.key, {})]
    if not todo:
        return
    extractor = make_extractor(features)
    cache = FeatureCache(6 * 2**30)
    by_name = {it.name: it for it in train}
    members_of = BB.label_subsets(by_name)
    classes = sorted({int(c) for it in train for c in np.unique(it.mask)})
    class_names = [spec.class_names.get(c, f"class {c}") for c in classes]
    val_mp = sum(it.mask.size for it in val) / 1e6
    for key in subsets:
        pending = [n for n, k in todo if k == key]
        if not pending:
            continue
        samples = [TrainSample(by_name[n].slide, by_name[n].mask, name=n, mpp=spec.mpp) for n in members_of[key]]
        t0 = time.perf_counter()
        labelled = drive(gather_labelled_tiles(samples, extractor=extractor, class_ids=classes,
                                               class_names=class_names, cache=cache), show=False)
        gather_s = time.perf_counter() - t0
        for name in pending:
            _, head_kind, settings, options = CANDIDATES[name]
            heads, fit_s = fit(labelled, head_kind, settings, seeds=int(options.get("seeds", 1)))
            triples, predict_s = [], 0.0
            for it in val:
                if options.get("tta", 1) == 1 and len(heads) == 1:  # warm the cache: time the head alone
                    predict(it, heads, extractor, cache=cache, mpp=spec.mpp, tta=1)
                labels, s = predict(it, heads, extractor, cache=cache, mpp=spec.mpp, tta=int(options.get("tta", 1)))
                predict_s += s
                triples.append((it.name, labels, it.mask))
            scores = evaluate(triples)
            entry = {
                "train_images": members_of[key], "features_s": round(gather_s, 1), "fit_s": round(fit_s, 2),
                "predict_s_per_mp": round(predict_s / val_mp, 3),
                "predict_note": "from cached features" if options.get("tta", 1) == 1 else "with TTA features",
                **{k: scores[k] for k in ("mean_dice", "mean_iou", "classes_in_mean", "mean_dice_per_image")},
                "per_class": {int(c): {"dice": v["dice"], "iou": v["iou"]} for c, v in scores["per_class"].items()},
            }
            state.setdefault(name, {}).setdefault(spec.key, {})[key] = entry
            save()
            log(f"  {spec.key:10s} {key:>3s} img  {name:32s} dice {_f(entry['mean_dice'])}  "
                f"fit {entry['fit_s']:.1f} s  predict {entry['predict_s_per_mp']:.2f} s/MP")
        del labelled


def _f(x) -> str:
    return "  –  " if x is None else f"{x:.3f}"


def run_auto(spec, train, val, *, subsets, state, save, log, budget_s: float):
    """``auto`` as ``pathsegdiff train`` runs it: candidates scored on the training images only."""
    from napari_pathsegdiff.core.feature_cache import FeatureCache
    from napari_pathsegdiff.core.metrics import evaluate
    from napari_pathsegdiff.core.progress import drive
    from napari_pathsegdiff.engine.training.auto_select import auto_train
    from napari_pathsegdiff.engine.training.train_head import TrainSample
    from napari_pathsegdiff.models.features import make_extractor

    by_name = {it.name: it for it in train}
    members_of = BB.label_subsets(by_name)
    classes = sorted({int(c) for it in train for c in np.unique(it.mask)})
    class_names = [spec.class_names.get(c, f"class {c}") for c in classes]
    shared = FeatureCache(3 * 2**30)  # one budget for every candidate's features (keys hold the identity)
    for key in subsets:
        if key in state.get(AUTO, {}).get(spec.key, {}):
            continue
        samples = [TrainSample(by_name[n].slide, by_name[n].mask, name=n, mpp=spec.mpp) for n in members_of[key]]
        t0 = time.perf_counter()
        out = drive(auto_train(samples, make_extractor=make_extractor, budget_s=budget_s, class_ids=classes,
                               class_names=class_names,
                               cache_for=lambda ex: shared),
                    show=False)
        train_s = time.perf_counter() - t0
        triples = [(it.name, predict(it, [out.result.head], out.extractor, cache=shared, mpp=spec.mpp, tta=1)[0], it.mask)
                   for it in val]
        scores = evaluate(triples)
        entry = {"train_images": members_of[key], "auto_s": round(train_s, 1), "auto": out.record(),
                 **{k: scores[k] for k in ("mean_dice", "mean_iou", "classes_in_mean", "mean_dice_per_image")},
                 "per_class": {int(c): {"dice": v["dice"], "iou": v["iou"]} for c, v in scores["per_class"].items()}}
        state.setdefault(AUTO, {}).setdefault(spec.key, {})[key] = entry
        save()
        log(f"  {spec.key:10s} {key:>3s} img  {AUTO:32s} dice {_f(entry['mean_dice'])}  {out.note}  ({train_s:.0f} s)")


def auto_lines(state: dict, datasets) -> str:
    """What auto chose per dataset and subset, with its cross-validated scores."""
    lines = []
    for d in datasets:
        for key, e in sorted((state.get(AUTO, {}).get(d) or {}).items()):
            scored = ", ".join(f"{c['name']} {c['cv_dice']:.3f}" for c in e["auto"]["candidates"] if c["cv_dice"] is not None)
            lines.append(f"- {BB.DATASETS[d].title}, {key} image(s): {e['auto']['note']}; validation mean Dice "
                         f"{_f(e['mean_dice']).strip()} ({e['auto_s']:.0f} s in all; CV: {scored or 'none'}).")
    return "\n".join(lines)


def markdown(state: dict, *, datasets, names) -> str:
    """One table: per dataset, mean Dice on all / 3 / 1 images, mIoU, fit s and predict s/MP."""
    header = ["candidate (features / head)"]
    for d in datasets:
        t = BB.DATASETS[d].title
        header += [f"{t} mean Dice all / 3 / 1 img", f"{t} Dice per class (all)", f"{t} mIoU",
                   f"{t} fit s", f"{t} predict s/MP"]
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    best = {d: max((state.get(n, {}).get(d, {}).get("all", {}).get("mean_dice") or -1 for n in names), default=-1)
            for d in datasets}
    for n in names:
        row = [n]
        for d in datasets:
            e = state.get(n, {}).get(d, {})
            a = e.get("all", {})
            mean = a.get("mean_dice")
            cell = " / ".join(_f(e.get(k, {}).get("mean_dice")).strip() for k in ("all", "3", "1"))
            if mean is not None and mean == best[d]:
                cell = "**" + cell.split(" / ", 1)[0] + "**" + (" / " + cell.split(" / ", 1)[1] if " / " in cell else "")
            spec = BB.DATASETS[d]
            per = a.get("per_class") or {}
            classes = a.get("classes_in_mean") or []
            per_text = " ".join(f"{spec.class_names.get(int(c), c)} {_f((per.get(str(c)) or per.get(c) or {}).get('dice')).strip()}"
                                for c in classes) if len(classes) > 1 else "–"
            row += [cell, per_text, _f(a.get("mean_iou")).strip(),
                    "–" if "fit_s" not in a else f"{a['fit_s']:.1f}",
                    "–" if "predict_s_per_mp" not in a else f"{a['predict_s_per_mp']:.2f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--datasets", nargs="+", default=["glas", "gleason", "monuseg", "miccai2015"],
                        choices=list(BB.DATASETS))
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--subsets", nargs="+", default=["all", "3", "1"], choices=["1", "3", "all"])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "heads.md")
    parser.add_argument("--state", type=Path, default=STATE)
    parser.add_argument("--quick", action="store_true", help="GlaS only, 2 training and 1 validation image")
    parser.add_argument("--auto", action="store_true", help="also run auto (the default of `pathsegdiff train`)")
    parser.add_argument("--budget", type=float, default=900.0, help="auto's budget in seconds (default 900)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--table-only", action="store_true", help="write the table of what --state holds, run nothing")
    parser.add_argument("--merge", type=Path, nargs="*", default=[],
                        help="results of runs with other --state files to merge in (runs side by side)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    state = json.loads(args.state.read_text()) if args.state.is_file() else {}
    for other in args.merge:
        for name, by_set in json.loads(other.read_text()).items():
            for d, by_subset in by_set.items():
                state.setdefault(name, {}).setdefault(d, {}).update(by_subset)

    def save():
        args.state.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.state.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, args.state)

    def log(msg):
        print(msg, flush=True)

    datasets = ["glas"] if args.quick else args.datasets
    for d in [] if args.table_only else datasets:
        spec = BB.DATASETS[d]
        train, val = BB.load_dataset(args.data, spec, max_train=2 if args.quick else None,
                                     max_val=1 if args.quick else None)
        log(f"{spec.title}: {len(train)} training, {len(val)} validation images")
        for features, names in candidate_groups(args.candidates).items():
            run_feature(spec, features, names, train, val, subsets=args.subsets, state=state, save=save, log=log)
        if args.auto:
            run_auto(spec, train, val, subsets=args.subsets, state=state, save=save, log=log, budget_s=args.budget)
    if args.table_only:
        save()
    names = list(args.candidates) + ([AUTO] if args.auto else [])
    table = markdown(state, datasets=datasets, names=names)
    if args.auto:
        table += "\n\n" + auto_lines(state, datasets)
    head = (f"Measured {date.today().isoformat()} on {platform.machine()} with {os.cpu_count()} CPU cores, "
            f"`python scripts/bench_heads.py{' --quick' if args.quick else ''}`.\n\n")
    text = head + table + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(BB.public_text(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
