"""Dice, IoU and pixel accuracy from confusion matrices, pooled and per image."""

from __future__ import annotations

import numpy as np
import pytest

from napari_pathsegdiff.core.metrics import confusion_matrix, evaluate, scores

TRUTH_A = np.array([[0, 0, 1, 1],
                    [0, 2, 2, 1]])
PRED_A = np.array([[0, 1, 1, 1],
                   [0, 2, 0, 0]])
TRUTH_B = np.array([[1, 1],
                    [1, 0]])
PRED_B = np.array([[1, 1],
                   [0, 0]])


def test_confusion_matrix_counts_truth_by_prediction():
    cm = confusion_matrix(PRED_A, TRUTH_A)
    assert cm.shape == (256, 256) and cm.sum() == 8
    assert cm[0, 0] == 2 and cm[0, 1] == 1 and cm[1, 1] == 2 and cm[1, 0] == 1
    assert cm[2, 2] == 1 and cm[2, 0] == 1
    assert confusion_matrix(PRED_A, TRUTH_A, ignore=2).sum() == 6


def test_scores_of_one_image_are_exact():
    s = scores(confusion_matrix(PRED_A, TRUTH_A))
    # class 1: tp 2, truth 3, pred 3 -> dice 4/6, iou 2/4; class 2: tp 1, truth 2, pred 1 -> 2/3, 1/2
    assert s["per_class"][1]["dice"] == pytest.approx(2 / 3)
    assert s["per_class"][1]["iou"] == pytest.approx(0.5)
    assert s["per_class"][2]["dice"] == pytest.approx(2 / 3)
    assert s["per_class"][2]["iou"] == pytest.approx(0.5)
    assert s["per_class"][0] == {"dice": pytest.approx(4 / 7), "iou": pytest.approx(2 / 5),
                                 "truth_pixels": 3, "pred_pixels": 4}
    assert s["classes_in_mean"] == [1, 2]
    assert s["mean_dice"] == pytest.approx(2 / 3) and s["mean_iou"] == pytest.approx(0.5)
    assert s["pixel_accuracy"] == pytest.approx(5 / 8)
    with_bg = scores(confusion_matrix(PRED_A, TRUTH_A), include_background=True)
    assert with_bg["mean_dice"] == pytest.approx((4 / 7 + 2 / 3 + 2 / 3) / 3)


def test_class_only_in_prediction_is_reported_but_not_averaged():
    s = scores(confusion_matrix(np.array([[3, 1]]), np.array([[1, 1]])))
    assert s["per_class"][3] == {"dice": 0.0, "iou": 0.0, "truth_pixels": 0, "pred_pixels": 1}
    assert s["classes_in_mean"] == [1] and s["mean_dice"] == pytest.approx(2 / 3)


def test_evaluate_pools_pixels_and_keeps_per_image_scores():
    r = evaluate([("a", PRED_A, TRUTH_A), ("b", PRED_B, TRUTH_B)])
    # class 1 pooled: tp 2+2, truth 3+3, pred 3+2 -> dice 8/11, iou 4/7
    assert r["per_class"][1]["dice"] == pytest.approx(8 / 11)
    assert r["per_class"][1]["iou"] == pytest.approx(4 / 7)
    assert r["mean_dice"] == pytest.approx((8 / 11 + 2 / 3) / 2)
    assert r["pixel_accuracy"] == pytest.approx(8 / 12)
    assert r["per_image"]["b"]["mean_dice"] == pytest.approx(0.8)
    assert r["per_image"]["a"]["mean_dice"] == pytest.approx(2 / 3)
    assert r["mean_dice_per_image"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert r["n_images"] == 2 and r["include_background"] is False


def test_image_without_foreground_has_no_mean():
    r = evaluate([("empty", np.zeros((2, 2), int), np.zeros((2, 2), int))])
    assert r["mean_dice"] is None and r["pixel_accuracy"] == 1.0
    assert r["per_image"]["empty"]["mean_dice"] is None and r["mean_dice_per_image"] is None


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"shape \(2, 4\) and truth of shape \(2, 2\)"):
        confusion_matrix(PRED_A, TRUTH_B)
    with pytest.raises(ValueError, match="outside 0..255"):
        confusion_matrix(np.array([300]), np.array([1]))
    with pytest.raises(ValueError, match="Nothing to evaluate"):
        evaluate([])


def test_seam_ratios_compare_grid_lines_with_the_rest_and_can_leave_out_unsegmented_pixels():
    from napari_pathsegdiff.core.metrics import seam_ratios

    labels = np.ones((16, 16), np.uint8)
    labels[:, 8:] = 2  # a change on the grid line x = 8 in every row
    labels[3:5, 2] = 2  # and a few elsewhere
    r = seam_ratios(labels, tile=8)
    assert r["cols_on_grid"] == 1.0 and r["cols_elsewhere"] == pytest.approx(4 / (16 * 14))
    assert r["cols_ratio"] == pytest.approx(56.0) and r["rows_ratio"] == 0.0  # row changes only off the grid
    assert seam_ratios(np.ones((8, 8)), tile=4)["rows_ratio"] is None  # no change anywhere
    shifted = seam_ratios(labels, tile=8, origin=(0, 4))  # grid lines at x = 4 and 12 instead
    assert shifted["cols_on_grid"] == 0.0
    labels[:, 12:] = 0  # not segmented: pairs touching it are left out
    r = seam_ratios(labels, tile=4, ignore=0)
    assert r["cols_on_grid"] == 0.5  # x = 4: no change, x = 8: all change, x = 12 (2 | 0): left out
