"""``compile=True``: the training step's model forward (and the task's loss, where it compiles
without graph breaks) through ``torch.compile``, the precision seam unchanged.

The loop keeps calling ``prec.autocast()``, ``prec.backward(loss)`` and ``prec.step(...)``
exactly as in eager mode: autocast is entered *outside* the compiled region (dynamo records the
autocast state it was traced under and guards on it), the loss scale multiplies the loss outside
it, and the unscale/clip/step and master-weight copies run eagerly on the same parameters. The
compiled callable is ``torch.compile(model)``, which traces ``model.__call__`` with its hooks
(``*-master`` input casts, output casts); it is used for the training forward only. ``st.model``
stays the original module, so checkpoints, the EMA, resume, validation and export see its plain
state dict (no ``_orig_mod.`` prefix).

``compile_step`` compiles eagerly, before the first step: one forward, loss and backward
(``torch.autograd.grad``: no ``.grad`` is written, so no hook or optimizer sees it) on a
synthetic batch of the run's shape, under ``prec.autocast()`` in train mode, with the RNG and the
BatchNorm running statistics restored afterwards. A failure (no C++ compiler, an op inductor
cannot lower, a graph break in a loss compiled with ``fullgraph=True``) is one ``ValueError``
naming the cause and the fix (``compile=False``), raised before any training step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["BACKEND", "check_compile_value", "compile_step"]

#: the ``torch.compile`` backend of ``compile=True`` (inductor: C++/OpenMP kernels on CPU, Triton
#: on CUDA). Tests swap in a counting backend to check the wiring without inductor's compile time.
BACKEND: Any = "inductor"


def check_compile_value(value: Any) -> bool:
    """``value`` as a bool; anything but True/False raises ValueError naming it."""
    if not isinstance(value, bool):
        raise ValueError(f"compile={value!r}: use compile=True (torch.compile the training forward) "
                         "or compile=False (eager)")
    return value


def _first_line(err: BaseException) -> str:
    """The first line of the root cause (dynamo wraps a backend's error in BackendCompilerFailed)."""
    for _ in range(8):
        inner = getattr(err, "inner_exception", None) or err.__cause__
        if inner is None or inner is err:
            break
        err = inner
    text = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text if len(text) <= 240 else text[:237] + "..."


def _warm_up(forward: Callable, loss_fn: Callable, model: nn.Module, batch: tuple[Any, Any],
             autocast: Callable[[], Any]) -> None:
    """Forward, loss and backward once on ``batch`` so every graph compiles now; parameters,
    ``.grad``, buffers and the RNG are as before."""
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    params = [p for p in model.parameters() if p.requires_grad]
    devices = sorted({p.device.index for p in params if p.device.type == "cuda"})
    was_training = model.training
    model.train()
    try:
        with torch.random.fork_rng(devices=devices):
            inputs, targets = batch
            with autocast():
                outputs = forward(inputs)
            loss, _ = loss_fn(outputs, targets)
            if params:
                torch.autograd.grad(loss.float(), params, allow_unused=True)
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        model.train(was_training)


def compile_step(model: nn.Module, loss_fn: Callable, batches: list[tuple[Any, Any]],
                 autocast: Callable[[], Any], compile_loss: bool,
                 loss_note: str = "") -> tuple[Callable, Callable]:
    """``(compiled forward, loss)`` for the training loop: ``torch.compile(model)`` (backend
    ``BACKEND``) and, with ``compile_loss``, the loss compiled with ``fullgraph=True``; else the
    loss as given (``loss_note`` says why, printed). Both are compiled now on ``batches``
    (synthetic ``(inputs on the device, targets)`` at each batch shape the run sees) under
    ``autocast``; any failure is one ValueError that names the cause and says ``compile=False``.
    Prints one line saying what was compiled."""
    try:
        forward = torch.compile(model, backend=BACKEND, dynamic=False)
        loss = (torch.compile(loss_fn, backend=BACKEND, fullgraph=True, dynamic=False) if compile_loss
                else loss_fn)
        for batch in batches:
            _warm_up(forward, loss, model, batch, autocast)
    except Exception as err:  # compiler missing, lowering failure, graph break: one line, no run
        torch._dynamo.reset()
        raise ValueError(f"compile=True failed before the first step ({_first_line(err)}): "
                         "train with compile=False (eager), or fix the cause") from err
    name = BACKEND if isinstance(BACKEND, str) else getattr(BACKEND, "__name__", "custom")
    eager = "" if compile_loss else f"; the loss runs eagerly{' (' + loss_note + ')' if loss_note else ''}"
    print(f"compile: torch.compile (backend {name}) compiled the model forward"
          f"{' and the loss' if compile_loss else ''} for {len(batches)} batch shape(s){eager}")
    return forward, loss
