"""Skipped-step attribution: why did ``prec.step`` skip, and which parameters were to blame?

A trainer (or any loop) calls ``SkipRecorder.on_step(prec, model, stepped, loss=loss)`` after
every ``prec.step``. On a stepped step it only records the loss scale. On a skipped step it
reads the gradients (still in ``.grad``: call it before ``zero_grad``) and writes a ``SkipRecord``:
the parameters holding inf/NaN gradients by module path, whether the loss itself was
non-finite, whether the model's inputs or outputs were, and the loss scale in use.

Causes, in the order they are tested:

- ``data``: the loss is inf/NaN and the model's floating-point inputs already held inf/NaN;
- ``forward``: the loss is inf/NaN, inputs finite, model outputs inf/NaN (an activation
  overflowed or an op produced NaN in the forward pass);
- ``loss``: the loss is inf/NaN but the model's outputs are finite: the targets/labels or the
  loss function produced it (a NaN label, log(0), ...);
- ``grad_overflow``: the loss is finite, gradients hold inf, or NaN under a loss scale > 1 (NaN
  follows from inf arithmetic): the backward pass overflowed at this loss scale; occasional
  skips are how dynamic scaling works;
- ``grad_nan``: the loss is finite, gradients hold NaN but no inf, with no loss scaling;
- ``unknown``: skipped but no inf/NaN gradient found (another rank's verdict, or grads cleared).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from mixprec.io import atomic_write_text

__all__ = ["SkipRecord", "SkipRecorder", "nonfinite_grads"]

CAUSE_TEXT = {
    "data": "the model's input batch holds inf/NaN: bad data",
    "forward": "the forward pass produced inf/NaN from finite inputs (activation overflow or a "
               "NaN-producing op)",
    "loss": "model outputs are finite but the loss is inf/NaN: check the targets/labels and the "
            "loss function",
    "grad_overflow": "loss finite, gradients overflowed to inf at this loss scale",
    "grad_nan": "loss finite, gradients hold NaN (no inf)",
    "unknown": "step skipped but no inf/NaN gradient was found (cleared, or another rank's verdict)",
}


@dataclass
class SkipRecord:
    """One skipped step. ``step`` counts ``on_step`` calls from 0. ``scale`` is the loss scale
    the step ran at (None when unknown), ``scale_after`` the scale after the scaler's update."""

    step: int
    cause: str
    explanation: str
    loss: float | str | None
    inputs_finite: bool | None
    outputs_finite: bool | None
    scale: float | None
    scale_after: float | None
    params: list[dict[str, Any]] = field(default_factory=list)
    modules: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("scale", "scale_after"):
            if d[k] is not None and not math.isfinite(d[k]):
                d[k] = str(d[k])
        return d


def _loss_value(loss: torch.Tensor | float | None) -> float | str | None:
    if loss is None:
        return None
    v = float(loss.detach().float()) if torch.is_tensor(loss) else float(loss)  # host sync
    return v if math.isfinite(v) else str(v)


@torch.no_grad()
def nonfinite_grads(model: nn.Module, optimizer: Any = None) -> list[dict[str, Any]]:
    """Parameters of ``model`` whose gradient holds inf/NaN, in registration order:
    ``{"param", "module", "nan", "inf", "numel"}``. With a ``MasterWeights`` ``optimizer`` the
    gradient of a half parameter is read from its FP32 master (where backward moved it).
    One host synchronisation."""
    masters = {}
    if optimizer is not None and hasattr(optimizer, "masters"):
        masters = {id(p): m for p, m in zip(optimizer.model_params, optimizer.masters, strict=True)}
    names, flags = [], []
    for name, p in model.named_parameters():
        grad = p.grad if p.grad is not None else getattr(masters.get(id(p)), "grad", None)
        if grad is not None:
            g = grad.detach()
            names.append((name, g.numel()))
            flags.append(torch.stack([torch.isnan(g).sum(), torch.isinf(g).sum()]))
    if not flags:
        return []
    counts = torch.stack([f.to(flags[0].device) for f in flags]).tolist()
    out = []
    for (name, numel), (n_nan, n_inf) in zip(names, counts, strict=True):
        if n_nan or n_inf:
            out.append({"param": name, "module": name.rpartition(".")[0] or "(model)",
                        "nan": int(n_nan), "inf": int(n_inf), "numel": numel})
    return out


