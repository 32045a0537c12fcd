"""Training the head: separable classes learnt, sparse labels, reproducibility, stopping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_pathsegdiff.core.feature_cache import FeatureCache
from napari_pathsegdiff.core.metrics import confusion_matrix, scores
from napari_pathsegdiff.core.progress import Progress, drive
from napari_pathsegdiff.engine.inference.predict import predict_image
from napari_pathsegdiff.engine.training.train_head import train_head
from napari_pathsegdiff.models.features import RGBFeatures
from napari_pathsegdiff.models.heads import HeadError, load_head, save_head

H, W = 96, 128


def _scene(seed=0):
    """Two tissue-like colours (ids 1 and 4) in a disc and around it, with noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W]
    mask = np.where((yy - 48) ** 2 + (xx - 60) ** 2 < 30**2, 4, 1).astype(np.uint8)
    colours = np.where(mask[..., None] == 4, [170, 60, 140], [235, 190, 215]).astype(np.float32)
    image = np.clip(colours + rng.normal(0, 18, colours.shape), 0, 255).astype(np.uint8)
    return image, mask


def _scribbles(mask, unlabelled=0):
    """A few short strokes of each class; every other pixel unlabelled."""
    sparse = np.full_like(mask, unlabelled)
    sparse[46:50, 45:75] = mask[46:50, 45:75]  # inside the disc
    sparse[5:8, 10:110] = mask[5:8, 10:110]  # background, top
    sparse[85:90, 100:120] = mask[85:90, 100:120]
    return sparse


@pytest.fixture(scope="module")
def rgb():
    return RGBFeatures(tile_size=48, halo=4)


def _dice(pred, truth, cls):
    return scores(confusion_matrix(pred, truth))["per_class"][cls]["dice"]


def test_separable_classes_reach_near_perfect_dice(rgb):
    image, mask = _scene()
    records = []
    result = drive(train_head([(image, mask)], extractor=rgb, steps=40, seed=0), show=False,
                   callback=records.append)
    assert result.head.class_ids == [1, 4]
    # a tenth of the windows is held out for validation; the rest are training pixels
    assert result.windows["val"] > 0 and 0.8 * mask.size < sum(result.class_pixels.values()) < mask.size
    assert {r.stage for r in records} == {"features", "train"}
    assert all("loss" in r.metrics for r in records if r.stage == "train" and r.done > 0)
    pred = predict_image(image, head=result.head, extractor=rgb).labels
    assert pred.dtype == np.uint8 and set(np.unique(pred)) == {1, 4}
    assert _dice(pred, mask, 4) > 0.95 and _dice(pred, mask, 1) > 0.95
    # a fresh image of the same scene, never seen
    image2, _ = _scene(seed=1)
    assert _dice(predict_image(image2, head=result.head, extractor=rgb).labels, mask, 4) > 0.95


