"""The out-of-memory report of a vision run: a training step (``train``, ``mixprec bench``) that
raised ``torch.OutOfMemoryError`` becomes one line saying what each precision needs at the
run's size and batch and which one fits (``mixprec.bench.oom``).

``OomContext`` is what the report needs, as plain data (no device tensor), so the caller can
free the failed run before the probes measure on the same device. The probes measure the
task's own model (rebuilt from its checkpoint record), loss and synthetic batches at the task's
``memory_probe`` size, with the run's optimizer class and settings.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch

from mixprec.bench.oom import OutOfMemoryReport, StepMemory, explain_oom, step_memory, workload_oom_report
from mixprec.vision.task import Task

__all__ = ["OomContext", "bench_oom_report", "oom_context", "training_oom_report"]


@dataclass(frozen=True)
class OomContext:
    task: Task
    args: dict[str, Any]  # the run's keys
    record: dict[str, Any]  # task.model_record of the model (rebuilds it, without weights)
    optimizer: tuple[type, dict[str, Any]]  # class and constructor settings
    device: str
    failed: str  # the precision that ran out of memory
    key: str  # how the user chose it: amp or precision


def _optimizer_spec(opt: torch.optim.Optimizer) -> tuple[type, dict[str, Any]]:
    inner = getattr(opt, "optimizer", opt)  # MasterWeights wraps the user's optimizer
    cls = type(inner)
    accepted = inspect.signature(cls.__init__).parameters
    return cls, {k: v for k, v in inner.defaults.items() if k in accepted and k != "params"}


def oom_context(st: Any, given_key: str = "amp") -> OomContext:
    """What ``training_oom_report`` needs from a ``TrainState`` (``mixprec.vision.trainer``)."""
    return OomContext(st.task, dict(st.args), st.task.model_record(st.model), _optimizer_spec(st.optimizer),
                      str(st.device), str(st.prec.policy), given_key)


def training_oom_report(ctx: OomContext) -> OutOfMemoryReport:
    """Measure the run's step at the task's probe size for each precision on the run's device
    (free the failed run first) and say what fits."""
    task, args = ctx.task, ctx.args
    template = task.model_from_record(ctx.record)  # built once: the probe size and the loss read it
    probe_args, scale, size = task.memory_probe(args, template)
    loss = task.build_loss(args, template)
    del template
    nc = len(ctx.record["names"])
    cls, settings = ctx.optimizer

    def measure(precision: str) -> StepMemory:
        return step_memory(lambda: task.model_from_record(ctx.record),
                           lambda b: task.synthetic_batch(probe_args, b, nc),
                           lambda out, t: loss(out, t)[0], precision, ctx.device,
                           optimizer_fn=lambda params: cls(params, **settings), seed=int(args["seed"]))

    return explain_oom(ctx.failed, measure, batch=int(args["batch"]), scale=scale, size=size,
                       device=ctx.device, key=ctx.key, size_key=task.size_key)


def bench_oom_report(model: str, size: int, batch: int, failed: str, device: str | torch.device,
                     data: str | None = None, optimizer_fn: Any = None) -> OutOfMemoryReport:
    """The report for ``mixprec bench model=<vision YAML>`` whose ``failed`` precision ran out of
    memory at ``size`` (imgsz or cubic patch side) and ``batch``: the task's workload measured at
    its probe size."""
    from mixprec.vision.task import task_for_model

    task = task_for_model(model)
    full = task.workload(model, size, data)
    probe_args, scale, words = task.memory_probe({task.size_key: size, "seed": 0}, full.model_fn())
    probe_size = probe_args[task.size_key]
    probe = task.workload(model, int(str(probe_size).split(",")[0]), data)
    return workload_oom_report(probe, failed=failed, batch=batch, scale=scale, size=words, device=device,
                               optimizer_fn=optimizer_fn, size_key=task.size_key)
