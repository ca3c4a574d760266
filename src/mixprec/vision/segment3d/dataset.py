"""Load and check cases into memory: image ``(C, x, y, z)`` float32, z-scored per channel;
label ``(x, y, z)`` uint8; the affine and spacing of each.

Each bad case raises one named error from ``check_case``; ``load_cases`` skips it, counts it by
kind and prints one line per skipped file, and raises only when nothing usable remains.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mixprec.vision.segment3d.config import Case
from mixprec.vision.segment3d.nifti import UnreadableVolumeError, read_image, read_label

__all__ = [
    "BadCaseError",
    "ChannelMismatchError",
    "LabelShapeError",
    "LabelValueError",
    "LoadedCase",
    "MissingLabelError",
    "SkipReport",
    "UnreadableVolumeError",
    "check_case",
    "ct_stats",
    "load_cases",
    "normalize",
]


class BadCaseError(ValueError):
    """Base of the named per-case errors."""


class MissingLabelError(BadCaseError):
    """An image whose label volume is not there."""


class LabelShapeError(BadCaseError):
    """A label volume whose shape differs from its image's."""


class LabelValueError(BadCaseError):
    """Label values that are not integers or lie outside the class ids."""


class ChannelMismatchError(BadCaseError):
    """A case whose number of modalities differs from the data's."""


@dataclass
class LoadedCase:
    name: str
    image: np.ndarray  # (C, x, y, z) float32, z-scored per channel
    label: np.ndarray | None  # (x, y, z) uint8, or None (prediction input)
    affine: np.ndarray
    spacing: tuple[float, float, float]
    fg_voxels: dict[int, np.ndarray] = field(default_factory=dict)  # class -> (n, 3) int32 sample


@dataclass
class SkipReport:
    counts: Counter = field(default_factory=Counter)  # error kind -> number of cases skipped
    messages: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def normalize(image: np.ndarray, stats: list[tuple[float, float, float, float]] | None = None) -> np.ndarray:
    """Normalise ``(C, x, y, z)`` to float32. ``stats`` None: per-channel z-score of this volume
    (MRI-like data). ``stats`` per channel ``(lo, hi, mean, std)``: clip to ``[lo, hi]``, then
    ``(x - mean) / std`` with dataset-wide values -- nnU-Net's CT normalisation, which keeps
    soft-tissue contrast that a per-volume z-score (dominated by air) would flatten."""
    img = image.astype(np.float32, copy=True)
    for c in range(img.shape[0]):
        ch = img[c]
        if stats is not None:
            lo, hi, mean, std = stats[c]
            np.clip(ch, lo, hi, out=ch)
        else:
            mean, std = float(ch.mean()), float(ch.std())
        img[c] = (ch - mean) / (std if std > 1e-8 else 1.0)
    return img


def ct_stats(cases: list[LoadedCase], max_voxels: int = 100_000) -> list[tuple[float, float, float, float]]:
    """Per channel ``(p0.5, p99.5, mean, std)`` of the foreground (label > 0) intensities of raw
    (unnormalised) training cases, up to ``max_voxels`` sampled per case (seeded), as nnU-Net
    computes its CT normalisation; mean/std are of the clipped values."""
    rng = np.random.default_rng(0)
    out = []
    for c in range(cases[0].image.shape[0]):
        vals = []
        for case in cases:
            v = case.image[c][case.label > 0] if case.label is not None else case.image[c].ravel()
            if len(v) > max_voxels:
                v = v[rng.choice(len(v), max_voxels, replace=False)]
            vals.append(v)
        allv = np.concatenate(vals).astype(np.float64)
        if not len(allv):
            raise ValueError("CT normalisation needs foreground voxels in the training labels")
        lo, hi = np.percentile(allv, [0.5, 99.5])
        clipped = np.clip(allv, lo, hi)
        out.append((float(lo), float(hi), float(clipped.mean()), float(max(clipped.std(), 1e-8))))
    return out


