"""Detection metrics: COCO mAP50 and mAP50-95 by pycocotools (the reference algorithm), plus
precision and recall at IoU 0.5.

Ground truth and predictions are kept in COCO format (boxes ``[x, y, w, h]`` in original image
pixels, 1-based category ids), so ``save_json`` writes files that any COCO tool re-scores to the
same numbers. Pure numpy/pycocotools; no torch.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["BoxMetrics", "coco_evaluate", "coco_ground_truth", "coco_predictions",
           "precision_recall"]


@dataclass
class BoxMetrics:
    """``mp``/``mr``: mean precision/recall over classes at the confidence of best mean F1;
    ``map50``, ``map`` (mAP50-95): COCO; ``per_class``: name -> (images, instances, p, r,
    ap50, ap)."""

    mp: float = 0.0
    mr: float = 0.0
    map50: float = 0.0
    map: float = 0.0
    per_class: dict[str, tuple] = field(default_factory=dict)

    @property
    def fitness(self) -> float:
        """mAP50-95, as Ultralytics ranks checkpoints."""
        return self.map


def coco_ground_truth(images: list[dict[str, Any]], labels: list[np.ndarray],
                      names: dict[int, str]) -> dict[str, Any]:
    """COCO annotation dict. ``images``: dicts with id, file_name, width, height; ``labels``:
    (N, 5) ``class cx cy w h`` normalised, one array per image."""
    anns = []
    for img, lab in zip(images, labels, strict=True):
        w, h = img["width"], img["height"]
        for c, cx, cy, bw, bh in lab.tolist():
            box = [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h]
            anns.append({"id": len(anns) + 1, "image_id": img["id"], "category_id": int(c) + 1,
                         "bbox": [round(v, 3) for v in box], "area": box[2] * box[3],
                         "iscrowd": 0})
    cats = [{"id": i + 1, "name": n} for i, n in sorted(names.items())]
    return {"images": images, "annotations": anns, "categories": cats}


def coco_predictions(image_id: int, det: np.ndarray) -> list[dict[str, Any]]:
    """(n, 6) ``[x1, y1, x2, y2, score, class]`` original pixels -> COCO results entries."""
    return [{"image_id": image_id, "category_id": int(c) + 1,
             "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
             "score": round(s, 5)} for x1, y1, x2, y2, s, c in det.tolist()]


def coco_evaluate(gt: dict[str, Any], dets: list[dict[str, Any]]) -> tuple[float, float,
                                                                           np.ndarray]:
    """pycocotools COCOeval (bbox, default parameters: up to 100 detections per image count):
    returns (mAP50, mAP50-95, per-class AP array (K, 2) of [ap50, ap]; NaN for classes with no
    ground truth)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    k = len(gt["categories"])
    if not gt["annotations"]:
        return 0.0, 0.0, np.full((k, 2), np.nan)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {**gt, "images": list(gt["images"])}
        coco.createIndex()
        if not dets:
            return 0.0, 0.0, np.zeros((k, 2))
        res = coco.loadRes([dict(d) for d in dets])  # loadRes mutates its input
        ev = COCOeval(coco, res, "bbox")  # default parameters, as any COCO tool re-scores
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    prec = ev.eval["precision"][:, :, :, 0, -1]  # (iou, recall, class), all areas, 100 dets
    per = np.full((k, 2), np.nan)
    for j in range(k):
        p = prec[:, :, j]
        if (p > -1).any():
            per[j, 0] = p[0][p[0] > -1].mean() if (p[0] > -1).any() else np.nan
            per[j, 1] = p[p > -1].mean()
    return float(max(ev.stats[1], 0.0)), float(max(ev.stats[0], 0.0)), per


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(br - tl, 0, None).prod(2)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None] - inter + 1e-9)


def precision_recall(dets: list[np.ndarray], gts: list[np.ndarray], nc: int,
                     iou_thr: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Per-class precision and recall at IoU ``iou_thr``, taken at the confidence that maximises
    the class-mean F1. ``dets``: (n, 6) xyxy/score/class per image; ``gts``: (m, 5)
    class/xyxy per image (same pixel space). Greedy matching, best score first."""
    scores, classes, tps = [], [], []
    n_gt = np.zeros(nc)
    for det, gt in zip(dets, gts, strict=True):
        for c in gt[:, 0].astype(int):
            n_gt[c] += 1
        order = np.argsort(-det[:, 4], kind="stable")
        det = det[order]
        used = np.zeros(len(gt), bool)
        ious = _iou(det[:, :4], gt[:, 1:]) if len(gt) and len(det) else np.zeros((len(det), 0))
        for i, d in enumerate(det):
            ok = (gt[:, 0] == d[5]) & ~used if len(gt) else np.zeros(0, bool)
            cand = np.where(ok, ious[i], -1) if len(gt) else np.zeros(0)
            j = int(cand.argmax()) if len(cand) else -1
            hit = j >= 0 and cand[j] >= iou_thr
            if hit:
                used[j] = True
            scores.append(d[4])
            classes.append(int(d[5]))
            tps.append(hit)
    scores, classes, tps = np.array(scores), np.array(classes, int), np.array(tps, bool)
    grid = np.linspace(0, 1, 1000)
    p_curve, r_curve = np.zeros((nc, len(grid))), np.zeros((nc, len(grid)))
    for c in range(nc):
        m = classes == c
        if not m.any() or n_gt[c] == 0:
            continue
        o = np.argsort(-scores[m], kind="stable")
        s, t = scores[m][o], tps[m][o]
        tpc, fpc = np.cumsum(t), np.cumsum(~t)
        recall, precision = tpc / n_gt[c], tpc / (tpc + fpc)
        # value at confidence threshold g: detections with score >= g
        idx = np.searchsorted(-s, -grid, side="right") - 1
        valid = idx >= 0
        r_curve[c, valid] = recall[idx[valid]]
        p_curve[c, valid] = precision[idx[valid]]
        p_curve[c, ~valid] = 1.0
    present = n_gt > 0
    if not present.any():
        return np.zeros(nc), np.zeros(nc)
    f1 = 2 * p_curve * r_curve / (p_curve + r_curve + 1e-16)
    best = int(f1[present].mean(0).argmax())
    return p_curve[:, best], r_curve[:, best]
