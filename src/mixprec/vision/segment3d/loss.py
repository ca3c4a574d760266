"""Dice + cross-entropy loss, computed in FP32 whatever the forward's precision.

``DiceCELoss(nc)(logits, target)``: ``logits`` ``(B, nc, x, y, z)`` (any float dtype; upcast to
FP32 here) or a list of them for deep supervision (full resolution first; level k is compared
with the target subsampled by 2**k, weights 1/2**k normalised, as nnU-Net does); ``target``
``(B, x, y, z)`` integer class ids. Loss = CE (mean over voxels) + (1 - soft Dice), where soft
Dice is computed per sample and per foreground class, smooth terms 1e-5 (MONAI's defaults), and
averaged. Returns ``(loss, (ce, dice_loss))``, the parts detached. No host synchronisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["DiceCELoss", "soft_dice_loss"]


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """1 - mean soft Dice over samples and foreground classes; FP32 math."""
    nc = logits.shape[1]
    probs = torch.softmax(logits.float(), 1)[:, 1:]
    onehot = F.one_hot(target.long(), nc).movedim(-1, 1)[:, 1:].float()
    dims = tuple(range(2, probs.ndim))
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    return 1.0 - ((2 * inter + smooth) / (denom + smooth)).mean()


class DiceCELoss:
    def __init__(self, nc: int, ce_weight: float = 1.0, dice_weight: float = 1.0):
        self.nc, self.ce_weight, self.dice_weight = nc, ce_weight, dice_weight

    def _one(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = logits.float()
        return F.cross_entropy(logits, target.long()), soft_dice_loss(logits, target)

    def __call__(self, logits: torch.Tensor | list[torch.Tensor],
                 target: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        outs = logits if isinstance(logits, (list, tuple)) else [logits]
        # Python floats (not a tensor's .tolist()): torch.compile traces the loss without a break;
        # the products with FP32 tensors round them to the same FP32 weights as before
        total = sum(0.5 ** k for k in range(len(outs)))
        weights = [0.5 ** k / total for k in range(len(outs))]
        ce_total = dice_total = None
        for k, (w, out) in enumerate(zip(weights, outs, strict=True)):
            s = 2 ** k
            t = target[:, ::s, ::s, ::s] if s > 1 else target
            ce, dice = self._one(out, t)
            ce_total = w * ce if ce_total is None else ce_total + w * ce
            dice_total = w * dice if dice_total is None else dice_total + w * dice
        assert ce_total is not None and dice_total is not None
        loss = self.ce_weight * ce_total + self.dice_weight * dice_total
        return loss, (ce_total.detach(), dice_total.detach())