def _fg_sample(label: np.ndarray, nc: int, rng: np.random.Generator,
               keep: int = 10_000) -> dict[int, np.ndarray]:
    """Up to ``keep`` voxel coordinates of each foreground class present (as nnU-Net caches)."""
    out = {}
    for c in range(1, nc):
        idx = np.argwhere(label == c)
        if len(idx):
            if len(idx) > keep:
                idx = idx[rng.choice(len(idx), keep, replace=False)]
            out[c] = idx.astype(np.int32)
    return out


def check_case(case: Case, nc: int, channels: int | None = None, need_label: bool = True,
               raw: bool = False, stats: list[tuple[float, float, float, float]] | None = None) -> LoadedCase:
    """Read one case and check it (image normalised with ``stats``, see ``normalize``, unless
    ``raw``); raises ``UnreadableVolumeError``, ``MissingLabelError``,
    ``LabelShapeError``, ``LabelValueError`` (non-integer values, or outside 0..nc-1) or
    ``ChannelMismatchError``, each naming the file and what to fix."""
    vol = read_image(case.image)
    if channels is not None and vol.array.shape[0] != channels:
        raise ChannelMismatchError(f"{case.image}: {vol.array.shape[0]} channel(s), the dataset has "
                                   f"{channels}; give every case the same modalities (4D, channel last)")
    label = None
    fg: dict[int, np.ndarray] = {}
    if need_label:
        if case.label is None or not case.label.is_file():
            raise MissingLabelError(f"{case.image}: no label file "
                                    f"({case.label or 'no imagesTr/ or images/ folder in the path'})")
        lab, values = read_label(case.label)
        if lab.array.shape != vol.spatial_shape:
            raise LabelShapeError(f"{case.label}: label shape {lab.array.shape} != image shape "
                                  f"{vol.spatial_shape} ({case.image}); resample the label onto the "
                                  "image grid")
        if values.dtype.kind == "f" and not np.array_equal(values, np.round(values)):
            bad = values[values != np.round(values)].ravel()[0]
            raise LabelValueError(f"{case.label}: non-integer label value {bad}; labels must be class ids "
                                  f"0..{nc - 1}")
        lo, hi = int(lab.array.min()), int(lab.array.max())
        if lo < 0 or hi >= nc:
            raise LabelValueError(f"{case.label}: label values {lo}..{hi} outside 0..{nc - 1} "
                                  f"({nc} classes in 'names'/'labels')")
        label = lab.array.astype(np.uint8)
        fg = _fg_sample(label, nc, np.random.default_rng(0))
    image = vol.array if raw else normalize(vol.array, stats)
    return LoadedCase(case.name, image, label, vol.affine, vol.spacing, fg)


def load_cases(cases: list[Case], nc: int, channels: int | None = None, split: str = "train",
               verbose: bool = True, raw: bool = False,
               stats: list[tuple[float, float, float, float]] | None = None,
               ) -> tuple[list[LoadedCase], SkipReport]:
    """Every case of ``cases`` that passes ``check_case``; bad ones are skipped and counted.
    All loaded cases must share one channel count (the first good case's, unless ``channels``).
    Raises ValueError when no case is usable."""
    loaded: list[LoadedCase] = []
    report = SkipReport()
    for case in cases:
        try:
            lc = check_case(case, nc, channels, raw=raw, stats=stats)
        except (BadCaseError, UnreadableVolumeError) as err:
            report.counts[type(err).__name__] += 1
            report.messages.append(str(err))
            if verbose:
                print(f"WARNING skipped {split} case: {err}")
            continue
        if channels is None:
            channels = lc.image.shape[0]
        loaded.append(lc)
    if report.total and verbose:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(report.counts.items()))
        print(f"{split}: {len(loaded)} cases loaded, {report.total} skipped ({kinds})")
    if not loaded:
        first = report.messages[0] if report.messages else "no cases listed"
        raise ValueError(f"{split}: no usable case out of {len(cases)} (first problem: {first})")
    return loaded, report


def case_paths(cases: list[Case]) -> list[Path]:
    return [c.image for c in cases]
