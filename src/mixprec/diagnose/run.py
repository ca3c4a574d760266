"""``diagnose``: a short training run under telemetry, for any ``nn.Module``."""

from __future__ import annotations

import contextlib
import copy
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from mixprec.diagnose.locate import locate_nonfinite
from mixprec.diagnose.report import DoctorReport
from mixprec.diagnose.telemetry import Telemetry
from mixprec.formats import FloatFormat

__all__ = ["diagnose"]


def _split(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, dict):
        raise ValueError("batches are dicts: pass forward=lambda model, batch: loss to say how "
                         "one batch becomes a loss")
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise ValueError(f"each batch must be an (inputs, targets) pair, got {type(batch).__name__}; "
                     "or pass forward=lambda model, batch: loss")


def diagnose(
    model: nn.Module,
    batches: Iterable[Any],
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    precision: Any = "16-mixed",
    steps: int = 20,
    *,
    fmt: str | torch.dtype | FloatFormat | None = None,
    forward: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None = None,
    lr: float = 1e-3,
    device: str | torch.device | None = None,
    emulate: bool = False,
    max_norm: float | None = None,
    copy_model: bool = True,
    locate: bool = True,
    margin_bits: int = 3,
) -> DoctorReport:
    """Train ``model`` for ``steps`` steps under ``precision`` with telemetry on, and report.

    ``batches``: ``(inputs, targets)`` pairs: a list (cycled when shorter than ``steps``) or any
    iterable, consumed lazily (a DataLoader is restarted when it runs out);
    ``loss_fn(model(inputs), targets)`` gives the loss, or pass ``forward(model, batch) -> loss``
    for anything else (detectors, dict batches). ``precision``: a preset name, ``Policy`` or
    ``mixprec.Precision``. ``fmt``: the format to judge against (default: the policy's compute
    dtype; FP16 for an FP32 run, which then shows what FP16 *would* do, at FP32 speed).
    ``optimizer``: a factory ``params -> Optimizer`` (default SGD, momentum 0.9, ``lr``).
    ``copy_model``: train a deep copy, leaving ``model`` untouched. ``locate``: at the first
    skipped step, re-run that batch under the NaN locator (slow path, once).
    Host synchronisation: the engine's one per step, plus one scale read per step.
    """
    from mixprec.precision import Precision

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if forward is None and loss_fn is None:
        raise ValueError("pass loss_fn(outputs, targets) -> loss, or forward(model, batch) -> loss")
    net = copy.deepcopy(model) if copy_model else model
    if device is not None:
        net = net.to(device)
    prec = precision if isinstance(precision, Precision) else Precision(
        precision, device=device or _device_of(net), emulate=emulate)
    make_opt = optimizer or (lambda ps: torch.optim.SGD(ps, lr=lr, momentum=0.9))
    net, opt = prec.setup(net, make_opt([p for p in net.parameters() if p.requires_grad]))

    def step_loss(batch: Any) -> torch.Tensor:
        with prec.autocast():
            if forward is not None:
                return forward(net, batch)
            x, y = _split(batch)
            return loss_fn(net(x), y)

    nan_report = None
    tel = Telemetry(net, fmt, precision=prec)
    net.train()
    with tel:
        for batch in _stream(batches, steps):
            rng = _rng_state(net)
            loss = step_loss(batch)
            scale = tel.scale                    # read by the telemetry at this forward
            prec.backward(loss)
            stepped = prec.step(opt, max_norm=max_norm)
            tel.on_step(prec, net, stepped, loss=loss, optimizer=opt)
            if not stepped and locate and nan_report is None:
                tel.paused = True
                try:
                    with _replay_rng(rng):
                        nan_report = locate_nonfinite(net, lambda b=batch: step_loss(b),
                                                      scale=scale)
                finally:
                    tel.paused = False
            opt.zero_grad(set_to_none=True)
    ctx = {"precision": str(prec.policy), "emulate": bool(getattr(prec, "emulate", False)),
           "model": type(model).__name__, "device": str(_device_of(net))}
    return tel.report(nan_locator=nan_report, margin_bits=margin_bits, **ctx)


def _stream(batches: Iterable[Any], steps: int) -> Iterator[Any]:
    """``steps`` batches: a list/tuple is cycled; another iterable is consumed lazily (and
    restarted when it can be, e.g. a DataLoader)."""
    if isinstance(batches, (list, tuple)):
        if not batches:
            raise ValueError("batches is empty: give at least one batch")
        yield from itertools.islice(itertools.cycle(batches), steps)
        return
    n = 0
    while n < steps:
        it = iter(batches)
        got = False
        for b in it:
            got = True
            yield b
            n += 1
            if n >= steps:
                return
        if not got:
            raise ValueError("batches is empty: give at least one batch")
        if it is batches:
            raise ValueError(f"batches ran out after {n} of {steps} steps: pass a list (it is "
                             "cycled), a re-iterable such as a DataLoader, or fewer steps")


def _rng_state(model: nn.Module) -> tuple[torch.Tensor, Any]:
    dev = _device_of(model)
    cuda = torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None
    return torch.get_rng_state(), (dev, cuda)


@contextlib.contextmanager
def _replay_rng(state: tuple[torch.Tensor, Any]) -> Iterator[None]:
    """Re-draw the same random numbers (dropout) as the step being replayed; restore after."""
    cpu, (dev, cuda) = state
    with torch.random.fork_rng(devices=[dev] if cuda is not None else []):
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, dev)
        yield


def _device_of(model: nn.Module) -> torch.device:
    for p in itertools.chain(model.parameters(), model.buffers()):
        return p.device
    return torch.device("cpu")
