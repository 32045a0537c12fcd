"""Benchmark of the segmentation engine: throughput, retraining after an edit, peak memory.

Usage::

    python scripts/bench_engine.py [--backbone default|PATH|HUB_ID] [--random small]
                                   [--features rgb classic diffusion] [--threads N]
                                   [--skip-memory | --memory-only] [--memory-features ...]

Figures printed (one block per feature extractor):

1. Throughput in megapixels per second: features + head for a 2048x2048 region of the CMU-1
   sample slide from an empty feature cache, then the same region again from the cache.
2. Retraining after an edit: a head is trained on a few thousand labelled pixels (short
   strokes, classes from a colour threshold) in a 1024x1024 region; then one stroke per class
   is added and the head is fine-tuned from cached features and the region re-predicted. The
   times of that retraining and re-prediction are the figures to read.
3. Peak memory (peak RSS of a fresh process, and its RSS just before predicting) of
   predicting a 4096x4096 synthetic in-memory image made by tiling the 2048x2048 slide region
   2x2, with no feature cache and with the default 2 GB cache.

Diffusion features use ``--backbone`` when given; ``--random`` adds backbones with random
weights built from the named configurations ("tiny", "small": the architecture of the
shipped default), as labelled controls of speed only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SLIDE = ROOT / "src" / "napari_pathsegdiff" / "sample_data" / "CMU-1-Small-Region.svs"
THREADS = None


def make_extractor(spec: str):
    """``rgb``, ``classic``, ``diffusion`` (with --backbone) or ``random:<config>``."""
    from napari_pathsegdiff.models.features import make_extractor as make

    if spec.startswith("random:"):
        from napari_pathsegdiff.models.backbone import build_random_backbone
        from napari_pathsegdiff.models.backbone_configs import get_config
        from napari_pathsegdiff.models.diffusion_features import DiffusionFeatures

        name = spec.split(":", 1)[1]
        return DiffusionFeatures(build_random_backbone(get_config(name), seed=0, name=f"random-{name}"))
    if spec.startswith("diffusion:"):
        return make("diffusion", backbone=spec.split(":", 1)[1], device="cpu")
    return make(spec)


def random_head(extractor, classes=(1, 2, 3)):
    import torch

    from napari_pathsegdiff.models.heads import new_head

    torch.manual_seed(0)
    return new_head(extractor, list(classes)).eval()


def timed(work):
    from napari_pathsegdiff.core.progress import drive

    t = time.perf_counter()
    result = drive(work, show=False)
    return result, time.perf_counter() - t


def throughput(spec: str, slide) -> dict:
    from napari_pathsegdiff.core.feature_cache import FeatureCache
    from napari_pathsegdiff.core.region import Region
    from napari_pathsegdiff.engine.inference.predict import predict_region

    ex = make_extractor(spec)
    head = random_head(ex)
    region = Region(0, 0, 0, 2048, 2048)
    timed(predict_region(slide, Region(0, 0, 0, 64, 64), head=head, extractor=ex))  # warm-up
    cache = FeatureCache()
    _, cold = timed(predict_region(slide, region, head=head, extractor=ex, cache=cache))
    _, warm = timed(predict_region(slide, region, head=head, extractor=ex, cache=cache))
    mp = region.height * region.width / 1e6
    return {"extractor": ex.identity, "region": "2048x2048 at level 0", "empty_cache_s": round(cold, 2),
            "mp_per_s": round(mp / cold, 3), "from_cache_s": round(warm, 2),
            "mp_per_s_cached": round(mp / warm, 3), "cache_mb": round(cache.nbytes / 2**20, 1)}


def strokes(truth: np.ndarray, rng, per_class: int, *, length=64, width=7, unlabelled=0) -> np.ndarray:
    """Short horizontal strokes inside each class of ``truth`` (the rest unlabelled)."""
    out = np.full(truth.shape, unlabelled, np.uint8)
    for c in np.unique(truth):
        ys, xs = np.nonzero(truth == c)
        for i in rng.choice(len(ys), size=per_class, replace=False):
            y0, x0 = max(0, ys[i] - width // 2), max(0, xs[i] - length // 2)
            patch = truth[y0 : y0 + width, x0 : x0 + length]
            view = out[y0 : y0 + width, x0 : x0 + length]
            view[patch == c] = c
    return out


def colour_classes(rgb: np.ndarray) -> np.ndarray:
    """1 glass (bright), 2 eosin-rich tissue, 3 haematoxylin-rich (dark) tissue."""
    grey = rgb.mean(-1)
    return np.where(grey > 210, 1, np.where(grey > 150, 2, 3)).astype(np.uint8)


def retrain(spec: str, slide) -> dict:
    from napari_pathsegdiff.core.feature_cache import FeatureCache
    from napari_pathsegdiff.core.region import Region
    from napari_pathsegdiff.engine.inference.predict import predict_region
    from napari_pathsegdiff.engine.training.train_head import TrainSample, train_head

    ex = make_extractor(spec)
    region = Region(0, 512, 512, 1024, 1024)
    truth = colour_classes(slide.read_region(region))
    rng = np.random.default_rng(0)
    labels = strokes(truth, rng, per_class=3)
    cache = FeatureCache()
    first, t_first = timed(train_head([TrainSample(slide, labels, region)], extractor=ex, unlabelled=0,
                                      cache=cache, seed=0))
    _, t_pred_first = timed(predict_region(slide, region, head=first.head, extractor=ex, cache=cache))
    edit = strokes(truth, np.random.default_rng(1), per_class=1)
    labels = np.where(edit > 0, edit, labels)
    tuned, t_retrain = timed(train_head([TrainSample(slide, labels, region)], extractor=ex, head=first.head,
                                        unlabelled=0, cache=cache, seed=0))
    pred, t_repredict = timed(predict_region(slide, region, head=tuned.head, extractor=ex, cache=cache))
    agree = float((pred.labels == truth).mean())
    return {"extractor": ex.identity, "labelled_px": int((labels > 0).sum()),
            "first_train_with_features_s": round(t_first, 2), "first_predict_s": round(t_pred_first, 2),
            "retrain_after_edit_s": round(t_retrain, 3), "retrain_steps": tuned.steps,
            "retrain_windows": tuned.windows, "repredict_from_cache_s": round(t_repredict, 3),
            "retrain_plus_repredict_s": round(t_retrain + t_repredict, 3),
            "pixel_agreement_with_colour_classes": round(agree, 3)}


def _rss_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, in MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory_child(spec: str, cached: bool, image_path: str) -> None:
    """Predict the 4096x4096 image saved at ``image_path`` in this fresh process; print RSS as JSON."""
    from napari_pathsegdiff.core.feature_cache import FeatureCache
    from napari_pathsegdiff.engine.inference.predict import predict_region

    image = np.load(image_path)
    ex = make_extractor(spec)
    head = random_head(ex)
    before = _rss_mb("VmRSS")
    cache = FeatureCache() if cached else None
    pred, seconds = timed(predict_region(image, None, head=head, extractor=ex, cache=cache))
    print(json.dumps({"extractor": ex.identity, "cache": "2 GB budget" if cached else "none",
                      "labels_shape": list(pred.labels.shape), "rss_before_predict_mb": round(before),
                      "peak_rss_mb": round(_rss_mb("VmHWM")), "seconds": round(seconds, 1)}))


def memory(spec: str, cached: bool, image_path: Path) -> dict:
    cmd = [sys.executable, __file__, "--memory-child", spec, "--image", str(image_path)]
    cmd += ["--cached"] if cached else []
    if THREADS:
        cmd += ["--threads", str(THREADS)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    return json.loads(out)


def synthetic_image(slide, folder: Path) -> Path:
    """The 2048x2048 slide region tiled 2x2 into a 4096x4096 image, saved as .npy."""
    from napari_pathsegdiff.core.region import Region

    path = folder / "synthetic-4096.npy"
    np.save(path, np.tile(slide.read_region(Region(0, 0, 0, 2048, 2048)), (2, 2, 1)))
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", help="diffusion backbone: default, a folder or a cached hub id")
    p.add_argument("--random", nargs="*", default=["small"],
                   help="random-weight backbone configs to time (default: small, the default's architecture)")
    p.add_argument("--features", nargs="+", default=["rgb", "classic", "diffusion"])
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--memory-only", action="store_true", help="only the peak-memory figures")
    p.add_argument("--memory-features", nargs="+", default=["rgb", "classic", "random:tiny"],
                   help="extractors whose 4096x4096 peak memory is measured")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    p.add_argument("--memory-child", help=argparse.SUPPRESS)
    p.add_argument("--cached", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--image", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    global THREADS
    THREADS = args.threads
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child, args.cached, args.image)
        return 0

    import torch

    from napari_pathsegdiff.core.slide import open_slide

    specs = [f for f in args.features if f != "diffusion"]
    if "diffusion" in args.features:
        if args.backbone:
            specs.append(f"diffusion:{args.backbone}")
        specs += [f"random:{name}" for name in args.random]
    print(f"# bench_engine {date.today()} | {platform.processor() or platform.machine()} | "
          f"torch threads {torch.get_num_threads()} | python {platform.python_version()} | "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"# command: {' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}")
    slide = open_slide(SLIDE)
    for spec in specs if not args.memory_only else []:
        print(f"\n## {spec}")
        print("throughput", json.dumps(throughput(spec, slide)))
        print("retrain   ", json.dumps(retrain(spec, slide)))
        sys.stdout.flush()
    if not args.skip_memory:
        import tempfile

        print("\n## peak memory, 4096x4096 synthetic image (the 2048x2048 slide region tiled 2x2)")
        with tempfile.TemporaryDirectory() as tmp:
            image = synthetic_image(slide, Path(tmp))
            for spec in args.memory_features:
                print("memory    ", json.dumps(memory(spec, cached=False, image_path=image)))
                print("memory    ", json.dumps(memory(spec, cached=True, image_path=image)))
                sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
