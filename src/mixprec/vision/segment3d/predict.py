"""Whole-volume prediction: normalise, resample to the training spacing, sliding-window logits,
probabilities back on the input's grid, argmax, and a NIfTI label map with the input's affine and
spatial shape (optionally the class probabilities, channel last).

``model`` is a ``UNet3D`` or a backend (``mixprec.vision.backend``: an exported ``.onnx`` runs
through ``mixprec.export.OnnxBackend``): both go through the same sliding window and the same
post-processing; ``net_info`` reads what that needs from either."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mixprec.vision.backend import TorchBackend, as_backend
from mixprec.vision.segment3d.dataset import normalize
from mixprec.vision.segment3d.inference import sliding_window
from mixprec.vision.segment3d.nifti import read_image, write_nifti
from mixprec.vision.segment3d.resample import (
    resample_image,
    resample_probabilities,
    resampled_shape,
    same_spacing,
)

__all__ = ["NetInfo", "net_info", "predict_logits", "predict_volume"]


@dataclass(frozen=True)
class NetInfo:
    """What inference needs to know about a segmentation network: classes ``nc`` and ``names``,
    ``in_channels``, ``divisor`` (input sides must be multiples of it), the training ``patch``
    (None: unknown), the CT ``norm_stats`` (None: per-volume z-score) and the training
    ``spacing`` (None: not recorded)."""

    nc: int
    names: dict[int, str]
    in_channels: int
    divisor: int
    patch: tuple[int, int, int] | None
    norm_stats: list[tuple[float, float, float, float]] | None
    spacing: tuple[float, float, float] | None = None


def net_info(model: Any) -> NetInfo:
    """``NetInfo`` of a ``UNet3D`` (or a ``TorchBackend`` of one) or of a backend whose ``head``
    is a ``NetInfo`` (an exported model)."""
    if isinstance(model, TorchBackend):
        model = model.model
    if isinstance(model, torch.nn.Module):
        cfg = model.cfg  # type: ignore[attr-defined]
        spacing = getattr(model, "spacing", None)
        return NetInfo(cfg.nc, dict(model.names), cfg.in_channels, cfg.divisor, getattr(model, "patch", None),
                       getattr(model, "norm_stats", None), tuple(spacing) if spacing else None)
    return model.head


def predict_logits(model: Any, image: np.ndarray, patch: tuple[int, int, int],
                   autocast: Callable[[], AbstractContextManager] | None = None, overlap: float = 0.5,
                   sw_batch: int = 2) -> torch.Tensor:
    """FP32 logits ``(nc, x, y, z)`` on the model's device for a normalised ``(C, x, y, z)`` image.
    ``model``: a ``UNet3D`` (eval mode and no autograd inside, its mode restored after) or a
    backend (``autocast`` is then ignored). One host sync at the end (the copy of the result
    is left to the caller)."""
    nc = net_info(model).nc
    with as_backend(model, autocast) as run:
        vol = torch.from_numpy(np.ascontiguousarray(image))[None].to(run.device)

        def predictor(x: torch.Tensor) -> torch.Tensor:
            out = run(x)
            return out[0] if isinstance(out, (list, tuple)) else out  # a backend: [logits]

        return sliding_window(vol, predictor, patch, nc, overlap, sw_batch)[0]


def predict_volume(model: Any, source: str | Path, patch: tuple[int, int, int],
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
    info = net_info(model)
    expected = info.in_channels
    if vol.array.shape[0] != expected:
        raise ValueError(f"{source}: {vol.array.shape[0]} channel(s), the model takes {expected}")
    image = normalize(vol.array, info.norm_stats)  # the training data's CT normalisation, if any
    target = info.spacing  # the training spacing: resample there and back
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
