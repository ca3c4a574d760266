"""Detection loss: task-aligned assignment + BCE classification + CIoU box + distribution focal.

``DetectionLoss(model)(maps, targets)`` returns ``(loss, items)``: ``loss`` is a FP32 scalar to
back-propagate (the gain-weighted sum times the batch size, as YOLO does, so the nominal-batch
gradient accumulation keeps its scale) and ``items`` a detached FP32 tensor
``(box, cls, dfl)`` for logging. The head maps may be FP16/BF16 (autocast); the loss casts them
to FP32 first, so it is safe under every precision policy. No host synchronisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mixprec.vision.assigner import TaskAlignedAssigner
from mixprec.vision.boxes import (
    bbox2dist,
    bbox_iou,
    dist2bbox,
    expected_distance,
    make_anchors,
    split_head,
    xywh2xyxy,
)

__all__ = ["DetectionLoss", "dfl_loss", "pad_targets"]


def pad_targets(targets: torch.Tensor, batch_size: int, scale: torch.Tensor) -> torch.Tensor:
    """(N, 6) rows ``[image_index, class, cx, cy, w, h]`` (normalised) -> (B, M, 5) rows
    ``[class, x1, y1, x2, y2]`` in pixels (``scale`` = (w, h, w, h)), zero-padded."""
    counts = torch.bincount(targets[:, 0].long(), minlength=batch_size) if len(targets) else \
        torch.zeros(batch_size, dtype=torch.long)
    m = int(counts.max()) if len(targets) else 0  # host sync: size of the padded tensor
    out = torch.zeros(batch_size, m, 5, device=targets.device)
    if m:
        idx = targets[:, 0].long()
        order = torch.argsort(idx, stable=True)
        idx, rows = idx[order], targets[order]
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(len(rows), device=targets.device) - starts.to(targets.device)[idx]
        out[idx, slot, 0] = rows[:, 1]
        out[idx, slot, 1:] = xywh2xyxy(rows[:, 2:6]) * scale
    return out


def dfl_loss(distri: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Distribution focal loss (Li et al. 2020): cross-entropy to the two bins around each
    continuous target distance, weighted by proximity. ``distri`` (N, 4, reg_max) logits,
    ``target`` (N, 4) in [0, reg_max - 1); returns (N, 1)."""
    left = target.long()
    right = left + 1
    wl = right.float() - target
    wr = 1 - wl
    n, sides, reg_max = distri.shape
    flat = distri.reshape(-1, reg_max)
    ce_l = F.cross_entropy(flat, left.view(-1), reduction="none").view(n, sides)
    ce_r = F.cross_entropy(flat, right.view(-1), reduction="none").view(n, sides)
    return (ce_l * wl + ce_r * wr).mean(-1, keepdim=True)


class DetectionLoss:
    """Loss for ``DetectionModel`` outputs; gains ``box``, ``cls``, ``dfl`` default to YOLO's
    7.5, 0.5, 1.5."""

    def __init__(self, model: nn.Module, box: float = 7.5, cls: float = 0.5, dfl: float = 1.5,
                 topk: int = 10):
        head = model.head
        self.nc, self.reg_max = head.nc, head.reg_max
        self.strides = head.stride.clone()
        self.gains = (box, cls, dfl)
        self.assigner = TaskAlignedAssigner(self.nc, topk=topk)

    def __call__(self, maps: list[torch.Tensor], targets: torch.Tensor) -> tuple[torch.Tensor,
                                                                                 torch.Tensor]:
        """``maps``: head outputs; ``targets``: (N, 6) ``[image_index, class, cx, cy, w, h]``
        normalised to the input image size."""
        distri, logits = split_head(maps, self.reg_max, self.nc)
        b = logits.shape[0]
        device = logits.device
        s0 = float(self.strides[0])
        h, w = maps[0].shape[-2] * s0, maps[0].shape[-1] * s0  # input size in pixels
        points, stride = make_anchors([m.shape[-2:] for m in maps], self.strides, device=device)
        gt = pad_targets(targets.to(device).float(), b,
                         torch.tensor([w, h, w, h], device=device, dtype=torch.float32))
        gt_labels, gt_boxes = gt[..., :1], gt[..., 1:]
        gt_mask = gt_boxes.sum(-1, keepdim=True) > 0
        pred_boxes = dist2bbox(expected_distance(distri, self.reg_max), points)  # grid units
        assign = self.assigner(logits.detach().sigmoid(), (pred_boxes.detach() * stride),
                               points * stride, gt_labels, gt_boxes, gt_mask)
        score_sum = assign.scores.sum().clamp(min=1.0)
        loss_cls = F.binary_cross_entropy_with_logits(logits, assign.scores, reduction="sum")
        loss_cls = loss_cls / score_sum
        fg = assign.fg
        zero = logits.new_zeros(())
        loss_box, loss_dfl = zero, zero
        if fg.any():  # host sync: skip the box terms on background-only batches
            weight = assign.scores.sum(-1)[fg].unsqueeze(-1)
            t_boxes = assign.boxes / stride
            iou = bbox_iou(pred_boxes[fg], t_boxes[fg], ciou=True)
            loss_box = ((1.0 - iou) * weight).sum() / score_sum
            t_dist = bbox2dist(points, t_boxes, self.reg_max - 1 - 0.01)
            d = dfl_loss(distri[fg].view(-1, 4, self.reg_max), t_dist[fg])
            loss_dfl = (d * weight).sum() / score_sum
        items = torch.stack((loss_box * self.gains[0], loss_cls * self.gains[1],
                             loss_dfl * self.gains[2]))
        return items.sum() * b, items.detach()
