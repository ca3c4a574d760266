"""Box geometry: formats, IoU/CIoU, anchor points, distance <-> box, and decoding head maps.

Pure tensor functions; they run in the dtype of their inputs (callers pass FP32) and never
synchronise with the host.
"""

from __future__ import annotations

import math

import torch

__all__ = ["bbox2dist", "bbox_iou", "decode", "dist2bbox", "make_anchors", "split_head",
           "xywh2xyxy", "xyxy2xywh"]


def xywh2xyxy(b: torch.Tensor) -> torch.Tensor:
    """(cx, cy, w, h) -> (x1, y1, x2, y2), last dimension."""
    xy, wh = b[..., :2], b[..., 2:4] / 2
    return torch.cat((xy - wh, xy + wh), -1)


def xyxy2xywh(b: torch.Tensor) -> torch.Tensor:
    """(x1, y1, x2, y2) -> (cx, cy, w, h), last dimension."""
    return torch.cat(((b[..., :2] + b[..., 2:4]) / 2, b[..., 2:4] - b[..., :2]), -1)


def bbox_iou(a: torch.Tensor, b: torch.Tensor, ciou: bool = False, eps: float = 1e-7) -> torch.Tensor:
    """IoU (or Complete-IoU, Zheng et al. 2020) of xyxy boxes ``a`` and ``b`` (broadcast over
    leading dims); returns shape ``(..., 1)``."""
    ax1, ay1, ax2, ay2 = a.chunk(4, -1)
    bx1, by1, bx2, by2 = b.chunk(4, -1)
    w1, h1 = ax2 - ax1, (ay2 - ay1).clamp(min=eps)
    w2, h2 = bx2 - bx1, (by2 - by1).clamp(min=eps)
    inter = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp(min=0) * \
            (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp(min=0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    if not ciou:
        return iou
    cw = torch.maximum(ax2, bx2) - torch.minimum(ax1, bx1)
    ch = torch.maximum(ay2, by2) - torch.minimum(ay1, by1)
    c2 = cw ** 2 + ch ** 2 + eps  # squared diagonal of the enclosing box
    rho2 = ((bx1 + bx2 - ax1 - ax2) ** 2 + (by1 + by2 - ay1 - ay2) ** 2) / 4
    v = (4 / math.pi ** 2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)).pow(2)
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)


def make_anchors(shapes: list[tuple[int, int]], strides: torch.Tensor, offset: float = 0.5,
                 device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Cell-centre points (A, 2) in grid units of their level, and their strides (A, 1), FP32,
    for feature maps of the given (H, W) shapes."""
    points, stride_t = [], []
    for (h, w), s in zip(shapes, strides.tolist(), strict=True):
        sy = torch.arange(h, device=device, dtype=torch.float32) + offset
        sx = torch.arange(w, device=device, dtype=torch.float32) + offset
        yy, xx = torch.meshgrid(sy, sx, indexing="ij")
        points.append(torch.stack((xx, yy), -1).view(-1, 2))
        stride_t.append(torch.full((h * w, 1), s, device=device, dtype=torch.float32))
    return torch.cat(points), torch.cat(stride_t)


def dist2bbox(dist: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Distances (l, t, r, b) from ``points`` (x, y) -> xyxy boxes, same units."""
    lt, rb = dist.chunk(2, -1)
    return torch.cat((points - lt, points + rb), -1)


def bbox2dist(points: torch.Tensor, boxes: torch.Tensor, limit: float) -> torch.Tensor:
    """xyxy boxes -> distances (l, t, r, b) from ``points``, clamped to [0, limit]."""
    x1y1, x2y2 = boxes.chunk(2, -1)
    return torch.cat((points - x1y1, x2y2 - points), -1).clamp_(0, limit)


def split_head(maps: list[torch.Tensor], reg_max: int, nc: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flatten the per-level head maps into box-distribution logits (B, A, 4*reg_max) and class
    logits (B, A, nc), cast to FP32."""
    b = maps[0].shape[0]
    flat = torch.cat([m.reshape(b, 4 * reg_max + nc, -1) for m in maps], 2).float()
    return flat[:, : 4 * reg_max].transpose(1, 2), flat[:, 4 * reg_max:].transpose(1, 2)


def expected_distance(distri: torch.Tensor, reg_max: int) -> torch.Tensor:
    """Softmax expectation of each side's distance distribution: (B, A, 4*reg_max) -> (B, A, 4)."""
    b, a, _ = distri.shape
    bins = torch.arange(reg_max, device=distri.device, dtype=distri.dtype)
    return distri.view(b, a, 4, reg_max).softmax(3).matmul(bins)


def decode(maps: list[torch.Tensor], strides: torch.Tensor, reg_max: int,
           nc: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Head maps -> xyxy boxes in input pixels (B, A, 4) and class probabilities (B, A, nc), FP32."""
    distri, logits = split_head(maps, reg_max, nc)
    points, stride = make_anchors([m.shape[-2:] for m in maps], strides, device=distri.device)
    boxes = dist2bbox(expected_distance(distri, reg_max), points) * stride
    return boxes, logits.sigmoid()
