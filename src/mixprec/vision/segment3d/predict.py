"""Whole-volume prediction: normalise, sliding-window logits, argmax, and a NIfTI label map with
the input's affine and spatial shape (optionally the class probabilities, channel last)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np
import torch

from mixprec.vision.segment3d.dataset import normalize
from mixprec.vision.segment3d.inference import sliding_window
from mixprec.vision.segment3d.nifti import read_image, write_nifti

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
    affine. With ``out``, writes the label map there with the input's affine and shape, and
    with ``probabilities`` also ``<out stem>_probs.nii.gz`` (float32, one channel per class,
    channel last)."""
    vol = read_image(source)
    expected = model.cfg.in_channels  # type: ignore[attr-defined]
    if vol.array.shape[0] != expected:
        raise ValueError(f"{source}: {vol.array.shape[0]} channel(s), the model takes {expected}")
    stats = getattr(model, "norm_stats", None)  # the training data's CT normalisation, if any
    logits = predict_logits(model, normalize(vol.array, stats), patch, autocast, overlap)
    labels = logits.argmax(0).to(torch.uint8).cpu().numpy()
    if out is not None:
        write_nifti(out, labels, vol.affine)
        if probabilities:
            out = Path(out)
            stem = out.name[: -len(".nii.gz")] if out.name.endswith(".nii.gz") else out.stem
            probs = torch.softmax(logits, 0).cpu().numpy().astype(np.float32)
            write_nifti(out.with_name(f"{stem}_probs.nii.gz"), probs, vol.affine)
    return labels, vol.affine
