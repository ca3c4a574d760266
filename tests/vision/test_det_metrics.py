"""COCO metrics through pycocotools, checked against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from mixprec.vision.metrics import (
    coco_evaluate,
    coco_ground_truth,
    coco_predictions,
    precision_recall,
)

IMAGES = [{"id": 1, "file_name": "a.jpg", "width": 200, "height": 200}]
NAMES = {0: "a", 1: "b"}


def test_ground_truth_converts_normalised_labels_to_coco_pixels():
    gt = coco_ground_truth(IMAGES, [np.array([[1, 0.25, 0.25, 0.5, 0.5]], np.float32)], NAMES)
    ann = gt["annotations"][0]
    assert ann["bbox"] == [0.0, 0.0, 100.0, 100.0] and ann["category_id"] == 2
    assert [c["name"] for c in gt["categories"]] == ["a", "b"]


def test_perfect_detections_score_one():
    gt = coco_ground_truth(IMAGES, [np.array([[0, 0.25, 0.25, 0.5, 0.5], [1, 0.7, 0.7, 0.2, 0.3]],
                                             np.float32)], NAMES)
    dets = coco_predictions(1, np.array([[0, 0, 100, 100, 0.9, 0], [120, 110, 160, 170, 0.8, 1]]))
    map50, map_, per = coco_evaluate(gt, dets)
    assert map50 == pytest.approx(1.0) and map_ == pytest.approx(1.0)
    np.testing.assert_allclose(per, 1.0)


def test_iou_062_counts_at_three_of_ten_thresholds():
    """One box, one detection with IoU 0.62: a hit at IoU 0.50, 0.55, 0.60 only, so AP50 = 1 and
    AP50-95 = 3/10 (computed by hand, not by pycocotools)."""
    gt = coco_ground_truth(IMAGES, [np.array([[0, 0.25, 0.25, 0.5, 0.5]], np.float32)], NAMES)
    dets = coco_predictions(1, np.array([[0, 0, 100, 62, 0.9, 0]]))
    map50, map_, _ = coco_evaluate(gt, dets)
    assert map50 == pytest.approx(1.0) and map_ == pytest.approx(0.3)


def test_wrong_class_and_missing_detections_score_zero():
    gt = coco_ground_truth(IMAGES, [np.array([[0, 0.25, 0.25, 0.5, 0.5]], np.float32)], NAMES)
    assert coco_evaluate(gt, coco_predictions(1, np.array([[0, 0, 100, 100, 0.9, 1]])))[:2] == (0, 0)
    assert coco_evaluate(gt, [])[:2] == (0.0, 0.0)


def test_precision_recall_at_best_f1():
    gts = [np.array([[0, 0, 0, 10, 10], [0, 20, 20, 30, 30]], np.float32)]
    dets = [np.array([[0, 0, 10, 10, 0.9, 0], [50, 50, 60, 60, 0.8, 0]], np.float32)]
    p, r = precision_recall(dets, gts, nc=1)
    # threshold above 0.8 keeps the true positive only: P = 1, R = 1/2 (F1 2/3 beats 1/2)
    assert p[0] == pytest.approx(1.0) and r[0] == pytest.approx(0.5)
