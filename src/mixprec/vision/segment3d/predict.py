"""Whole-volume prediction: normalise, resample to the training spacing, sliding-window logits,
probabilities back on the input's grid, argmax, and a NIfTI label map with the input's affine and
spatial shape (optionally the class probabilities, channel last)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np
import torch

from mixprec.vision.segment3d.dataset import normalize
from mixprec.vision.segment3d.inference import sliding_window
from mixprec.vision.segment3d.nifti import read_image, write_nifti
from mixprec.vision.segment3d.resample import (
    resample_image,
    resample_probabilities,
    resampled_shape,
    same_spacing,
)

__all__ = ["predict_logits", "predict_volume"]


def predict_logits(model: torch.nn.Module, image: np.ndarray, patch: tuple[int, int, int],
                   autocast: Callable[[], AbstractContextManager] | None = None, overlap: float = 0.5,
                   sw_batch: int = 2) -> torch.Tensor:
    """FP32 logits ``(nc, x, y, z)`` on the model's device for a normalised ``(C, x, y, z)`` image.
    The model is put in eval mode; one host sync at the end (the copy of the result is left to
    the caller)."""
    model.eval()
    device = next(model.parameters()).device
    nc = model.cfg.nc  # type: ignore[attr-defined]
    vol = torch.from_numpy(np.ascontiguousarray(image))[None].to(device)

    def predictor(x: torch.Tensor) -> torch.Tensor:
        with autocast() if autocast is not None else nullcontext():
            return model(x)

    return sliding_window(vol, predictor, patch, nc, overlap, sw_batch)[0]


def predict_volume(model: torch.nn.Module, source: str | Path, patch: tuple[int, int, int],
                   out: str | Path | None = None,
                   autocast: Callable[[], AbstractContextManager] | None = None,
                   probabilities: bool = False, overlap: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Segment the NIfTI ``source``; returns the label map ``(x, y, z)`` uint8 and the input's
    affine. A model trained at a common ``spacing`` sees the input resampled to it (trilinear);
    its class probabilities are resampled back onto the input's grid (trilinear) before the
    argmax, so the label map has the input's shape. With ``out``, writes the label map there
    with the input's affine and shape, and with ``probabilities`` also
    ``<out stem>_probs.nii.gz`` (float32, one channel per class, channel last)."""
    vol = read_image(source)
    expected = model.cfg.in_channels  # type: ignore[attr-defined]
    if vol.array.shape[0] != expected:
        raise ValueError(f"{source}: {vol.array.shape[0]} channel(s), the model takes {expected}")
    stats = getattr(model, "norm_stats", None)  # the training data's CT normalisation, if any
    image = normalize(vol.array, stats)
    target = getattr(model, "spacing", None)  # the training spacing: resample there and back
    if target is not None and not same_spacing(vol.spacing, target):
        image = resample_image(image, resampled_shape(vol.spatial_shape, vol.spacing, target))
    probs = torch.softmax(predict_logits(model, image, patch, autocast, overlap), 0)
    if tuple(probs.shape[1:]) != vol.spatial_shape:
        probs = resample_probabilities(probs, vol.spatial_shape)
    labels = probs.argmax(0).to(torch.uint8).cpu().numpy()
    if out is not None:
        write_nifti(out, labels, vol.affine)
        if probabilities:
            out = Path(out)
            stem = out.name[: -len(".nii.gz")] if out.name.endswith(".nii.gz") else out.stem
            write_nifti(out.with_name(f"{stem}_probs.nii.gz"), probs.cpu().numpy().astype(np.float32),
                        vol.affine)
    return labels, vol.affine
