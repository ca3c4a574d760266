"""Segmentation metrics on hard label maps: per-class Dice and HD95.

``dice_per_class(pred, target, nc)``: for each foreground class c, 2|P_c ∩ G_c| / (|P_c| + |G_c|);
NaN where the class is absent from the ground truth (MONAI ``DiceMetric(ignore_empty=True)``).
``hd95_per_class``: the 95th-percentile symmetric Hausdorff distance in mm (voxel spacing
applied) by MONAI's ``compute_hausdorff_distance``; NaN where either mask is empty.
``SegMetrics`` aggregates cases: per-class mean over the cases where it is defined, and the
mean foreground Dice over classes. Pure NumPy/torch on the host.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["SegMetrics", "dice_per_class", "hd95_per_class"]


def dice_per_class(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor, nc: int) -> np.ndarray:
    """Dice of classes 1..nc-1 for one case, float64 ``(nc - 1,)``; NaN where the target lacks it."""
    p = torch.as_tensor(pred).reshape(-1).long()
    t = torch.as_tensor(target).reshape(-1).long()
    inter = torch.bincount(t[p == t], minlength=nc)[1:nc].double()
    n_pred = torch.bincount(p, minlength=nc)[1:nc].double()
    n_true = torch.bincount(t, minlength=nc)[1:nc].double()
    dice = 2 * inter / (n_pred + n_true)
    dice[n_true == 0] = float("nan")
    return dice.numpy()


def hd95_per_class(pred: np.ndarray, target: np.ndarray, nc: int,
                   spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """HD95 in mm of classes 1..nc-1 for one case (MONAI's implementation); NaN where the
    prediction or the target lacks the class."""
    from monai.metrics import compute_hausdorff_distance

    out = np.full(nc - 1, np.nan)
    p, t = torch.as_tensor(np.asarray(pred)).long(), torch.as_tensor(np.asarray(target)).long()
    for c in range(1, nc):
        pc, tc = p == c, t == c
        if pc.any() and tc.any():
            with warnings.catch_warnings():  # MONAI 1.5 warns about its own deprecated argument
                warnings.simplefilter("ignore", FutureWarning)
                hd = compute_hausdorff_distance(pc[None, None], tc[None, None], include_background=True,
                                                percentile=95, spacing=list(spacing))
            out[c - 1] = float(hd.reshape(-1)[0])
    return out


@dataclass
class SegMetrics:
    """Per-case Dice (and HD95) rows, aggregated on demand."""

    names: dict[int, str]
    dice_rows: list[np.ndarray] = field(default_factory=list)
    hd95_rows: list[np.ndarray] = field(default_factory=list)

    def add(self, pred: np.ndarray, target: np.ndarray, spacing: tuple[float, float, float] | None = None,
            hd95: bool = False) -> None:
        nc = len(self.names)
        self.dice_rows.append(dice_per_class(pred, target, nc))
        if hd95:
            self.hd95_rows.append(hd95_per_class(pred, target, nc, spacing or (1.0, 1.0, 1.0)))

    @staticmethod
    def _mean(rows: list[np.ndarray], n: int) -> np.ndarray:
        if not rows:
            return np.full(n, np.nan)
        arr = np.stack(rows)
        with np.errstate(invalid="ignore"):
            return np.array([np.nanmean(col) if not np.isnan(col).all() else np.nan for col in arr.T])

    @property
    def per_class_dice(self) -> dict[str, float]:
        means = self._mean(self.dice_rows, len(self.names) - 1)
        return {self.names[c]: float(means[c - 1]) for c in range(1, len(self.names))}

    @property
    def per_class_hd95(self) -> dict[str, float]:
        means = self._mean(self.hd95_rows, len(self.names) - 1)
        return {self.names[c]: float(means[c - 1]) for c in range(1, len(self.names))}

    @property
    def dice(self) -> float:
        """Mean foreground Dice (mean over classes of the per-class means); NaN if none defined."""
        vals = [v for v in self.per_class_dice.values() if not math.isnan(v)]
        return float(np.mean(vals)) if vals else float("nan")

    @property
    def hd95(self) -> float:
        vals = [v for v in self.per_class_hd95.values() if not math.isnan(v)]
        return float(np.mean(vals)) if vals else float("nan")

    def results_dict(self) -> dict[str, float]:
        row = {"metrics/dice": self.dice}
        row.update({f"metrics/dice_{n}": v for n, v in self.per_class_dice.items()})
        if self.hd95_rows:
            row["metrics/hd95"] = self.hd95
        return row
