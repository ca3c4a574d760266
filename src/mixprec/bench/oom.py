"""What a training step that ran out of device memory needed, per precision: the one-line report.

A CUDA ``torch.OutOfMemoryError`` says what the allocator could not get, not what would fit.
``step_memory`` measures one training step exactly with ``measure_memory`` (parameters, buffers,
gradients, master copy, optimizer state, autocast weight casts, tensors saved for backward and
the batch) at a small probe batch and size on the device; ``StepMemory.at`` extrapolates: the
fixed part stays, activations and batch grow linearly with the batch and with the pixel/voxel
count (unet3d-s: 7.99x for 8x the voxels from 32^3 to 64^3). ``explain_oom`` turns those figures,
for the precisions the engine offers on the device, into an ``OutOfMemoryReport``: one line
with what the failed precision needs, what the device has free and the precision that fits.
The figures are lower bounds of the real peak (allocator workspace is not counted).
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mixprec.bench.autobatch import available_ram_bytes
from mixprec.bench.memory import format_bytes
from mixprec.bench.runner import measure_memory
from mixprec.bench.step import LossFn, ModelFn, OptimizerFn, build_state, to_device
from mixprec.bench.tasks import BenchTask

__all__ = ["OutOfMemoryReport", "StepMemory", "explain_oom", "free_bytes", "offered_precisions",
           "step_memory", "workload_oom_report"]

#: the training presets, in the order the report recommends them (FP32 master weights first)
TRAINING_PRESETS = ("32", "bf16-mixed", "16-mixed", "bf16-master", "16-master")


class OutOfMemoryReport(ValueError):
    """A training step ran out of device memory. The message names the bytes the failed
    precision needs, the free memory and the precision that fits; a ValueError, so the CLI
    prints it as one line (exit status 2)."""


@dataclass(frozen=True)
class StepMemory:
    """One training step's bytes under ``precision``, measured at a probe: ``fixed_bytes``
    (parameters, buffers, gradients, master copy, optimizer state, weight casts) and
    ``sample_bytes`` (activations saved for backward plus the input batch, per sample at the
    probe size); ``activation_bytes``: the activations of the whole probe batch."""

    precision: str
    fixed_bytes: int
    sample_bytes: float
    activation_bytes: int
    probe_batch: int

    def at(self, batch: int, scale: float = 1.0) -> float:
        """Bytes at ``batch`` samples of ``scale`` times the probe's pixels/voxels per sample."""
        return self.fixed_bytes + self.sample_bytes * batch * scale


def step_memory(model_fn: ModelFn, batch_fn: Callable[[int], tuple[Any, Any]], loss_fn: LossFn,
                precision: Any, device: str | torch.device, *, probe_batch: int = 1,
                optimizer_fn: OptimizerFn | None = None, seed: int = 0) -> StepMemory:
    """Measure one step of a fresh ``model_fn()`` under ``precision`` on ``device`` at
    ``batch_fn(probe_batch)``, drawn under ``manual_seed(seed + 1)`` (global RNG restored), by
    ``measure_memory`` (the optimizer steps until its state exists).
    Synchronises with the device; frees the probe's model before returning."""
    dev = torch.device(device)
    state = build_state(model_fn, precision, dev, optimizer_fn=optimizer_fn, seed=seed)
    name = str(state.precision.policy)
    try:
        with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
            torch.manual_seed(seed + 1)  # the same batch every time: some losses save data-sized tensors
            batch = to_device(batch_fn(probe_batch), dev)
        m = measure_memory(state, batch, loss_fn, dev)
    finally:
        del state
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    fixed = sum(int(m[k]) for k in ("params", "buffers", "grads", "master", "optimizer_state", "casts"))
    return StepMemory(name, fixed, (m["activations"] + m["batch"]) / probe_batch, int(m["activations"]),
                      probe_batch)


