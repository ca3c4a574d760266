"""TensorBoard logging for a training run (``tensorboard=True``), through the trainer's callbacks.

Event files go to the run folder (``tensorboard --logdir runs/detect``). Per training batch
(x-axis: global batch index): ``train_step/loss_scale``, ``train_step/skipped_steps``
(cumulative) and each loss as ``train_step/<name>``. Per epoch (x-axis: epoch, from 1): every
column of the epoch's ``results.csv`` row -- losses, validation metrics, learning rates
(``lr/pg*``), loss scale and skipped steps (``amp/*``) -- plus ``memory/peak_gb`` (CUDA: peak
allocated; CPU: peak resident set of the process). Reading the loss scale synchronises with
the device once per batch (the progress bar already does).
"""

from __future__ import annotations

import csv
import math
import resource
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["TensorBoardLogger", "with_tensorboard"]


class TensorBoardLogger:
    """``on_batch_end(state, batch)`` / ``on_epoch_end(state, epoch)`` callbacks writing to
    ``log_dir`` with ``torch.utils.tensorboard.SummaryWriter``."""

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError("tensorboard=True needs the 'tensorboard' package: pip install "
                              "'mixprec[tensorboard]', or train with tensorboard=False") from None
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(str(self.log_dir))
        self._epoch, self._batch = -1, 0

    def on_batch_end(self, st: Any, batch: Any) -> None:
        if st.epoch != self._epoch:
            self._epoch, self._batch = st.epoch, 0
        step = st.epoch * len(st.train_loader) + self._batch
        self._batch += 1
        self.writer.add_scalar("train_step/loss_scale", st.prec.scaler.scale, step)
        self.writer.add_scalar("train_step/skipped_steps", st.prec.skipped_steps, step)
        for name, value in (getattr(st, "last_losses", None) or {}).items():
            self.writer.add_scalar(f"train_step/{name}", value, step)

    def on_epoch_end(self, st: Any, epoch: int) -> None:
        for tag, value in _last_row(self.log_dir / "results.csv").items():
            self.writer.add_scalar(tag, value, epoch + 1)
        self.writer.add_scalar("memory/peak_gb", _peak_memory_gb(st.device), epoch + 1)
        self.writer.flush()  # an early-stopped run's writer is closed when it is collected
        if epoch + 1 >= int(st.args["epochs"]):
            self.close()

    def close(self) -> None:
        self.writer.close()


def _last_row(path: Path) -> dict[str, float]:
    """The last row of ``results.csv`` as finite floats (``epoch`` and ``time`` left out)."""
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = {}
    for k, v in (rows[-1] if rows else {}).items():
        try:
            x = float(v)
        except (TypeError, ValueError):
            continue
        if k not in ("epoch", "time") and math.isfinite(x):
            out[k] = x
    return out


def _peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: KiB -> GB


def with_tensorboard(log_dir: str | Path, callbacks: dict[str, Callable] | None) -> dict[str, Callable]:
    """``callbacks`` with a ``TensorBoardLogger``'s run first in each hook (so a user callback
    that stops the run still leaves that batch/epoch logged)."""
    tb = TensorBoardLogger(log_dir)
    out = dict(callbacks or {})
    for name in ("on_batch_end", "on_epoch_end"):
        mine, theirs = getattr(tb, name), out.get(name)
        out[name] = mine if theirs is None else _chain(mine, theirs)
    return out


def _chain(first: Callable, second: Callable) -> Callable:
    def both(*args: Any) -> None:
        first(*args)
        second(*args)

    return both
