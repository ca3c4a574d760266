"""The largest batch that fits a memory budget, found by measurement (the trainer's ``batch=-1``).

``largest_batch(model, batch_fn, loss_fn, precision=..., device=..., fraction=0.6)`` doubles the
batch from 1 until a training step no longer fits the budget, then bisects. What "fits" means:

- ``measure="allocator"`` (the default on CUDA): one full training step (forward, backward,
  optimizer step) at that batch; the CUDA caching allocator's peak ``memory_allocated`` during
  the step, minus what was allocated before the model copy was built, must stay within the
  budget, and an out-of-memory error counts as "does not fit".
- ``measure="accounted"`` (the default elsewhere): the exact byte accounting of
  ``mixprec.bench.memory``: persistent state (parameters, buffers, gradients, master copy,
  optimizer state, measured after one full step at batch 1) plus the tensors autograd saves for
  backward at that batch (activations and autocast's weight casts) plus the batch itself. This
  is a lower bound of the true peak: transient workspace is not counted.
- ``measure="linear"``: the accounted bytes measured exactly at batch 1 and 2 only, and
  extrapolated linearly (exact for models whose saved tensors grow linearly with the batch, as
  CNNs' do); the search then costs two small forwards instead of forwards at large batches,
  which matters on CPUs, where a probe at batch 256 of a detector takes many minutes.

Budget: ``budget_bytes`` if given; otherwise ``fraction`` of the CUDA device's total memory, or
of the machine's available RAM (``MemAvailable``) on CPU.
"""

from __future__ import annotations

import copy
import gc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from mixprec.bench.memory import SavedTensorMeter, format_bytes, state_bytes, tensor_bytes
from mixprec.bench.step import (
    LossFn,
    OptimizerFn,
    build_state,
    forward_loss,
    iter_tensors,
    to_device,
    train_step,
)

__all__ = ["BatchDoesNotFitError", "BatchSearch", "available_ram_bytes", "largest_batch",
           "search_largest"]

BatchFn = Callable[[int], tuple[Any, Any]]


class BatchDoesNotFitError(ValueError):
    """Even the smallest batch does not fit the budget."""


def search_largest(fits: Callable[[int], bool], *, start: int = 1, max_batch: int = 1024) -> int:
    """Largest ``b`` in ``[start, max_batch]`` with ``fits(b)``, for a monotone ``fits``
    (True up to some batch, False above). Doubles from ``start``, then bisects: at most about
    ``2 * log2(max_batch / start) + 1`` calls. Raises BatchDoesNotFitError if ``fits(start)`` is
    False."""
    if start < 1 or max_batch < start:
        raise ValueError(f"need 1 <= start <= max_batch, got start={start}, max_batch={max_batch}")
    if not fits(start):
        raise BatchDoesNotFitError(f"batch {start} does not fit")
    lo, hi = start, None
    while hi is None:
        nxt = min(lo * 2, max_batch)
        if nxt == lo:
            return lo  # max_batch fits
        if fits(nxt):
            lo = nxt
        else:
            hi = nxt
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


@dataclass(frozen=True)
class BatchSearch:
    """Result of ``largest_batch``.

    ``batch``: the largest batch that fits. ``budget_bytes`` and ``budget_source`` (where the
    budget came from, in words). ``measure``: ``"allocator"`` or ``"accounted"``. ``probes``:
    (batch, bytes) for every batch tried, in order; bytes is None for an out-of-memory error.
    ``capped``: the search stopped at ``max_batch`` (the true limit may be higher).
    """

    batch: int
    budget_bytes: int
    budget_source: str
    measure: str
    precision: str
    device: str
    probes: tuple[tuple[int, int | None], ...]
    capped: bool

    def bytes_at(self, batch: int) -> int | None:
        for b, n in self.probes:
            if b == batch:
                return n
        raise KeyError(f"batch {batch} was not probed; probed: {[b for b, _ in self.probes]}")

    @property
    def reason(self) -> str:
        """One line saying what was chosen and why, for logs."""
        used = self.bytes_at(self.batch)
        over = [(b, n) for b, n in self.probes if b > self.batch]
        first_over = min(over, key=lambda x: x[0]) if over else None
        text = (f"batch {self.batch} for {self.precision} on {self.device}: "
                f"{_gib(used)} ({self.measure}) of a {_gib(self.budget_bytes)} budget "
                f"({self.budget_source})")
        if self.capped:
            text += f"; capped at max_batch={self.batch}"
        elif first_over is not None:
            need = "out of memory" if first_over[1] is None else _gib(first_over[1])
            text += f"; batch {first_over[0]} needs {need}"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "budget_bytes": self.budget_bytes,
                "budget_source": self.budget_source, "measure": self.measure,
                "precision": self.precision, "device": self.device,
                "probes": [list(p) for p in self.probes], "capped": self.capped}


def _gib(n: int | None) -> str:
    return format_bytes(n)