def test_sparse_labels_use_only_labelled_pixels(rgb):
    image, mask = _scene()
    sparse = _scribbles(mask, unlabelled=0)
    result = drive(train_head([(image, sparse)], extractor=rgb, unlabelled=0, steps=40, seed=0,
                              val_fraction=0), show=False)
    assert result.head.class_ids == [1, 4]  # 0 means "not labelled", not a class
    labelled = sparse != 0
    assert sum(result.class_pixels.values()) == int(labelled.sum())
    assert result.class_pixels == {1: int((sparse == 1).sum()), 4: int((sparse == 4).sum())}
    pred = predict_image(image, head=result.head, extractor=rgb).labels
    assert _dice(pred, mask, 4) > 0.9

    # which value marks "unlabelled" does not matter: the same pixels give the same head
    other = np.where(labelled, sparse, 9).astype(np.uint8)
    again = drive(train_head([(image, other)], extractor=rgb, unlabelled=9, steps=40, seed=0,
                             val_fraction=0), show=False)
    for a, b in zip(result.head.state_dict().values(), again.head.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    # unlabelled pixels carry no label: flooding them with a wrong class changes the head
    flooded = np.where(labelled, sparse, 1).astype(np.uint8)
    wrong = drive(train_head([(image, flooded)], extractor=rgb, steps=40, seed=0, val_fraction=0),
                  show=False)
    assert _dice(predict_image(image, head=wrong.head, extractor=rgb).labels, mask, 4) < \
        _dice(pred, mask, 4)


def test_same_seed_same_head_and_other_seed_another(rgb):
    image, mask = _scene()
    cache = FeatureCache()

    def run(seed):
        return drive(train_head([(image, mask)], extractor=rgb, steps=15, seed=seed, cache=cache),
                     show=False)

    a, b, c = run(3), run(3), run(4)
    assert cache.hits > 0  # the second and third run read cached tile features
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    for (k, x), y, z in zip(a.head.state_dict().items(), b.head.state_dict().values(), c.head.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    assert any(not torch.equal(x, z) for x, z in zip(a.head.state_dict().values(), c.head.state_dict().values()))


def test_closing_mid_training_leaves_the_saved_head_untouched(tmp_path, rgb):
    image, mask = _scene()
    base = drive(train_head([(image, mask)], extractor=rgb, steps=5, seed=0), show=False).head
    folder = save_head(base, tmp_path / "head")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    head = load_head(folder, extractor=rgb)
    params = {k: v.clone() for k, v in head.state_dict().items()}

    work = train_head([(image, _scribbles(mask))], extractor=rgb, head=head, unlabelled=0, steps=50)
    seen = []
    for rec in work:
        seen.append(rec)
        if rec.stage == "train" and rec.done == 3:
            break
    work.close()
    assert isinstance(seen[-1], Progress) and seen[-1].metrics["loss"] > 0
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    for k, v in head.state_dict().items():  # the head passed in is copied, never trained in place
        torch.testing.assert_close(v, params[k], rtol=0, atol=0)


def test_fine_tuning_keeps_classes_and_refuses_unknown_ids(rgb):
    image, mask = _scene()
    base = drive(train_head([(image, mask)], extractor=rgb, steps=5, seed=0,
                            class_names=["stroma", "gland"]), show=False).head
    # corrections of one class only are fine when fine-tuning
    only_glands = np.where(mask == 4, 4, 0).astype(np.uint8)
    tuned = drive(train_head([(image, only_glands)], extractor=rgb, head=base, unlabelled=0, steps=3),
                  show=False).head
    assert tuned.class_ids == [1, 4] and tuned.class_names == ["stroma", "gland"]
    bad = mask.copy()
    bad[0, 0] = 7
    with pytest.raises(HeadError, match=r"holds class id\(s\) \[7\] that the head does not know"):
        drive(train_head([(image, bad)], extractor=rgb, head=base, steps=3), show=False)


def test_bad_training_input_is_refused(rgb):
    image, mask = _scene()
    with pytest.raises(ValueError, match="at least two classes"):
        drive(train_head([(image, np.where(mask == 4, 4, 0).astype(np.uint8))], extractor=rgb,
                         unlabelled=0, steps=3), show=False)
    with pytest.raises(ValueError, match="No labelled pixels"):
        drive(train_head([(image, np.zeros_like(mask))], extractor=rgb, unlabelled=0, steps=3), show=False)
    with pytest.raises(ValueError, match=r"Mask of sample 0 is 96x127 but its region is 96x128"):
        drive(train_head([(image, mask[:, :-1])], extractor=rgb, steps=3), show=False)
    with pytest.raises(ValueError, match="No training samples"):
        drive(train_head([], extractor=rgb), show=False)


@pytest.mark.parametrize("strides", [[1], [2, 4], [4, 8, 16]])
def test_window_scores_equal_whole_tile_scores_at_labelled_pixels(strides):
    """Training windows see exactly what a whole-tile prediction computes at their labels."""
    from napari_pathsegdiff.engine.training.fit_fcn import _window_scores, _windows
    from napari_pathsegdiff.models.heads import SegmentationHead

    outer, channels = 96, [5, 6, 7][: len(strides)]
    torch.manual_seed(0)
    head = SegmentationHead(in_channels=channels, strides=strides, class_ids=[0, 1, 2], depth=2).eval()
    rng = np.random.default_rng(0)
    feats = [[rng.normal(size=(c, outer // s, outer // s)).astype(np.float16) for c, s in zip(channels, strides)]
             for _ in range(2)]
    labels = [np.full((outer, outer), -1, np.int8) for _ in range(2)]
    labels[0][3:9, 40:90] = 1  # strokes, one touching the tile border
    labels[0][60:62, 0:5] = 2
    labels[1][50:51, 50:51] = 0
    windows, win_labels, side = _windows(labels, outer=outer, window=32, margin=head.margin, trunk=min(strides))
    assert win_labels.shape[1:] == (side * min(strides),) * 2
    # every labelled pixel is in exactly one window
    assert sum(int((w >= 0).sum()) for w in win_labels) == sum(int((lab >= 0).sum()) for lab in labels)
    with torch.no_grad():
        scores = _window_scores(head, feats, windows, strides, side).numpy()
        whole = [head([torch.from_numpy(f[None]) for f in tile])[0].numpy() for tile in feats]
    t = min(strides)
    for w, lab, sc in zip(windows, win_labels, scores):
        ys, xs = np.nonzero(lab >= 0)
        np.testing.assert_allclose(sc[:, ys, xs], whole[w.tile][:, w.y * t + ys, w.x * t + xs], atol=1e-4)