class SkipRecorder:
    """Attribute every skipped step (see the module docstring). Use as a context manager, or
    ``attach()``/``detach()``: while attached, one forward hook on ``model`` (the root only)
    notes, on the device and without a host sync, whether its inputs and outputs were finite.
    ``path``: a ``.jsonl`` file rewritten atomically with all records on every skip.
    ``precision``: read once here so the first step's loss scale is known.
    """

    def __init__(self, model: nn.Module | None = None, path: str | Path | None = None,
                 precision: Any = None) -> None:
        self.model = model
        self.path = Path(path) if path is not None else None
        self.records: list[SkipRecord] = []
        self.scales: list[float] = []
        self.stepped: list[bool] = []
        self._handle: Any = None
        self._in_ok: torch.Tensor | None = None
        self._out_ok: torch.Tensor | None = None
        self._scale_before = _scale_of(precision) if precision is not None else None

    def __enter__(self) -> SkipRecorder:
        self.attach()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.detach()

    @property
    def hook_count(self) -> int:
        return int(self._handle is not None)

    def attach(self) -> None:
        if self.model is not None and self._handle is None:
            self._handle = self.model.register_forward_hook(self._hook, with_kwargs=True)

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _hook(self, module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        with torch.no_grad(), torch._C.DisableTorchFunction():  # not rounded by mixprec.emulate
            self._in_ok = _all_finite((args, kwargs), self._in_ok)
            self._out_ok = _all_finite(output, self._out_ok)

    def on_step(self, prec: Any, model: nn.Module | None, stepped: bool,
                loss: torch.Tensor | float | None = None,
                optimizer: Any = None) -> SkipRecord | None:
        """Record one step; returns the ``SkipRecord`` for a skipped step, else None.
        Pass ``optimizer`` (the one ``prec.setup`` returned) for master-weight presets, whose
        gradients live on the FP32 masters.

        Stepped steps: reads the loss scale (one host sync when it lives on a GPU). Skipped
        steps: also reads the loss and the gradients' inf/NaN counts (a few syncs)."""
        model = model if model is not None else self.model
        step = len(self.stepped)
        scale_after = _scale_of(prec)
        in_ok, out_ok = self._in_ok, self._out_ok
        self._in_ok = self._out_ok = None
        self.stepped.append(bool(stepped))
        self.scales.append(scale_after)
        scale_before, self._scale_before = self._scale_before, scale_after
        if stepped:
            return None
        inputs_finite = None if in_ok is None else bool(in_ok)
        outputs_finite = None if out_ok is None else bool(out_ok)
        loss_v = _loss_value(loss)
        params = nonfinite_grads(model, optimizer) if model is not None else []
        loss_bad = isinstance(loss_v, str)
        if loss_bad and inputs_finite is False:
            cause = "data"
        elif loss_bad and outputs_finite is False:
            cause = "forward"
        elif loss_bad:
            cause = "loss"
        elif any(p["inf"] for p in params) or (params and (scale_before or 1.0) > 1.0):
            cause = "grad_overflow"   # NaN-only grads under a scale > 1: inf - inf, inf * 0
        elif params:
            cause = "grad_nan"
        else:
            cause = "unknown"
        modules = list(dict.fromkeys(p["module"] for p in params))
        explanation = CAUSE_TEXT[cause]
        if cause == "loss" and outputs_finite is None:
            explanation = ("the loss is inf/NaN (attach the recorder to the model to tell bad "
                           "outputs from bad targets)")
        if cause == "grad_overflow" and scale_before is not None:
            explanation += f" ({scale_before:g})"
        rec = SkipRecord(step=step, cause=cause, explanation=explanation, loss=loss_v,
                         inputs_finite=inputs_finite, outputs_finite=outputs_finite,
                         scale=scale_before, scale_after=scale_after, params=params[:100],
                         modules=modules)
        self.records.append(rec)
        if self.path is not None:
            atomic_write_text(self.path, "".join(json.dumps(r.to_dict()) + "\n"
                                                 for r in self.records))
        return rec


def _scale_of(prec: Any) -> float | None:
    scaler = getattr(prec, "scaler", None)
    return None if scaler is None else float(scaler.scale)


def _all_finite(obj: Any, acc: torch.Tensor | None) -> torch.Tensor | None:
    for t in tree_leaves(obj):
        if torch.is_tensor(t) and t.is_floating_point():
            ok = torch.isfinite(t.detach()).all()
            acc = ok if acc is None else acc & ok.to(acc.device)
    return acc
