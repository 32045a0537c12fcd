"""Which EfficientNet-Lite0 stages separate H&E classes: a pixel random forest per stage choice.

For each labelled set (the project's train/validation split, ``core.splits``) every image is
padded by reflection and read whole by :class:`CNNFeatures` with all stages 2, 4, 8 and 16.
Random labelled pixels are drawn (20,000 over the training images, 10,000 per validation
image); each map is read at those pixels by bilinear interpolation between cell centres. A
random forest (50 trees) is trained per candidate set of stages on the training pixels, and
the table gives the mean Dice over classes of its predictions at the validation pixels. The
``two scales`` candidate adds stages 2, 4, 8 of the image downsampled by 2 (convpaint's image
pyramid); ``rgb`` is the pixel colour alone.

    python scripts/probe_cnn_stages.py [--data ../shared/data] [--datasets glas gleason monuseg miccai2015]
"""

from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from skimage.transform import rescale
from sklearn.ensemble import RandomForestClassifier

from napari_pathsegdiff.core.images import pair_images_and_masks, read_mask, read_rgb
from napari_pathsegdiff.core.splits import VALIDATION_SIZES, holdout_split
from napari_pathsegdiff.models.cnn_features import CNNFeatures

FOLDERS = {"glas": "glas/train", "monuseg": "monuseg/train", "gleason": "gleason", "miccai2015": "miccai2015"}
TRAIN_PIXELS, VAL_PIXELS_PER_IMAGE = 20_000, 10_000

CANDIDATES = {
    "rgb": lambda a, b, rgb: rgb,
    "2": lambda a, b, rgb: a[2],
    "2,4": lambda a, b, rgb: np.hstack([a[2], a[4]]),
    "2,4,8": lambda a, b, rgb: np.hstack([a[2], a[4], a[8]]),
    "4,8": lambda a, b, rgb: np.hstack([a[4], a[8]]),
    "2,4,8,16": lambda a, b, rgb: np.hstack([a[2], a[4], a[8], a[16]]),
    "4,8,16": lambda a, b, rgb: np.hstack([a[4], a[8], a[16]]),
    "2,4,8 two scales": lambda a, b, rgb: np.hstack([a[2], a[4], a[8], b[2], b[4], b[8]]),
}


def features_at(extractor: CNNFeatures, image: np.ndarray, points: np.ndarray) -> dict[int, np.ndarray]:
    """Stride -> features ``(N, C)`` at pixel ``points`` (N, 2) of ``image``."""
    pad = extractor.halo
    h, w = image.shape[:2]
    m = extractor.multiple
    big_h, big_w = -(-(h + 2 * pad) // m) * m, -(-(w + 2 * pad) // m) * m
    padded = np.pad(image, ((pad, big_h - h - pad), (pad, big_w - w - pad), (0, 0)), mode="reflect")
    out = {}
    for s, fmap in zip(extractor.strides, extractor.extract(padded[None])):
        t = torch.from_numpy(fmap.astype(np.float32))
        # pixel p lies at cell coordinate (p + 0.5) / s - 0.5; grid_sample wants [-1, 1] edges
        gy = (points[:, 0] + pad + 0.5) / s / t.shape[2] * 2 - 1
        gx = (points[:, 1] + pad + 0.5) / s / t.shape[3] * 2 - 1
        grid = torch.from_numpy(np.stack([gx, gy], -1).astype(np.float32))[None, :, None, :]
        out[s] = F.grid_sample(t, grid, mode="bilinear", align_corners=False)[0, :, :, 0].T.numpy()
    return out


def image_features(extractor, image, points):
    small = (rescale(image, 0.5, channel_axis=-1, anti_aliasing=True) * 255).astype(np.uint8)
    rgb = image[points[:, 0], points[:, 1]].astype(np.float32) / 255
    return features_at(extractor, image, points), features_at(extractor, small, points // 2), rgb


def mean_dice(truth, pred, classes) -> float:
    return float(np.mean([
        2 * np.sum((truth == c) & (pred == c)) / max(np.sum(truth == c) + np.sum(pred == c), 1) for c in classes
    ]))


def probe(folder: Path, name: str, extractor: CNNFeatures, rng: np.random.Generator) -> dict[str, float]:
    pairs = pair_images_and_masks(folder / "images", folder / "masks")
    train, val = holdout_split([p[0].name for p in pairs], n_val=VALIDATION_SIZES[name])
    samples = {"train": [], "val": []}
    for image_path, mask_path in pairs:
        split = "val" if image_path.name in val else "train"
        image, mask = read_rgb(image_path), read_mask(mask_path)
        n = TRAIN_PIXELS // len(train) if split == "train" else VAL_PIXELS_PER_IMAGE
        points = np.stack([rng.integers(0, mask.shape[0], n), rng.integers(0, mask.shape[1], n)], -1)
        samples[split].append((image_features(extractor, image, points), mask[points[:, 0], points[:, 1]]))
    y_train = np.concatenate([y for _, y in samples["train"]])
    y_val = np.concatenate([y for _, y in samples["val"]])
    classes = sorted(set(y_train.tolist()))
    scores = {}
    for label, columns in CANDIDATES.items():
        x_train = np.vstack([columns(*f) for f, _ in samples["train"]])
        x_val = np.vstack([columns(*f) for f, _ in samples["val"]])
        forest = RandomForestClassifier(50, min_samples_leaf=5, max_samples=0.5, n_jobs=1, random_state=0)
        scores[label] = mean_dice(y_val, forest.fit(x_train, y_train).predict(x_val), classes)
    return scores


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--datasets", nargs="+", default=list(FOLDERS), choices=list(FOLDERS))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    extractor = CNNFeatures(stages=(2, 4, 8, 16))
    print(f"{datetime.date.today()}  one torch thread; mean Dice over classes at validation pixels")
    print("| set | " + " | ".join(CANDIDATES) + " |")
    print("|---|" + "---:|" * len(CANDIDATES))
    for name in args.datasets:
        start = time.perf_counter()
        scores = probe(args.data / FOLDERS[name], name, extractor, np.random.default_rng(0))
        cells = " | ".join(f"{scores[c]:.3f}" for c in CANDIDATES)
        print(f"| {name} | {cells} |  ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
