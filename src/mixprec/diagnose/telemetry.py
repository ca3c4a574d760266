"""Per-module numerics telemetry, switched on with a context manager in any training loop.

```python
with Telemetry(model, precision=prec) as tel:        # hooks on; off (all removed) on exit
    for x, y in loader:
        with prec.autocast():
            loss = loss_fn(model(x), y)
        prec.backward(loss)
        stepped = prec.step(optimizer)
        tel.on_step(prec, model, stepped, loss=loss)  # optional: skipped-step attribution
        optimizer.zero_grad(set_to_none=True)
report = tel.report()
```

For every module it accumulates ``RangeAccumulator`` totals of its forward outputs, of the
gradient flowing back into those outputs (activation gradients) and of its own parameters'
gradients as each backward produces them (weight gradients), judged against one float format.

It also marks *overflow sources*: calls where a module's output overflowed (or held inf/NaN)
while all its inputs were finite. In a *what-if* run (FP32 compute, or emulation, where FP32
tensors stand in for the format) "overflowed" means beyond the format's range. In a real
low-precision run it means an actual inf/NaN, or an out-of-range value in a tensor of the
low-precision dtype, so that an FP32 island (a module kept in FP32 under autocast) is not
blamed for values it legitimately holds: the module that casts them down is.

Hooks add device work but no host synchronisation, except reading the loss scale once per
forward of the root module (one sync when the scale lives on a GPU).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from mixprec.diagnose.skips import SkipRecorder
from mixprec.diagnose.stats import (
    _FIELDS,
    RangeAccumulator,
    RangeSummary,
    format_thresholds,
    range_counts,
)
from mixprec.formats import FloatFormat, get_format

__all__ = ["ModuleStats", "Telemetry", "telemetry_format"]

_OVF, _NAN, _INF = _FIELDS.index("overflow_s"), _FIELDS.index("nan"), _FIELDS.index("inf")
_BIG = 2**62


def telemetry_format(precision: Any = None, fmt: str | torch.dtype | FloatFormat | None = None
                     ) -> FloatFormat:
    """The format tensors are judged against: ``fmt`` if given, else the compute dtype of the
    precision's policy, else FP16 (an FP32 run then answers "what would FP16 do?")."""
    if fmt is not None:
        return get_format(fmt)
    policy = getattr(precision, "policy", None)
    if policy is not None and policy.compute_dtype != torch.float32:
        # One format for all three kinds: for fp8-mixed that is E4M3 (the forward format); pass
        # fmt="fp8_e5m2" to judge the gradients against the HYBRID recipe's backward format.
        return get_format(policy.compute_dtype)
    return get_format("fp16")


@dataclass
class _Record:
    name: str
    kind: str
    forward: RangeAccumulator
    act_grad: RangeAccumulator
    weight_grad: RangeAccumulator
    depth: int
    source_calls: torch.Tensor | None = None     # int64: calls whose output went bad from clean inputs
    first_source: torch.Tensor | None = None     # int64: earliest forward-completion index of those
    first_bad_grad: torch.Tensor | None = None   # int64: earliest backward index with inf/NaN grad


@dataclass
class ModuleStats:
    """Host-side result for one module (see ``Telemetry.module_stats``)."""

    name: str
    kind: str
    depth: int
    forward: RangeSummary | None
    act_grad: RangeSummary | None
    weight_grad: RangeSummary | None
    source_calls: int = 0
    first_source: int | None = None
    first_bad_grad: int | None = None
    is_leaf: bool = True
    children: list[str] = field(default_factory=list)


def _float_tensors(obj: Any) -> list[torch.Tensor]:
    return [t for t in tree_leaves(obj) if torch.is_tensor(t) and t.is_floating_point()]


