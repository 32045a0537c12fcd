"""``pathsegdiff eval``: Dice, IoU and pixel accuracy of predicted masks against the truth."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="score predicted masks against true masks (Dice, IoU, accuracy)",
        description=(
            "Per-class Dice and IoU (pixels pooled over the set, and per image), their mean over "
            "the classes present in the truth (class 0 left out unless --include-background), "
            "and pixel accuracy. Masks are paired by name."
        ),
    )
    parser.add_argument("--pred", required=True, metavar="DIR", help="folder of predicted masks")
    parser.add_argument("--truth", required=True, metavar="DIR", help="folder of true masks")
    parser.add_argument("--json", metavar="FILE", help="also write the scores as JSON")
    parser.add_argument("--include-background", action="store_true",
                        help="count class 0 in the mean Dice and IoU")
    parser.add_argument("--ignore", type=int, metavar="V", help="truth value of pixels not scored")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..core.atomic import write_text_atomic
    from ..core.images import check_same_shape, file_stem, list_images, read_mask
    from ..core.metrics import evaluate
    from . import UserError

    preds = {file_stem(p): p for p in list_images(args.pred, what="prediction")}
    truths = {file_stem(p): p for p in list_images(args.truth, what="truth mask")}
    no_truth = sorted(set(preds) - set(truths))
    no_pred = sorted(set(truths) - set(preds))
    if no_truth or no_pred:
        parts = []
        if no_truth:
            parts.append(f"predictions without a truth mask in {args.truth}: {', '.join(no_truth[:5])}")
        if no_pred:
            parts.append(f"truth masks without a prediction in {args.pred}: {', '.join(no_pred[:5])}")
        raise UserError("The folders do not match: " + "; ".join(parts) + ".")

    def pairs():
        for stem in sorted(preds):
            pred, truth = read_mask(preds[stem]), read_mask(truths[stem])
            check_same_shape(pred, truth, preds[stem], truths[stem])
            yield stem, pred, truth

    result = evaluate(pairs(), include_background=args.include_background, ignore=args.ignore)
    print(format_table(result))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(to_json(result), indent=2))
        print(f"wrote {path}")
    return 0


def to_json(result: dict) -> dict:
    """Scores with string class ids as JSON object keys."""
    def per_class(pc):
        return {str(k): v for k, v in pc.items()}

    out = {k: v for k, v in result.items() if k not in ("per_class", "per_image")}
    out["per_class"] = per_class(result["per_class"])
    out["per_image"] = {
        name: {**{k: v for k, v in s.items() if k != "per_class"}, "per_class": per_class(s["per_class"])}
        for name, s in result["per_image"].items()
    }
    return out


def format_table(result: dict) -> str:
    """The pooled scores as a small text table."""
    def f(v):
        return "   -  " if v is None else f"{v:6.4f}"

    lines = [f"{'class':>6}  {'dice':>6}  {'iou':>6}  {'truth px':>10}  {'pred px':>10}"]
    for c, s in sorted(result["per_class"].items()):
        lines.append(f"{c:>6}  {f(s['dice'])}  {f(s['iou'])}  {s['truth_pixels']:>10}  {s['pred_pixels']:>10}")
    scope = "with" if result["include_background"] else "without"
    lines.append(
        f"{'mean':>6}  {f(result['mean_dice'])}  {f(result['mean_iou'])}  "
        f"(classes {result['classes_in_mean']}, {scope} background)"
    )
    lines.append(f"pixel accuracy {f(result['pixel_accuracy'])} over {result['n_images']} image(s); "
                 f"mean Dice per image {f(result['mean_dice_per_image'])}")
    return "\n".join(lines)
