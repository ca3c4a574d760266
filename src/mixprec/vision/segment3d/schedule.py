"""Poly learning-rate schedule with linear warmup (nnU-Net's poly, exponent 0.9).

``poly_lr(step, total, lr0, warmup)``: ``lr0 * step / warmup`` during warmup (from
``lr0 / warmup``), then ``lr0 * (1 - t)**0.9`` with ``t`` the post-warmup progress in [0, 1).
A pure function of the step, so resuming needs only the step counter.
"""

from __future__ import annotations

import torch

__all__ = ["poly_lr", "set_lr"]


def poly_lr(step: int, total: int, lr0: float, warmup: int = 0, exponent: float = 0.9) -> float:
    if total < 1 or not 0 <= warmup < total:
        raise ValueError(f"need total >= 1 and 0 <= warmup < total, got total={total}, warmup={warmup}")
    if step < warmup:
        return lr0 * (step + 1) / warmup
    t = (step - warmup) / (total - warmup)
    return lr0 * max(1.0 - t, 0.0) ** exponent


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
