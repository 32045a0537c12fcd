"""``pathsegdiff train --slides``: one head from the labels of several whole slides.

Each slide's labels are its QuPath GeoJSON (``--annotations``, paired with the slides by order,
rasterised in memory at the analysis level: the slides' session folders are not touched), or
else the edits painted on it in napari (its session folder). Classes are matched by name over
all slides; labelled pixels are sampled fairly between slides
(:mod:`~napari_pathsegdiff.engine.training.slide_labels`).
"""

from __future__ import annotations

import time
from pathlib import Path

#: Sampling of the command line (larger than the widget's: nobody waits at a brush).
CLI_MAX_PIXELS = 1_000_000
CLI_MAX_WINDOWS = 400


def run_slides(args) -> int:
    """Train on ``args.slides`` (with ``args.annotations``); save to ``args.out``."""
    from ..core.progress import drive
    from ..engine.session.slides_training import train_on_slides
    from ..models.features import feature_kind
    from ..models.heads import save_head
    from . import UserError

    if args.images or args.masks:
        raise UserError("Give either --images and --masks, or --slides (with --annotations), not both.")
    if args.annotations and len(args.annotations) != len(args.slides):
        raise UserError(f"--annotations gives {len(args.annotations)} files for {len(args.slides)} slides: "
                        "give one GeoJSON per slide, in the same order.")
    if args.class_names:
        raise UserError("--class-names applies to --masks; with --slides the classes are the annotations' names.")
    if args.synthetic:
        raise UserError("--synthetic applies to --images/--masks, not yet to --slides.")
    start = time.time()
    head, extractor, init_mpp = _init(args)
    target_mpp = init_mpp or (extractor.mpp if extractor is not None else None)
    slides, imports = _painted_slides(args, target_mpp)
    options = {"max_pixels": args.sample_pixels, "max_windows": args.sample_windows, "seed": args.seed}
    if head is None and extractor is None:  # auto
        from .train import _auto_candidates, _extractor

        options.update(make_extractor=lambda f: _extractor(args, f), candidates=_auto_candidates(args),
                       budget_s=args.budget if args.budget is not None else _cli_budget())
    elif head is None and args.head_kind == "fcn":
        from .train import _fcn_options

        options.update(_fcn_options(args))
    outcome = drive(train_on_slides(slides, extractor=extractor, head=head,
                                    head_kind=args.head_kind if args.head_kind != "auto" else None, **options))
    result = outcome.result
    record = {
        "slides": [str(Path(s)) for s in args.slides],
        "annotations": [str(Path(a)) for a in args.annotations] if args.annotations else None,
        "imports": imports,
        "head": result.head.head_kind,
        "features": outcome.extractor.config(),
        "feature_identity": outcome.extractor.identity,
        "init": str(args.init) if args.init else None,
        "seed": args.seed,
        "sampling": {"max_pixels": args.sample_pixels, "max_windows": args.sample_windows},
        **outcome.summary(),
        "wall_seconds": round(time.time() - start, 2),
    }
    out = save_head(result.head, args.out, extra={"training.json": record})
    if outcome.auto is not None:
        for c in outcome.auto.candidates:
            score = "  –  " if c["cv_dice"] is None else f"{c['cv_dice']:.3f}"
            print(f"  {c['name']:32s} CV Dice {score}  {c['seconds']:7.1f} s  {c['status']}")
        print(outcome.note)
    names = {c.id: c.name for c in outcome.classes}
    for c in outcome.counts:
        per_class = ", ".join(f"{names[i]} {n}" for i, n in sorted(c.painted.items()))
        print(f"  {c.name}: {sum(c.painted.values())} labelled px ({per_class}); trained on {c.used} px "
              f"of {c.windows_used}/{c.windows} chunks")
    print(f"Trained a {result.head.head_kind} head on {feature_kind(outcome.extractor.config())} features for "
          f"classes {result.head.describe_classes()} from {len(slides)} slides"
          + (" (fine-tuned)" if outcome.fine_tuned else "") + f"; saved to {out}")
    return 0


def _cli_budget() -> float:
    from ..engine.training.auto_select import CLI_BUDGET_S

    return CLI_BUDGET_S


def _init(args):
    """(head to fine-tune or None, extractor or None for auto, µm/px the head was trained at)."""
    from .train import _extractor

    if args.init:
        from ..models.heads import load_head_and_extractor

        head, extractor = load_head_and_extractor(args.init, backbone=args.backbone, device=args.device)
        return head, extractor, head.mpp
    if "auto" in (args.features or "auto", args.head_kind or "auto"):
        return None, None, None  # auto over the candidates that match what was given
    return None, _extractor(args, args.features), None


def _painted_slides(args, target_mpp):
    """A ``PaintedSlide`` per slide (annotations rasterised, or the slide's session edits)."""
    from ..core.geojson_read import read_annotations
    from ..core.label_canvas import LabelCanvas
    from ..core.scale_plan import plan_for_labels
    from ..core.progress import drive
    from ..core.slide import open_slide
    from ..engine.session.annotation_import import ImportReport, check_extent, paint_annotations
    from ..engine.session.class_presets import next_class
    from ..engine.training.slide_labels import class_ids_for
    from ..engine.session.project import painted_slide
    from ..engine.training.slide_labels import PaintedSlide
    from . import UserError

    slides, imports, table = [], [], []
    for index, path in enumerate(args.slides):
        slide = open_slide(path)
        if slide.mpp is None and args.mpp is not None:
            slide = slide.with_mpp(args.mpp, "given (--mpp)")
        if not args.annotations:
            found = painted_slide(slide)
            if found is None:
                raise UserError(f"{path} has no painted annotations (no session folder): give its QuPath "
                                "GeoJSON with --annotations, or paint it in napari first.")
            slides.append(found)
            continue
        level = plan_for_labels(slide, target_mpp).level
        shape = tuple(int(s) for s in slide.levels[level].shape[:2])
        read = read_annotations(args.annotations[index])
        check_extent(read, slide.shape, slide_name=Path(path).name)
        ids, new = class_ids_for(read.class_colors(), table, new_class=next_class)
        table += new
        canvas = LabelCanvas(shape)
        report = ImportReport(Path(args.annotations[index]), unclassified=read.unclassified,
                              not_areas=read.not_areas, empty=read.empty)
        drive(paint_annotations(read, ids, canvas, downsample=slide.downsamples[level], report=report), show=False)
        print(f"  {Path(path).name}: {report.text()}")
        imports.append({"slide": Path(path).name, "areas": report.areas, "clipped": report.clipped,
                        "skipped": read.unclassified + read.not_areas + read.empty, "kept": report.kept})
        slides.append(PaintedSlide(slide, canvas, level, list(table), Path(path).name))
    return slides, imports
