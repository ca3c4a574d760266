"""Multi-label NMS against a per-class reference built from torchvision.ops.nms."""

from __future__ import annotations

import torch
from torchvision.ops import nms

from mixprec.vision.boxes import decode
from mixprec.vision.postprocess import non_max_suppression


def _reference(boxes: torch.Tensor, probs: torch.Tensor, conf: float, iou: float) -> set:
    """Every (anchor box, class) with probability > conf, NMS'd within its class."""
    out = set()
    for c in range(probs.shape[1]):
        keep = probs[:, c] > conf
        b, s = boxes[keep], probs[keep, c]
        for k in nms(b, s, iou).tolist():
            out.add((*[round(v, 4) for v in b[k].tolist()], round(s[k].item(), 5), c))
    return out


def test_multi_label_nms_keeps_every_class_above_conf_like_per_class_nms():
    torch.manual_seed(0)
    nc, reg_max = 3, 16
    maps = [torch.randn(2, 4 * reg_max + nc, 4, 4) * 2, torch.randn(2, 4 * reg_max + nc, 2, 2) * 2]
    strides = torch.tensor([8.0, 16.0])
    boxes, probs = decode(maps, strides, reg_max, nc)
    conf, iou = 0.3, 0.5
    multi = non_max_suppression(maps, strides, reg_max, nc, conf, iou, multi_label=True)
    single = non_max_suppression(maps, strides, reg_max, nc, conf, iou)
    for i in range(2):
        got = {(*[round(v, 4) for v in d[:4].tolist()], round(d[4].item(), 5), int(d[5]))
               for d in multi[i]}
        assert got == _reference(boxes[i], probs[i], conf, iou)
        assert (multi[i][:-1, 4] >= multi[i][1:, 4]).all()  # best first
        # more than one class above conf somewhere, so multi-label finds more candidates
        assert ((probs[i] > conf).sum(1) > 1).any() and len(multi[i]) > len(single[i])
    capped = non_max_suppression(maps, strides, reg_max, nc, conf, iou, max_det=3, multi_label=True)
    assert all(torch.equal(c, m[:3]) for c, m in zip(capped, multi, strict=True))
