"""One training step under a precision, the way every mixprec loop runs it.

``build_state`` makes a fresh model (seeded), its optimizer and a ``mixprec.Precision`` and calls
``setup``; ``train_step`` runs forward and loss under ``prec.autocast()``, ``prec.backward`` and
``prec.step``. Shared by the benchmark and the batch-size search so both measure the same step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from mixprec._tree import leaves, map_leaves

__all__ = ["TrainState", "build_state", "default_optimizer", "iter_tensors", "to_device",
           "train_step"]

ModelFn = Callable[[], torch.nn.Module]
OptimizerFn = Callable[[Any], torch.optim.Optimizer]
LossFn = Callable[[Any, Any], torch.Tensor]


def default_optimizer(params: Any) -> torch.optim.Optimizer:
    """AdamW(lr=1e-3): two FP32 moments per parameter, the common case for memory accounting."""
    return torch.optim.AdamW(params, lr=1e-3)


@dataclass
class TrainState:
    """A model, its optimizer and the ``Precision`` that steps them, on ``device``."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    precision: Any  # mixprec.Precision
    device: torch.device


def to_device(obj: Any, device: torch.device) -> Any:
    """``obj`` with every tensor inside (lists, tuples, dicts) moved to ``device``."""
    return map_leaves(lambda t: t.to(device, non_blocking=True) if torch.is_tensor(t) else t, obj)


def iter_tensors(obj: Any) -> Iterator[torch.Tensor]:
    """Every tensor inside ``obj`` (lists, tuples, dicts)."""
    return (t for t in leaves(obj) if torch.is_tensor(t))


def build_state(model_fn: ModelFn, precision: Any, device: torch.device, *,
                optimizer_fn: OptimizerFn | None = None, seed: int = 0,
                emulate: bool = False) -> TrainState:
    """A fresh ``model_fn()`` (initialised under ``torch.manual_seed(seed)``; the global RNG is
    restored afterwards), moved to ``device``, with ``optimizer_fn(model.parameters())`` and
    ``Precision(precision, device=device, emulate=emulate).setup`` applied. ``precision`` may
    also be a factory ``() -> Precision`` (a fresh, not yet set up one; ``emulate`` is then its)."""
    from mixprec.precision import Precision

    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        model = model_fn()
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model_fn must return a torch.nn.Module, got {type(model).__name__}")
    model = model.to(device).train()
    optimizer = (optimizer_fn or default_optimizer)(model.parameters())
    prec = precision() if callable(precision) else Precision(precision, device=device, emulate=emulate)
    model, optimizer = prec.setup(model, optimizer)
    return TrainState(model=model, optimizer=optimizer, precision=prec, device=device)


def forward_loss(state: TrainState, inputs: Any, targets: Any, loss_fn: LossFn) -> torch.Tensor:
    """``loss_fn(model(inputs), targets)`` under ``prec.autocast()``. A tuple/list ``inputs`` is
    unpacked into positional arguments, a dict into keyword arguments."""
    with state.precision.autocast():
        if isinstance(inputs, dict):
            out = state.model(**inputs)
        elif isinstance(inputs, (list, tuple)):
            out = state.model(*inputs)
        else:
            out = state.model(inputs)
        loss = loss_fn(out, targets)
    if not torch.is_tensor(loss) or loss.numel() != 1:
        raise ValueError("loss_fn must return a scalar tensor (one element), got "
                         f"{type(loss).__name__} {tuple(getattr(loss, 'shape', ()))}")
    return loss


def train_step(state: TrainState, inputs: Any, targets: Any, loss_fn: LossFn, *,
               meter: AbstractContextManager | None = None,
               max_norm: float | None = None) -> tuple[torch.Tensor, bool]:
    """One step: forward+loss (inside ``meter`` if given), ``prec.backward``, ``prec.step``.

    Returns the detached loss (on the device: no sync here) and whether the optimizer stepped
    (``prec.step`` makes its one host sync for the inf/NaN check). Gradients are left in place:
    call ``state.optimizer.zero_grad(set_to_none=True)`` after reading them."""
    with meter if meter is not None else nullcontext():
        loss = forward_loss(state, inputs, targets, loss_fn)
    state.precision.backward(loss)
    stepped = bool(state.precision.step(state.optimizer, max_norm=max_norm))
    return loss.detach(), stepped
