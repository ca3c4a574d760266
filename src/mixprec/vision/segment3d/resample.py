"""Resampling to a common voxel spacing (nnU-Net's preprocessing step), with torch's
``F.interpolate``: images trilinear, label maps nearest (class ids stay class ids), and class
probabilities trilinear back onto each input's own grid at prediction.

A volume of ``n`` voxels at spacing ``s`` becomes ``max(1, round(n * s / t))`` voxels at the
target ``t`` along each axis; interpolation treats voxels as cells (``align_corners=False``),
so the volume keeps its physical extent and the affine is rescaled about the cell centres.
Volumes whose spacing already equals the target (within 0.1%) are left untouched.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["median_spacing", "parse_spacing", "resample_case", "resample_image", "resample_label",
           "resample_probabilities", "resampled_affine", "resampled_shape", "same_spacing"]

Spacing = tuple[float, float, float]


def parse_spacing(value: Any) -> str | Spacing | None:
    """``"auto"`` (the median spacing of the training cases), None (``none``/False: keep the
    voxels as they are), or three positive floats (``"1.5,1.5,3"`` / a list) in mm."""
    if value is None or value is False or str(value).strip().lower() in ("none", "false", ""):
        return None
    if str(value).strip().lower() == "auto":
        return "auto"
    items = value if isinstance(value, (list, tuple)) else str(value).replace(" ", "").split(",")
    try:
        sp = tuple(float(v) for v in items)
    except ValueError:
        sp = ()
    if len(sp) != 3 or min(sp) <= 0:
        raise ValueError(f"spacing={value!r}: use auto (median of the training cases), none (keep "
                         "the voxels) or three positive mm values x,y,z such as 1.5,1.5,3")
    return sp  # type: ignore[return-value]


def median_spacing(spacings: list[Spacing]) -> Spacing:
    """Per-axis median, as nnU-Net picks its target spacing."""
    return tuple(float(v) for v in np.median(np.asarray(spacings, dtype=np.float64), axis=0))  # type: ignore[return-value]


def same_spacing(a: Spacing, b: Spacing, rtol: float = 1e-3) -> bool:
    return bool(np.allclose(a, b, rtol=rtol, atol=0.0))


def resampled_shape(shape: tuple[int, ...], spacing: Spacing, target: Spacing) -> tuple[int, int, int]:
    return tuple(max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, target, strict=True))  # type: ignore[return-value]


def resampled_affine(affine: np.ndarray, shape: tuple[int, ...], new_shape: tuple[int, ...]) -> np.ndarray:
    """The affine of a volume of ``shape`` resampled to ``new_shape`` over the same extent: new
    voxel ``i`` sits at old voxel coordinate ``(i + 0.5) * f - 0.5``, ``f = shape / new_shape``."""
    f = np.asarray(shape, dtype=np.float64) / np.asarray(new_shape, dtype=np.float64)
    zoom = np.eye(4)
    zoom[:3, :3] = np.diag(f)
    zoom[:3, 3] = (f - 1) / 2
    return np.asarray(affine, dtype=np.float64) @ zoom


def resample_image(image: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """``(C, x, y, z)`` float32 -> ``(C, *shape)`` float32, trilinear."""
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    out = F.interpolate(t, size=shape, mode="trilinear", align_corners=False)
    return out[0].numpy()


def resample_label(label: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """``(x, y, z)`` class ids -> ``(*shape)`` uint8, nearest neighbour (no new values)."""
    t = torch.from_numpy(np.ascontiguousarray(label)).to(torch.float32)[None, None]
    out = F.interpolate(t, size=shape, mode="nearest-exact")
    return out[0, 0].to(torch.uint8).numpy()


def resample_probabilities(probs: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``(nc, x, y, z)`` FP32 class probabilities -> ``(nc, *shape)``, trilinear (on their device);
    still a distribution per voxel (a convex combination of distributions)."""
    return F.interpolate(probs[None].float(), size=tuple(shape), mode="trilinear", align_corners=False)[0]


def resample_case(case: Any, target: Spacing, nc: int, fg_sample: Any) -> Any:
    """A ``LoadedCase`` at ``target`` spacing (image trilinear, label nearest, affine and the
    foreground sample recomputed by ``fg_sample(label, nc, rng)``); unchanged when its spacing
    already is the target."""
    if same_spacing(case.spacing, target):
        return case
    old = case.image.shape[1:]
    new = resampled_shape(old, case.spacing, target)
    label = resample_label(case.label, new) if case.label is not None else None
    fg = fg_sample(label, nc, np.random.default_rng(0)) if label is not None else {}
    actual = tuple(float(s * n / m) for s, n, m in zip(case.spacing, old, new, strict=True))
    return replace(case, image=resample_image(case.image, new), label=label,
                   affine=resampled_affine(case.affine, old, new), spacing=actual, fg_voxels=fg)
