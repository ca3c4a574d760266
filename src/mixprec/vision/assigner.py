"""Task-aligned assignment (TOOD, Feng et al. 2021), as used by anchor-free YOLO detectors.

For each ground-truth box, the candidate anchors are those whose centre lies inside the box;
each candidate gets an alignment score ``cls_prob ** alpha * overlap ** beta`` and the ``topk``
best become positives. ``overlap`` is the Complete-IoU of the predicted and the true box, clamped
at 0 (as Ultralytics' assigner; plain IoU with ``ciou=False``). An anchor claimed by several boxes
keeps the box it overlaps most. Target class scores are the one-hot class times the alignment,
normalised so that each box's best positive anchor gets the best overlap *among that box's
positives*. FP32 throughout; no host synchronisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mixprec.vision.boxes import bbox_iou

__all__ = ["Assignment", "TaskAlignedAssigner"]


@dataclass
class Assignment:
    """Targets per anchor: ``boxes`` (B, A, 4) xyxy pixels, ``scores`` (B, A, nc) soft one-hot,
    ``fg`` (B, A) bool positives, ``gt_index`` (B, A) index of the assigned box."""

    boxes: torch.Tensor
    scores: torch.Tensor
    fg: torch.Tensor
    gt_index: torch.Tensor


class TaskAlignedAssigner:
    def __init__(self, nc: int, topk: int = 10, alpha: float = 0.5, beta: float = 6.0,
                 eps: float = 1e-9, ciou: bool = True):
        self.nc, self.topk, self.alpha, self.beta, self.eps = nc, topk, alpha, beta, eps
        self.ciou = ciou

    @torch.no_grad()
    def __call__(self, pred_scores: torch.Tensor, pred_boxes: torch.Tensor, points: torch.Tensor,
                 gt_labels: torch.Tensor, gt_boxes: torch.Tensor,
                 gt_mask: torch.Tensor) -> Assignment:
        """``pred_scores`` (B, A, nc) probabilities; ``pred_boxes`` (B, A, 4) xyxy pixels;
        ``points`` (A, 2) anchor centres in pixels; ``gt_labels`` (B, M, 1) int; ``gt_boxes``
        (B, M, 4) xyxy pixels; ``gt_mask`` (B, M, 1) true for real (non-padding) boxes."""
        b, a, nc = pred_scores.shape
        m = gt_boxes.shape[1]
        device = pred_scores.device
        if m == 0:
            return Assignment(torch.zeros_like(pred_boxes), torch.zeros_like(pred_scores),
                              torch.zeros(b, a, dtype=torch.bool, device=device),
                              torch.zeros(b, a, dtype=torch.long, device=device))
        # candidates: anchor centre strictly inside the gt box -> (B, M, A)
        lt = points[None, None] - gt_boxes[:, :, None, :2]
        rb = gt_boxes[:, :, None, 2:] - points[None, None]
        inside = torch.cat((lt, rb), -1).amin(-1) > self.eps
        valid = inside & gt_mask.bool()
        # alignment metric (B, M, A)
        labels = gt_labels.long().squeeze(-1).clamp(0, nc - 1)  # (B, M)
        cls_prob = pred_scores.gather(2, labels[:, None, :].expand(b, a, m)).transpose(1, 2)
        iou = bbox_iou(gt_boxes[:, :, None], pred_boxes[:, None], ciou=self.ciou).squeeze(-1).clamp(0)
        iou = torch.where(valid, iou, torch.zeros_like(iou))
        align = torch.where(valid, cls_prob.pow(self.alpha) * iou.pow(self.beta),
                            torch.zeros_like(iou))
        # top-k candidates per gt
        k = min(self.topk, a)
        top_idx = align.topk(k, dim=-1).indices  # (B, M, k)
        topk_mask = torch.zeros_like(align, dtype=torch.bool).scatter_(-1, top_idx, True)
        pos = topk_mask & valid  # (B, M, A)
        # resolve anchors assigned to several boxes: keep the highest IoU
        multi = pos.sum(1, keepdim=True) > 1
        best = torch.zeros_like(pos).scatter_(1, iou.max(1, keepdim=True).indices, True)
        pos = torch.where(multi.expand_as(pos), best & pos.any(1, keepdim=True), pos)
        fg = pos.any(1)  # (B, A)
        gt_index = pos.to(torch.uint8).max(1).indices  # (B, A); max: ~5x argmax on CPU
        # targets
        batch_off = torch.arange(b, device=device)[:, None] * m
        flat = (gt_index + batch_off).view(-1)
        t_boxes = gt_boxes.reshape(-1, 4)[flat].view(b, a, 4)
        t_labels = labels.reshape(-1)[flat].view(b, a)
        t_scores = torch.nn.functional.one_hot(t_labels, nc).float()
        t_scores = t_scores * fg[..., None]
        # normalise the alignment so each box's best anchor gets the best overlap among its
        # positives (not among all candidates: a high-IoU anchor left out of the top-k by its
        # class score must not set the scale)
        align = align * pos
        best_pos_iou = (iou * pos).amax(-1, keepdim=True)
        norm = (align * best_pos_iou / (align.amax(-1, keepdim=True) + self.eps))
        t_scores = t_scores * norm.amax(1)[..., None]
        return Assignment(t_boxes, t_scores, fg, gt_index)
