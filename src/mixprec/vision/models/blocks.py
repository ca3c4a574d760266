"""Building blocks of the detector: Conv-BN-SiLU, C2f (CSP), SPPF, Concat and the decoupled head.

All blocks compute in the dtype of their input (FP32 by default, FP16/BF16 under autocast);
none of them synchronises with the host.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["SPPF", "Bottleneck", "C2f", "Concat", "Conv", "DWConv", "Detect", "Upsample"]


class Conv(nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> SiLU, 'same' padding for odd kernels."""

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, g: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=1e-3, momentum=0.1)
        # not in place: SiLU's backward needs its input, so under autograd an in-place SiLU
        # first clones it -- a full extra copy of every activation per training step, for
        # the same memory (the clone is what is saved); inference holds one more activation
        # for a moment
        self.act = nn.SiLU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class DWConv(Conv):
    """Depthwise Conv-BN-SiLU (groups = gcd of channels)."""

    def __init__(self, c1: int, c2: int, k: int = 3, s: int = 1, act: bool = True):
        super().__init__(c1, c2, k, s, g=math.gcd(c1, c2), act=act)


class Bottleneck(nn.Module):
    """Two 3x3 Conv-BN-SiLU with an optional residual connection."""

    def __init__(self, c1: int, c2: int, shortcut: bool = True, e: float = 1.0):
        super().__init__()
        hidden = int(c2 * e)
        self.cv1 = Conv(c1, hidden, 3)
        self.cv2 = Conv(hidden, c2, 3)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """CSP block: split into two halves, run ``n`` bottlenecks on one half, concatenate every
    intermediate output and fuse with a 1x1 conv."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False, e: float = 0.5):
        super().__init__()
        self.c = int(c2 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, self.c, shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ys = list(self.cv1(x).chunk(2, 1))
        for m in self.m:
            ys.append(m(ys[-1]))
        return self.cv2(torch.cat(ys, 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling (fast): three chained max-pools, concatenated."""

    def __init__(self, c1: int, c2: int, k: int = 5):
        super().__init__()
        hidden = c1 // 2
        self.cv1 = Conv(c1, hidden, 1)
        self.cv2 = Conv(hidden * 4, c2, 1)
        self.pool = nn.MaxPool2d(k, 1, k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ys = [self.cv1(x)]
        for _ in range(3):
            ys.append(self.pool(ys[-1]))
        return self.cv2(torch.cat(ys, 1))


class Concat(nn.Module):
    """Concatenate a list of tensors along channels."""

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs, 1)


class Upsample(nn.Upsample):
    """Nearest-neighbour upsampling by an integer factor."""

    def __init__(self, scale: int = 2):
        super().__init__(scale_factor=scale, mode="nearest")


class Detect(nn.Module):
    """Decoupled anchor-free head at several strides.

    Per level: a box branch (two 3x3 convs of ``box_ch[level]`` channels -> ``4 * reg_max``
    logits, the distribution of the distances left/top/right/bottom in grid units) and a class
    branch (``cls_head="dw"``: depthwise-separable convs, as YOLO11; ``"v8"``: two 3x3 Conv-BN-SiLU
    of ``max(ch[0], min(nc, 100))`` channels, as YOLOv8 -> ``nc`` logits). ``box_ch`` defaults to YOLOv8's
    ``max(16, ch[0] // 4, 4 * reg_max)`` at every level; a YAML may narrow it where the maps are
    largest. ``forward`` returns one raw map per level, shape (B, 4*reg_max + nc, H, W),
    in the compute dtype; decoding lives in ``mixprec.vision.boxes.decode``.
    """

    def __init__(self, nc: int, ch: tuple[int, ...], reg_max: int = 16,
                 box_ch: list[int] | None = None, cls_head: str = "dw"):
        super().__init__()
        self.nc, self.reg_max, self.nl = nc, reg_max, len(ch)
        self.no = 4 * reg_max + nc
        self.stride = torch.zeros(self.nl)  # set by the model after a dry run
        if box_ch is None:
            box_ch = [max(16, ch[0] // 4, 4 * reg_max)] * self.nl
        if len(box_ch) != self.nl or min(box_ch) < 1:
            raise ValueError(f"Detect box_ch={box_ch}: give one positive width per level ({self.nl})")
        if cls_head not in ("dw", "v8"):
            raise ValueError(f"Detect cls_head={cls_head!r}: use 'dw' (depthwise-separable) or 'v8'")
        c3 = max(ch[0], min(nc, 100))
        self.box = nn.ModuleList(
            nn.Sequential(Conv(c, c2, 3), Conv(c2, c2, 3), nn.Conv2d(c2, 4 * reg_max, 1))
            for c, c2 in zip(ch, box_ch, strict=True))
        if cls_head == "v8":  # YOLOv8: two full 3x3 convs
            self.cls = nn.ModuleList(
                nn.Sequential(Conv(c, c3, 3), Conv(c3, c3, 3), nn.Conv2d(c3, nc, 1)) for c in ch)
        else:  # YOLO11-style: depthwise 3x3 + pointwise, twice
            self.cls = nn.ModuleList(
                nn.Sequential(DWConv(c, c, 3), Conv(c, c3, 1), DWConv(c3, c3, 3), Conv(c3, c3, 1),
                              nn.Conv2d(c3, nc, 1)) for c in ch)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [torch.cat((b(x), c(x)), 1) for x, b, c in zip(xs, self.box, self.cls, strict=True)]

    def init_biases(self, imgsz: int = 640) -> None:
        """Box logits start flat; class logits start at a prior of ~5 objects per image."""
        for b, c, s in zip(self.box, self.cls, self.stride.tolist(), strict=True):
            nn.init.constant_(b[-1].bias, 1.0)
            nn.init.constant_(c[-1].bias, math.log(5 / self.nc / (imgsz / s) ** 2))
