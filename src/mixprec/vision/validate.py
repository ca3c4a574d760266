"""Validation: run a detector over a letterboxed split (multi-label NMS: every class above
``conf`` is a candidate per anchor, as Ultralytics validates), score it with pycocotools, print the
YOLO table ``Class Images Instances P R mAP50 mAP50-95``, optionally write COCO JSON files and
annotated images."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from mixprec.io import atomic_write_text
from mixprec.vision.backend import Backend, as_backend
from mixprec.vision.boxes import xywh2xyxy
from mixprec.vision.metrics import (
    BoxMetrics,
    coco_evaluate,
    coco_ground_truth,
    coco_predictions,
    precision_recall,
)
from mixprec.vision.plotting import annotate, save_image
from mixprec.vision.postprocess import non_max_suppression, scale_boxes

__all__ = ["ValResults", "validate"]


@dataclass
class ValResults:
    """``box``: BoxMetrics (``box.map50``, ``box.map``...); ``loss``: mean val (box, cls, dfl)
    or None; ``speed``: ms per image (inference, postprocess)."""

    box: BoxMetrics
    loss: np.ndarray | None = None
    speed: dict[str, float] = field(default_factory=dict)
    predictions: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def fitness(self) -> float:
        return self.box.fitness


def _table(names: dict[int, str], images: int, instances: int, m: BoxMetrics,
           per_class: bool) -> str:
    head = f"{'Class':>22}{'Images':>11}{'Instances':>11}{'P':>11}{'R':>11}{'mAP50':>11}" \
           f"{'mAP50-95':>11}"
    rows = [head, f"{'all':>22}{images:>11}{instances:>11}{m.mp:>11.3g}{m.mr:>11.3g}"
                  f"{m.map50:>11.3g}{m.map:>11.3g}"]
    if per_class:
        for name, (ni, nt, p, r, a50, a) in m.per_class.items():
            rows.append(f"{name:>22}{ni:>11}{nt:>11}{p:>11.3g}{r:>11.3g}{a50:>11.3g}{a:>11.3g}")
    return "\n".join(rows)


@torch.no_grad()
def validate(model: torch.nn.Module | Backend, loader: DataLoader, names: dict[int, str],
             autocast: Callable[[], Any] | None = None, loss_fn: Callable | None = None,
             conf: float = 0.001, iou: float = 0.7, max_det: int = 300,
             save_dir: Path | None = None, save_json: bool = False, plots: bool = False,
             per_class: bool = False, verbose: bool = True) -> ValResults:
    """Evaluate ``model`` (a module: eval mode inside, restored after; or a backend such as
    ``mixprec.export.OnnxBackend``, see ``mixprec.vision.backend``) on ``loader`` (a
    non-augmented loader from ``build_dataloader``). ``autocast``: a context factory such as
    ``prec.autocast`` (None: FP32; ignored by non-torch backends). Synchronises with the host
    once per batch (NMS)."""
    with as_backend(model, autocast) as run:
        return _validate(run, loader, names, loss_fn, conf, iou, max_det, save_dir, save_json,
                         plots, per_class, verbose)


def _validate(run: Backend, loader: DataLoader, names: dict[int, str], loss_fn: Callable | None,
              conf: float, iou: float, max_det: int, save_dir: Path | None, save_json: bool,
              plots: bool, per_class: bool, verbose: bool) -> ValResults:
    head, device = run.head, run.device
    ds = loader.dataset
    images_meta, gt_labels, dets_orig, gts_orig, coco_dets = [], [], [], [], []
    losses, t_inf, t_post = [], 0.0, 0.0
    plotted = 0
    for batch in loader:
        x = batch["images"].to(device).float() / 255
        t0 = time.perf_counter()
        maps = run(x)
        if loss_fn is not None:
            losses.append(loss_fn(maps, batch["targets"])[1].cpu().numpy())
        t1 = time.perf_counter()
        preds = non_max_suppression(maps, head.stride, head.reg_max, head.nc, conf, iou, max_det,
                                    multi_label=True)
        t_inf, t_post = t_inf + t1 - t0, t_post + time.perf_counter() - t1
        for i, det in enumerate(preds):
            path, shape, rp = batch["paths"][i], batch["shapes"][i], batch["ratio_pad"][i]
            image_id = len(images_meta) + 1
            lab = ds.index.labels[batch["indices"][i]]
            images_meta.append({"id": image_id, "file_name": Path(path).name,
                                "width": int(shape[0]), "height": int(shape[1])})
            gt_labels.append(lab)
            det_o = det.clone().cpu()
            det_o[:, :4] = scale_boxes(det_o[:, :4], rp, shape)
            dets_orig.append(det_o.numpy())
            g = np.zeros((len(lab), 5), np.float32)
            if len(lab):
                g[:, 0] = lab[:, 0]
                g[:, 1:] = xywh2xyxy(torch.from_numpy(lab[:, 1:])).numpy() * \
                    np.array([shape[0], shape[1], shape[0], shape[1]], np.float32)
            gts_orig.append(g)
            coco_dets += coco_predictions(image_id, det_o.numpy())
        if plots and save_dir is not None and plotted < 2:
            _plot_batch(batch, preds, names, save_dir, plotted)
            plotted += 1
    gt = coco_ground_truth(images_meta, gt_labels, names)
    map50, map_, per_ap = coco_evaluate(gt, coco_dets)
    p, r = precision_recall(dets_orig, gts_orig, len(names))
    n_inst = np.bincount(np.concatenate([g[:, 0].astype(int) for g in gts_orig] or [[]])
                         .astype(int), minlength=len(names))
    n_img = np.array([sum(int((g[:, 0] == c).any()) for g in gts_orig) for c in range(len(names))])
    present = n_inst > 0
    m = BoxMetrics(float(p[present].mean()) if present.any() else 0.0,
                   float(r[present].mean()) if present.any() else 0.0, map50, map_)
    for c, name in names.items():
        if present[c]:
            m.per_class[name] = (int(n_img[c]), int(n_inst[c]), float(p[c]), float(r[c]),
                                 float(np.nan_to_num(per_ap[c, 0])), float(np.nan_to_num(per_ap[c, 1])))
    if save_json and save_dir is not None:
        atomic_write_text(Path(save_dir) / "predictions.json", json.dumps(coco_dets))
        atomic_write_text(Path(save_dir) / "ground_truth.json", json.dumps(gt))
    n = max(len(images_meta), 1)
    res = ValResults(m, np.mean(losses, 0) if losses else None,
                     {"inference": 1e3 * t_inf / n, "postprocess": 1e3 * t_post / n}, coco_dets)
    if verbose:
        print(_table(names, len(images_meta), int(n_inst.sum()), m, per_class))
    return res


def _plot_batch(batch: dict[str, Any], preds: list[torch.Tensor], names: dict[int, str],
                save_dir: Path, k: int) -> None:
    """Save the first image of a batch with its labels and with its predictions (score > 0.25)."""
    img = batch["images"][0].permute(1, 2, 0).cpu().numpy()
    t = batch["targets"][batch["targets"][:, 0] == 0]
    s = img.shape[0]
    save_image(annotate(img, (xywh2xyxy(t[:, 2:]) * s).numpy(), t[:, 1].numpy(), names),
               Path(save_dir) / f"val_batch{k}_labels.jpg")
    d = preds[0][preds[0][:, 4] > 0.25].cpu().numpy()
    save_image(annotate(img, d[:, :4], d[:, 5], names, d[:, 4]),
               Path(save_dir) / f"val_batch{k}_pred.jpg")
