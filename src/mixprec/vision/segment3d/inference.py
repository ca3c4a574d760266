"""Sliding-window inference with Gaussian weighting over whole volumes (nnU-Net's scheme).

Windows of ``patch`` step by at most ``patch * (1 - overlap)`` and cover the volume evenly;
each window's logits are weighted by a Gaussian (sigma = patch / 8 per axis, peak 1, floored at
its smallest positive value so no voxel gets weight 0) and accumulated in FP32; the result is
the weighted average. A volume smaller than the patch is zero-padded and cropped back.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import product

import torch
import torch.nn.functional as F

__all__ = ["gaussian_weight", "sliding_window", "window_starts"]


def gaussian_weight(patch: tuple[int, int, int], sigma_scale: float = 0.125,
                    device: torch.device | None = None) -> torch.Tensor:
    """Importance map ``patch``-shaped, FP32, max 1, min > 0."""
    axes = []
    for n in patch:
        c = (n - 1) / 2
        t = torch.arange(n, dtype=torch.float32, device=device)
        axes.append(torch.exp(-0.5 * ((t - c) / (n * sigma_scale)) ** 2))
    w = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    w = w / w.max()
    return w.clamp_min(w[w > 0].min())


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Evenly spaced window starts covering ``[0, size)`` with step <= patch * (1 - overlap)."""
    if size <= patch:
        return [0]
    step = patch * (1 - overlap)
    n = math.ceil((size - patch) / step) + 1
    return [round(i * (size - patch) / (n - 1)) for i in range(n)]


@torch.no_grad()
def sliding_window(volume: torch.Tensor, predictor: Callable[[torch.Tensor], torch.Tensor],
                   patch: tuple[int, int, int], nc: int, overlap: float = 0.5, sw_batch: int = 1,
                   gaussian: bool = True) -> torch.Tensor:
    """Logits ``(B, nc, x, y, z)`` FP32 for ``volume`` ``(B, C, x, y, z)``; ``predictor`` maps a
    ``(n, C, *patch)`` batch of windows to ``(n, nc, *patch)`` logits (any float dtype)."""
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap={overlap}: must be in [0, 1)")
    spatial = volume.shape[2:]
    pad = [max(p - s, 0) for s, p in zip(spatial, patch, strict=True)]
    if any(pad):
        volume = F.pad(volume, [v for p in reversed(pad) for v in (p // 2, p - p // 2)])
    shape = volume.shape[2:]
    weight = gaussian_weight(patch, device=volume.device) if gaussian else \
        torch.ones(patch, device=volume.device)
    out = torch.zeros((volume.shape[0], nc, *shape), dtype=torch.float32, device=volume.device)
    norm = torch.zeros(shape, dtype=torch.float32, device=volume.device)
    starts = list(product(*(window_starts(s, p, overlap) for s, p in zip(shape, patch, strict=True))))
    for b in range(volume.shape[0]):
        for i in range(0, len(starts), sw_batch):
            chunk = starts[i:i + sw_batch]
            windows = torch.cat([volume[b:b + 1, :, x:x + patch[0], y:y + patch[1], z:z + patch[2]]
                                 for x, y, z in chunk])
            logits = predictor(windows).float()
            for (x, y, z), lg in zip(chunk, logits, strict=True):
                out[b, :, x:x + patch[0], y:y + patch[1], z:z + patch[2]] += lg * weight
                if b == 0:
                    norm[x:x + patch[0], y:y + patch[1], z:z + patch[2]] += weight
    out /= norm
    if any(pad):
        lo = [p // 2 for p in pad]
        out = out[:, :, lo[0]:lo[0] + spatial[0], lo[1]:lo[1] + spatial[1], lo[2]:lo[2] + spatial[2]]
    return out
