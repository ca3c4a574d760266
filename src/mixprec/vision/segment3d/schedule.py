"""Poly learning-rate decay (nnU-Net's: ``(1 - t) ** 0.9``) for the shared loop's ``Schedule``
(which adds the linear warmup), and a standalone ``poly_lr`` with warmup for other loops (the
MONAI comparison benchmark). Pure functions of the step: resuming needs only the step counter.
"""

from __future__ import annotations

__all__ = ["poly_decay", "poly_lr"]


def poly_decay(t: float, exponent: float = 0.9) -> float:
    """LR factor at training progress ``t`` in [0, 1]: ``(1 - t) ** exponent``."""
    return max(1.0 - t, 0.0) ** exponent


def poly_lr(step: int, total: int, lr0: float, warmup: int = 0, exponent: float = 0.9) -> float:
    """``lr0 * (step + 1) / warmup`` during warmup, then ``lr0 * poly_decay(t)`` with ``t`` the
    post-warmup progress."""
    if total < 1 or not 0 <= warmup < total:
        raise ValueError(f"need total >= 1 and 0 <= warmup < total, got total={total}, warmup={warmup}")
    if step < warmup:
        return lr0 * (step + 1) / warmup
    return lr0 * poly_decay((step - warmup) / (total - warmup), exponent)
