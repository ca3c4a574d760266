"""Head maps -> final detections: decode, confidence filter, class-aware NMS
(``torchvision.ops.batched_nms``), and mapping back to original image pixels."""

from __future__ import annotations

import torch
from torchvision.ops import batched_nms

from mixprec.vision.boxes import decode

__all__ = ["non_max_suppression", "scale_boxes"]


def non_max_suppression(maps: list[torch.Tensor], strides: torch.Tensor, reg_max: int, nc: int,
                        conf: float = 0.001, iou: float = 0.7, max_det: int = 300,
                        max_candidates: int = 10000, multi_label: bool = False) -> list[torch.Tensor]:
    """One FP32 tensor (n, 6) ``[x1, y1, x2, y2, score, class]`` per image, in input pixels,
    best first. Each anchor votes for its best class, or with ``multi_label`` for every class
    whose probability exceeds ``conf`` (one candidate per anchor and class, as Ultralytics'
    validator scores). Synchronises with the host (NMS)."""
    boxes, probs = decode(maps, strides, reg_max, nc)
    out = []
    for b, p in zip(boxes, probs, strict=True):
        if multi_label and nc > 1:
            anchor, cls = (p > conf).nonzero(as_tuple=True)
            b, score = b[anchor], p[anchor, cls]
        else:
            score, cls = p.max(1)
            keep = score > conf
            b, score, cls = b[keep], score[keep], cls[keep]
        if len(score) > max_candidates:
            top = score.topk(max_candidates).indices
            b, score, cls = b[top], score[top], cls[top]
        k = batched_nms(b, score, cls, iou)[:max_det]
        out.append(torch.cat((b[k], score[k, None], cls[k, None].float()), 1))
    return out


def scale_boxes(boxes: torch.Tensor, ratio_pad: tuple[float, tuple[float, float]],
                shape: tuple[int, int]) -> torch.Tensor:
    """Letterboxed xyxy pixels -> original image pixels (clipped to ``shape`` = (w, h))."""
    r, (left, top) = ratio_pad
    out = boxes.clone()
    out[:, [0, 2]] = ((out[:, [0, 2]] - left) / r).clamp(0, shape[0])
    out[:, [1, 3]] = ((out[:, [1, 3]] - top) / r).clamp(0, shape[1])
    return out