class Telemetry:
    """Hooks that measure every module's ranges against ``fmt`` while active.

    ``model``: any ``nn.Module``. ``precision``: a ``mixprec.Precision`` (gives the format and the
    loss scale); or pass ``fmt`` and ``scale`` (a float or a zero-argument callable returning the
    current loss scale) directly. ``skips``: also attribute skipped steps (``on_step``); ``path``:
    file the skip records are written to (JSON lines, rewritten atomically on every skip).
    ``what_if``: FP32 tensors stand in for the format (see the module docstring); default: True
    unless ``precision`` computes in a real low-precision dtype without emulation. Leaving the
    context removes every hook it added (``hook_count`` is then 0).
    """

    def __init__(self, model: nn.Module, fmt: str | torch.dtype | FloatFormat | None = None, *,
                 precision: Any = None, scale: float | Callable[[], float] | None = None,
                 skips: bool = True, path: str | None = None,
                 what_if: bool | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"Telemetry needs an nn.Module, got {type(model).__name__}")
        self.model = model
        self.fmt = telemetry_format(precision, fmt)
        self.thr = format_thresholds(self.fmt)
        if what_if is None:
            policy = getattr(precision, "policy", None)
            what_if = (policy is None or policy.compute_dtype == torch.float32
                       or bool(getattr(precision, "emulate", False)))
        self.what_if = what_if
        if scale is None and precision is not None:
            scaler = precision.scaler
            scale = lambda: float(scaler.scale)  # noqa: E731
        self._scale_fn = scale if callable(scale) else (lambda v=float(scale or 1.0): v)
        self._scale = 1.0
        self._handles: list[Any] = []
        self._records: dict[nn.Module, _Record] = {}
        self._param_owner: dict[int, _Record] = {}
        self._order = 0
        self._border = 0
        self._memo: dict[int, tuple[Any, int, float, tuple[torch.Tensor, ...]]] = {}
        self.forwards = 0
        self.paused = False
        self.skips = SkipRecorder(model, path=path, precision=precision) if skips else None

    # -- switching on and off ---------------------------------------------------------------
    def __enter__(self) -> Telemetry:
        self.attach()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.detach()

    @property
    def active(self) -> bool:
        return bool(self._handles)

    @property
    def hook_count(self) -> int:
        """Hooks currently registered by this object (0 when off)."""
        return len(self._handles) + (self.skips.hook_count if self.skips else 0)

    def attach(self) -> None:
        if self._handles:
            raise RuntimeError("Telemetry is already attached; use one 'with' block at a time")
        for name, module in self.model.named_modules():
            rec = self._records.get(module)
            if rec is None:
                rec = _Record(name or "(model)", type(module).__name__,
                              RangeAccumulator(self.fmt), RangeAccumulator(self.fmt),
                              RangeAccumulator(self.fmt), name.count(".") + bool(name))
                self._records[module] = rec
            self._handles.append(module.register_forward_hook(
                self._make_forward_hook(rec), with_kwargs=True))
            for p in module.parameters(recurse=False):
                if id(p) in self._param_owner or not p.requires_grad:
                    continue  # a shared parameter is reported under its first owner
                self._param_owner[id(p)] = rec
                # A tensor hook on the leaf sees each backward's gradient before it is
                # accumulated (and before MasterWeights moves it to the FP32 master).
                self._handles.append(p.register_hook(self._make_param_hook(rec)))
        self._handles.append(self.model.register_forward_pre_hook(self._root_pre_hook))
        self._scale = float(self._scale_fn())
        if self.skips:
            self.skips.attach()

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self.skips:
            self.skips.detach()

    # -- hooks --------------------------------------------------------------------------------
    def _root_pre_hook(self, module: nn.Module, args: Any) -> None:
        if self.paused:
            return
        self._order = 0
        self._border = 0
        self._memo.clear()
        self.forwards += 1
        self._scale = float(self._scale_fn())

    def _counts(self, t: torch.Tensor, scale: float) -> tuple[torch.Tensor, ...]:
        """``range_counts`` of ``t``, computed once per tensor version: a container's output is
        usually its last child's output tensor, and gradients reach both through the same
        tensor. Weak references: the memo keeps no tensor alive."""
        key = id(t)
        hit = self._memo.get(key)
        if hit is not None and hit[0]() is t and hit[1] == t._version and hit[2] == scale:
            return hit[3]
        res = range_counts(t, self.thr, scale)
        if len(self._memo) > 4096:
            self._memo.clear()
        self._memo[key] = (weakref.ref(t), t._version, scale, res)
        return res

    def _finite(self, t: torch.Tensor) -> torch.Tensor:
        hit = self._memo.get(id(t))
        if hit is not None and hit[0]() is t and hit[1] == t._version:
            vec = hit[3][0]
            return (vec[_NAN] + vec[_INF]) == 0
        return torch.isfinite(t.detach()).all()

    def _make_forward_hook(self, rec: _Record) -> Callable:
        def hook(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            if self.paused:
                return
            outs = _float_tensors(output)
            if not outs:
                return
            order = self._order
            self._order += 1
            # DisableTorchFunction: our statistics must not be rounded by mixprec.emulate's mode.
            with torch.no_grad(), torch._C.DisableTorchFunction():
                bad_out = None
                for t in outs:
                    vec = rec.forward.add(None, counts=self._counts(t, 1.0))
                    stand_in = self.what_if or t.dtype not in (torch.float32, torch.float64)
                    b = (vec[_OVF if stand_in else _INF] + vec[_NAN]) > 0
                    bad_out = b if bad_out is None else bad_out | b.to(bad_out.device)
                ins = _float_tensors((args, kwargs))
                clean_in = torch.ones((), dtype=torch.bool, device=bad_out.device)
                for t in ins:
                    clean_in = clean_in & self._finite(t).to(clean_in.device)
                src = bad_out & clean_in
                if rec.source_calls is None:
                    rec.source_calls = src.long()
                    rec.first_source = torch.where(src, order, _BIG)
                else:
                    rec.source_calls = rec.source_calls + src.long()
                    rec.first_source = torch.minimum(rec.first_source, torch.where(src, order, _BIG))
            if torch.is_grad_enabled():
                for t in outs:
                    if t.requires_grad:
                        t.register_hook(self._make_grad_hook(rec))
        return hook

    def _make_grad_hook(self, rec: _Record) -> Callable:
        def hook(grad: torch.Tensor) -> None:
            if self.paused or grad is None:
                return
            order = self._border
            self._border += 1
            with torch.no_grad(), torch._C.DisableTorchFunction():
                vec = rec.act_grad.add(None, self._scale, counts=self._counts(grad, self._scale))
                bad = (vec[_NAN] + vec[_INF]) > 0
                first = torch.where(bad, order, _BIG)
                rec.first_bad_grad = first if rec.first_bad_grad is None else torch.minimum(
                    rec.first_bad_grad, first)
        return hook

    def _make_param_hook(self, rec: _Record) -> Callable:
        def hook(grad: torch.Tensor) -> None:
            if not self.paused and grad is not None:
                with torch.no_grad(), torch._C.DisableTorchFunction():
                    rec.weight_grad.add(grad, self._scale)
        return hook

    # -- steps and results ---------------------------------------------------------------------
    def on_step(self, prec: Any, model: nn.Module | None = None, stepped: bool = True,
                loss: torch.Tensor | None = None, optimizer: Any = None) -> Any:
        """Call after ``prec.step``: records the loss scale and, for a skipped step, which
        parameters held inf/NaN gradients and why (see ``SkipRecorder.on_step``)."""
        if self.skips is None:
            raise RuntimeError("this Telemetry was built with skips=False")
        return self.skips.on_step(prec, model or self.model, stepped, loss=loss,
                                  optimizer=optimizer)

    def module_stats(self) -> list[ModuleStats]:
        """Totals per module, in registration order (host synchronisation: one per tensor read)."""
        out = []
        children = {rec.name: [] for rec in self._records.values()}
        for module, rec in self._records.items():
            for child in module.children():
                if child in self._records:
                    children[rec.name].append(self._records[child].name)
            first = int(rec.first_source) if rec.first_source is not None else _BIG
            bad_g = int(rec.first_bad_grad) if rec.first_bad_grad is not None else _BIG
            out.append(ModuleStats(
                name=rec.name, kind=rec.kind, depth=rec.depth,
                forward=rec.forward.summary(), act_grad=rec.act_grad.summary(),
                weight_grad=rec.weight_grad.summary(),
                source_calls=int(rec.source_calls) if rec.source_calls is not None else 0,
                first_source=None if first >= _BIG else first,
                first_bad_grad=None if bad_g >= _BIG else bad_g,
                is_leaf=not any(True for _ in module.children()),
                children=children[rec.name]))
        return out

    def report(self, **context: Any) -> Any:
        """A ``DoctorReport`` of everything measured so far (``context``: extra fields such as
        ``precision``, ``nan_locator``, passed through to the report)."""
        from mixprec.diagnose.report import build_report

        return build_report(self, **context)

    @property
    def scale(self) -> float:
        """The loss scale read at the last forward (1.0 before any)."""
        return self._scale if math.isfinite(self._scale) else math.nan
