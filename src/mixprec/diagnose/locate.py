"""NaN locator: the first module and op whose output became inf/NaN, in forward or backward.

``locate_nonfinite(model, run)`` re-runs one forward (``run()`` returns the loss; enter the same
``prec.autocast()`` inside it as the training step did) and, when the loss is finite, one
backward through ``torch.autograd.grad`` (``.grad`` is left untouched), under a
``TorchDispatchMode`` that checks every aten op's floating outputs. Backward ops are attributed
to modules through the autograd graph: each module's forward labels the graph nodes it created.

This is the slow path (one host synchronisation per op): run it once, when a loss or a
gradient has turned non-finite. The model's buffers (BatchNorm statistics) are restored
afterwards; random ops (dropout) draw new numbers unless the caller restores the RNG state.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = ["NonFiniteEvent", "NonFiniteReport", "locate_nonfinite", "tensor_range"]


@torch.no_grad()
def tensor_range(t: torch.Tensor) -> dict[str, Any]:
    """Shape, dtype, min/max/max|x| over finite values and inf/NaN counts of ``t`` (host sync)."""
    x = t.detach()
    if not x.is_floating_point():
        return {"shape": list(x.shape), "dtype": str(x.dtype).replace("torch.", "")}
    f = x.float()
    finite = torch.isfinite(f)
    nan = int(torch.isnan(f).sum())
    inf = int((~finite).sum()) - nan
    vals = f[finite]
    out: dict[str, Any] = {"shape": list(x.shape), "dtype": str(x.dtype).replace("torch.", ""),
                           "nan": nan, "inf": inf}
    if vals.numel():
        out.update(min=float(vals.min()), max=float(vals.max()), max_abs=float(vals.abs().max()))
    return out


@dataclass
class NonFiniteEvent:
    """One op whose output held inf/NaN. ``from_finite_inputs``: every floating input of the op
    was finite, so this op created the non-finite value (else it only passed one on)."""

    phase: str                      # "forward" or "backward"
    module: str                     # module path ("(model)" for the root, "?" if unknown)
    op: str                         # aten op, e.g. "aten.addmm.default"
    index: int                      # ops seen in this phase before it
    from_finite_inputs: bool
    inputs: list[dict[str, Any]] = field(default_factory=list)
    output: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        rng = "; ".join(_fmt_range(r) for r in self.inputs if "nan" in r) or "no float inputs"
        how = "created it from finite inputs" if self.from_finite_inputs else "received inf/NaN"
        return f"{self.phase}: {self.module} / {self.op} {how} (inputs: {rng})"


def _fmt_range(r: dict[str, Any]) -> str:
    base = f"{r['dtype']}{r['shape']}"
    if "max_abs" in r:
        base += f" [{r['min']:.3g}, {r['max']:.3g}]"
    if r.get("nan") or r.get("inf"):
        base += f" nan={r['nan']} inf={r['inf']}"
    return base


@dataclass
class NonFiniteReport:
    """``first``: the first op with an inf/NaN output; ``origin``: the first that created one
    from finite inputs (None when all of them only received it: the inputs/data were bad).
    ``loss``: the loss value re-computed (a float or "nan"/"inf")."""

    first: NonFiniteEvent | None
    origin: NonFiniteEvent | None
    loss: float | str | None

    def to_dict(self) -> dict[str, Any]:
        return {"first": asdict(self.first) if self.first else None,
                "origin": asdict(self.origin) if self.origin else None, "loss": self.loss}

    def describe(self) -> str:
        if self.first is None:
            return "no inf/NaN found in forward or backward"
        lines = [f"first non-finite output: {self.first.describe()}"]
        if self.origin is None:
            lines.append("no op created it from finite values: the inputs already held inf/NaN")
        elif self.origin is not self.first:
            lines.append(f"created by: {self.origin.describe()}")
        return "\n".join(lines)


class _Watch(TorchDispatchMode):
    def __init__(self, where: Callable[[], str]) -> None:
        super().__init__()
        self.where = where
        self.phase = "forward"
        self.count = {"forward": 0, "backward": 0}
        self.first: NonFiniteEvent | None = None
        self.origin: NonFiniteEvent | None = None

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.origin is not None:
            return out
        self.count[self.phase] += 1
        outs = [t for t in tree_leaves(out) if torch.is_tensor(t) and t.is_floating_point()]
        if outs and not all(bool(torch.isfinite(t).all()) for t in outs):
            ins = [t for t in tree_leaves((args, kwargs))
                   if torch.is_tensor(t) and t.is_floating_point()]
            clean = all(bool(torch.isfinite(t).all()) for t in ins)
            ev = NonFiniteEvent(self.phase, self.where(), str(func), self.count[self.phase] - 1,
                                clean, [tensor_range(t) for t in ins],
                                tensor_range(outs[0]))
            if self.first is None:
                self.first = ev
            if clean:
                self.origin = ev
        return out


def locate_nonfinite(model: nn.Module, run: Callable[[], torch.Tensor], *, scale: float = 1.0,
                     backward: bool = True) -> NonFiniteReport:
    """Find where inf/NaN first appears in one forward (``run()`` -> loss) and backward of
    ``loss * scale`` (use the loss scale of the failing step to reproduce a gradient overflow).

    Returns a ``NonFiniteReport``; ``first is None`` when everything stayed finite. One host
    synchronisation per aten op: a debugging tool, not for every step.
    """
    names = {m: (n or "(model)") for n, m in model.named_modules()}
    stack: list[str] = []
    node_owner: dict[Any, str] = {}
    boundary: list[set] = []
    handles = []

    def pre(module: nn.Module, args: Any, kwargs: Any) -> None:
        stack.append(names[module])
        boundary.append({t.grad_fn for t in tree_leaves((args, kwargs))
                         if torch.is_tensor(t) and t.grad_fn is not None})

    def post(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        name = stack.pop() if stack else names[module]
        stop = boundary.pop() if boundary else set()
        todo = [t.grad_fn for t in tree_leaves(output) if torch.is_tensor(t) and t.grad_fn]
        while todo:  # label the graph nodes this module's forward created
            node = todo.pop()
            if node is None or node in stop or node in node_owner:
                continue
            node_owner[node] = name
            todo.extend(nxt for nxt, _ in node.next_functions)

    def where() -> str:
        if watch.phase == "forward":
            return stack[-1] if stack else "(outside modules: the loss)"
        node = torch._C._current_autograd_node()
        return node_owner.get(node, "(outside modules: the loss)") if node is not None else "?"

    for m in names:
        handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(m.register_forward_hook(post, with_kwargs=True))
    saved = {k: v.detach().clone() for k, v in model.named_buffers()}
    watch = _Watch(where)
    loss_v: float | str | None = None
    try:
        with watch:
            loss = run()
            if not torch.is_tensor(loss) or loss.numel() != 1:
                raise ValueError("run() must return the scalar loss tensor")
            lv = float(loss.detach().float())
            loss_v = lv if math.isfinite(lv) else str(lv)
            params = [p for p in model.parameters() if p.requires_grad]
            if backward and watch.origin is None and isinstance(loss_v, float) and params:
                watch.phase = "backward"
                torch.autograd.grad(loss.float() * scale, params, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for k, v in model.named_buffers():
                if k in saved:
                    v.copy_(saved[k])
    return NonFiniteReport(watch.first, watch.origin, loss_v)