def free_bytes(device: str | torch.device) -> int | None:
    """Memory a run could take on ``device`` now: CUDA ``mem_get_info`` free bytes after the
    cache is emptied, capped by ``set_per_process_memory_fraction`` where one is set; elsewhere
    the machine's ``MemAvailable``. None where unknown."""
    dev = torch.device(device)
    if dev.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(dev)
        get_fraction = getattr(torch.cuda, "get_per_process_memory_fraction", None)
        if get_fraction is not None:
            free = min(free, int(get_fraction(dev) * total) - torch.cuda.memory_reserved(dev))
        return max(int(free), 0)
    return available_ram_bytes()


def offered_precisions(device: str | torch.device) -> tuple[str, ...]:
    """The training presets the engine offers on ``device`` (BF16 ones only where the CUDA
    device supports BF16), in the order the report recommends them."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        return tuple(p for p in TRAINING_PRESETS if not p.startswith("bf16"))
    return TRAINING_PRESETS


def _gib(n: float) -> str:
    return "~" + format_bytes(n)


def explain_oom(failed: str, measure: Callable[[str], StepMemory], *, batch: int, scale: float,
                size: str, device: str | torch.device, key: str = "amp",
                precisions: Sequence[str] | None = None, free: int | None = None,
                size_key: str = "size") -> OutOfMemoryReport:
    """The report for a step under ``failed`` that ran out of memory at ``batch`` and ``size``
    (words, e.g. ``"patch 128"``). ``measure(precision)`` gives the ``StepMemory`` at the probe,
    ``scale`` the run's pixels/voxels per sample over the probe's; ``free``: the device's free
    bytes (default ``free_bytes(device)``: call this after the failed run's tensors are freed).
    ``precisions``: the candidates (default ``offered_precisions(device)``); the first that
    needs less than ``failed`` and fits ``free`` is recommended as ``<key>=<preset>``."""
    dev = str(device)
    free = free_bytes(device) if free is None else free
    need: dict[str, float | None] = {}
    for p in [failed, *(q for q in (precisions or offered_precisions(device)) if q != failed)]:
        try:
            need[p] = measure(p).at(batch, scale)
        except torch.OutOfMemoryError:  # even the probe does not fit next to what is held
            need[p] = None
    own = need[failed]
    have = f"({dev} has {format_bytes(free)} free)" if free is not None else f"({dev}: free memory unknown)"
    head = (f"precision {failed} needs {_gib(own)} at {size}, batch {batch} {have}" if own is not None
            else f"precision {failed} runs out of memory at {size}, batch {batch} {have}")
    if own is not None and free is not None and own <= free:
        head += " by exact accounting; the rest went to allocator workspace and fragmentation"
    smaller = {p: n for p, n in need.items() if p != failed and n is not None and (own is None or n < own)}
    fits = [p for p, n in smaller.items() if free is None or n <= free]
    if fits:
        best = fits[0]
        return OutOfMemoryReport(f"{head}; {best} fits in {_gib(smaller[best])} -- rerun with "
                                 f"{key}={best} (or a smaller {size_key}/batch)")
    if smaller:
        least = min(smaller, key=lambda p: smaller[p])
        return OutOfMemoryReport(f"{head}; no precision fits (the least, {least}, needs "
                                 f"{_gib(smaller[least])}) -- use a smaller {size_key}/batch")
    return OutOfMemoryReport(f"{head}; no precision needs less -- use a smaller {size_key}/batch")


def workload_oom_report(probe: BenchTask, *, failed: str, batch: int, scale: float, size: str,
                        device: str | torch.device, optimizer_fn: OptimizerFn | None = None,
                        key: str = "precision", size_key: str = "imgsz") -> OutOfMemoryReport:
    """``explain_oom`` for a ``mixprec bench`` workload: ``probe`` is the workload at the probe
    size (the run's own when it cannot be made smaller; then ``scale`` is 1)."""

    def measure(precision: str) -> StepMemory:
        return step_memory(probe.model_fn, probe.batch_fn, probe.loss_fn, precision, device,
                           optimizer_fn=optimizer_fn)

    return explain_oom(failed, measure, batch=batch, scale=scale, size=size, device=device, key=key,
                       size_key=size_key)