def available_ram_bytes() -> int | None:
    """``MemAvailable`` from /proc/meminfo in bytes (None where it cannot be read)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _budget(device: torch.device, budget_bytes: int | None, fraction: float) -> tuple[int, str]:
    if budget_bytes is not None:
        if int(budget_bytes) <= 0:
            raise ValueError(f"budget_bytes must be positive, got {budget_bytes}")
        return int(budget_bytes), "given"
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction} (e.g. 0.6 for 60%)")
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        return int(fraction * total), f"{fraction:.2f} x {_gib(total)} CUDA memory"
    ram = available_ram_bytes()
    if ram is None:
        raise ValueError(f"cannot read the available RAM on {device}; pass budget_bytes=...")
    return int(fraction * ram), f"{fraction:.2f} x {_gib(ram)} available RAM"


def _model_fn(model: torch.nn.Module | Callable[[], torch.nn.Module],
              ) -> Callable[[], torch.nn.Module]:
    if isinstance(model, torch.nn.Module):
        return lambda: copy.deepcopy(model)
    if callable(model):
        return model
    raise TypeError(f"model must be an nn.Module or a function returning one, got {type(model).__name__}")


def _accounted_probe(state: Any, batch_fn: BatchFn, loss_fn: LossFn,
                     static: int) -> Callable[[int], int]:
    def measure(batch: int) -> int:
        inputs, targets = to_device(batch_fn(batch), state.device)
        data = list(iter_tensors((inputs, targets)))
        meter = SavedTensorMeter(state.model, exclude=data)
        with meter:
            loss = forward_loss(state, inputs, targets, loss_fn)
        del loss  # frees the graph; no backward needed to count what it saved
        return static + meter.activation_bytes + meter.cast_bytes + tensor_bytes(data)

    return measure


def _allocator_probe(state: Any, batch_fn: BatchFn, loss_fn: LossFn,
                     base: int) -> Callable[[int], int | None]:
    dev = state.device

    def measure(batch: int) -> int | None:
        state.optimizer.zero_grad(set_to_none=True)
        gc.collect()
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        try:
            inputs, targets = to_device(batch_fn(batch), dev)
            train_step(state, inputs, targets, loss_fn)
            torch.cuda.synchronize(dev)
            peak = torch.cuda.max_memory_allocated(dev) - base
        except torch.cuda.OutOfMemoryError:
            peak = None
        inputs = targets = None
        state.optimizer.zero_grad(set_to_none=True)
        gc.collect()
        torch.cuda.empty_cache()
        return peak

    return measure


def largest_batch(
    model: torch.nn.Module | Callable[[], torch.nn.Module],
    batch_fn: BatchFn,
    loss_fn: LossFn,
    *,
    precision: Any = "32",
    device: str | torch.device | None = None,
    budget_bytes: int | None = None,
    fraction: float = 0.6,
    optimizer_fn: OptimizerFn | None = None,
    max_batch: int = 1024,
    measure: str = "auto",
    emulate: bool = False,
) -> BatchSearch:
    """The largest batch whose training step fits the memory budget under ``precision``.

    ``model``: an ``nn.Module`` (deep-copied, never modified) or a function returning a fresh
    one. ``batch_fn(batch_size) -> (inputs, targets)``: a batch of that size (any device; moved
    to ``device``). ``loss_fn(outputs, targets) -> scalar tensor``. ``optimizer_fn(params)``:
    default AdamW. ``precision``: a preset name or Policy, or a factory ``() -> Precision`` that
    returns a fresh one (so the caller's run keeps one Precision; the probe builds its own).
    ``budget_bytes`` / ``fraction``: see the module docstring. ``measure``: ``"auto"``,
    ``"allocator"`` (CUDA only), ``"accounted"`` or ``"linear"``. Synchronises with the device at
    every probe. Raises BatchDoesNotFitError (a ValueError) naming the bytes needed when batch 1
    does not fit.
    """
    dev = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    if measure == "auto":
        measure = "allocator" if dev.type == "cuda" else "accounted"
    if measure not in ("allocator", "accounted", "linear"):
        raise ValueError(f"measure must be 'auto', 'allocator', 'accounted' or 'linear', got "
                         f"{measure!r}")
    if measure == "allocator" and dev.type != "cuda":
        raise ValueError(f"measure='allocator' needs a CUDA device, got {dev}; use 'accounted'")
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    budget, source = _budget(dev, budget_bytes, fraction)
    make_model = _model_fn(model)

    base = 0
    if measure == "allocator":
        gc.collect()
        torch.cuda.synchronize(dev)
        base = torch.cuda.memory_allocated(dev)
    state = build_state(make_model, precision, dev, optimizer_fn=optimizer_fn, emulate=emulate)
    if measure in ("accounted", "linear"):
        inputs, targets = to_device(batch_fn(1), dev)
        static = 0
        for _ in range(32):  # until a step is applied (a dynamic scaler may skip the first ones)
            _, applied = train_step(state, inputs, targets, loss_fn)
            static = max(static, state_bytes(state.model, state.optimizer).total)
            state.optimizer.zero_grad(set_to_none=True)  # grads stay counted in `static`
            if applied:
                break
        probe: Callable[[int], int | None] = _accounted_probe(state, batch_fn, loss_fn, static)
        if measure == "linear":
            exact = {1: probe(1), 2: probe(2)}
            per_sample = exact[2] - exact[1]

            def probe(batch: int) -> int:
                return exact[batch] if batch in exact else exact[1] + (batch - 1) * per_sample
    else:
        probe = _allocator_probe(state, batch_fn, loss_fn, base)

    probes: list[tuple[int, int | None]] = []

    def fits(batch: int) -> bool:
        used = probe(batch)
        probes.append((batch, used))
        return used is not None and used <= budget

    policy_name = str(state.precision.policy)
    try:
        batch = search_largest(fits, start=1, max_batch=max_batch)
    except BatchDoesNotFitError:
        used = probes[-1][1]
        need = "runs out of memory" if used is None else f"needs {_gib(used)}"
        raise BatchDoesNotFitError(
            f"batch 1 under {policy_name} on {dev} {need}, more than the {_gib(budget)} budget "
            f"({source}); raise the budget, shrink the model or image size, or try a lower "
            "precision") from None
    finally:
        del state
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return BatchSearch(batch=batch, budget_bytes=budget, budget_source=source, measure=measure,
                       precision=policy_name, device=str(dev), probes=tuple(probes),
                       capped=batch == max_batch)
