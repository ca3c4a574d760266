"""Exact byte accounting of a training step: parameters, gradients, master copies, optimizer
state, buffers and activations; plus the process peak RSS and the CUDA allocator peak.

Every count is over distinct storages (``tensor.untyped_storage()``), so views, tied weights and
a tensor saved twice for backward count once. Activations are the tensors autograd saves for
backward, seen through ``torch.autograd.graph.saved_tensors_hooks``; tensors a custom
``autograd.Function`` stores as plain ``ctx`` attributes (not ``save_for_backward``) are not seen.
Nothing here synchronises with the device except the CUDA allocator readings.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch

__all__ = [
    "SavedTensorMeter",
    "StateBytes",
    "format_bytes",
    "peak_rss_bytes",
    "reset_peak_rss",
    "state_bytes",
    "storage_key",
    "tensor_bytes",
]


def format_bytes(n: int | float | None) -> str:
    """``1536`` -> ``"1.50 KiB"``; None -> ``"n/a"``. Binary units (KiB = 1024 B)."""
    if n is None:
        return "n/a"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{value:.2f} GiB"


def storage_key(t: torch.Tensor) -> tuple[str, int]:
    """Identity of the memory a tensor lives in: (device, address of its storage)."""
    return (str(t.device), t.untyped_storage().data_ptr())


def _storage_nbytes(t: torch.Tensor) -> int:
    return int(t.untyped_storage().nbytes())


def tensor_bytes(tensors: Iterable[torch.Tensor], exclude: set[tuple[str, int]] | None = None) -> int:
    """Bytes of the distinct storages behind ``tensors`` (minus those in ``exclude``)."""
    seen: set[tuple[str, int]] = set(exclude or ())
    total = 0
    for t in tensors:
        if t is None or t.device.type == "meta":
            continue
        key = storage_key(t)
        if key in seen or key[1] == 0:
            continue
        seen.add(key)
        total += _storage_nbytes(t)
    return total


@dataclass(frozen=True)
class StateBytes:
    """Persistent training state, in bytes, each storage counted once.

    ``params``: the model's parameters (in their storage dtype). ``buffers``: the model's buffers
    (e.g. BatchNorm running statistics). ``grads``: every ``.grad`` of a model parameter or an
    optimizer parameter (for ``*-master`` presets these are the FP32 master gradients).
    ``master``: tensors the optimizer updates that are not the model's parameters (the FP32
    master copy). ``optimizer_state``: tensors in ``optimizer.state`` (Adam moments, step counts).
    """

    params: int
    buffers: int
    grads: int
    master: int
    optimizer_state: int

    @property
    def total(self) -> int:
        return self.params + self.buffers + self.grads + self.master + self.optimizer_state

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(tensors in the param groups, tensors in the optimizer state)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state: list[torch.Tensor] = []

    def collect(value: Any) -> None:
        if torch.is_tensor(value):
            state.append(value)
        elif isinstance(value, dict):
            for v in value.values():
                collect(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                collect(v)

    for value in optimizer.state.values():
        collect(value)
    return params, state


def state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> StateBytes:
    """Bytes of ``model``'s parameters, buffers and gradients and ``optimizer``'s master copy and
    state, as they are now (call it after ``optimizer.step`` and before ``zero_grad`` to see the
    gradients). No host-device synchronisation."""
    model_params = list(model.parameters())
    param_keys = {storage_key(p) for p in model_params}
    params = tensor_bytes(model_params)
    buffers = tensor_bytes(model.buffers(), exclude=param_keys)
    opt_params, opt_state = _optimizer_tensors(optimizer) if optimizer is not None else ([], [])
    master = tensor_bytes(opt_params, exclude=param_keys)
    grads = tensor_bytes(p.grad for p in [*model_params, *opt_params] if p.grad is not None)
    taken = param_keys | {storage_key(p) for p in opt_params}
    optimizer_state = tensor_bytes(opt_state, exclude=taken)
    return StateBytes(params=params, buffers=buffers, grads=grads, master=master,
                      optimizer_state=optimizer_state)


def _is_param_cast(t: torch.Tensor, param_keys: set[tuple[str, int]]) -> bool:
    """True when ``t`` (or the tensor it is a view of) is a dtype cast of a model parameter, as
    autocast makes for weights: its grad_fn is a copy/cast whose input is the parameter's leaf."""
    base = t._base if t._base is not None else t
    fn = base.grad_fn
    if fn is None or type(fn).__name__ != "ToCopyBackward0":
        return False
    for nxt, _ in fn.next_functions:
        variable = getattr(nxt, "variable", None)
        if variable is not None and storage_key(variable) in param_keys:
            return True
    return False


class SavedTensorMeter:
    """Count the bytes autograd saves for backward inside ``with meter:``.

    ``activation_bytes``: distinct storages saved for backward that are neither parameters,
    buffers, nor the tensors in ``exclude`` (pass the input batch: it is data the loop holds
    anyway). ``cast_bytes``: the part of those that are dtype casts of parameters (autocast's
    FP16/BF16 weight copies kept for backward); they are *not* included in ``activation_bytes``.
    Pure bookkeeping: no copies, no host synchronisation.
    """

    def __init__(self, model: torch.nn.Module, exclude: Iterable[torch.Tensor] = ()) -> None:
        self._param_keys = {storage_key(p) for p in model.parameters()}
        self._skip = self._param_keys | {storage_key(b) for b in model.buffers()}
        self._skip |= {storage_key(t) for t in exclude if torch.is_tensor(t)}
        self._seen: set[tuple[str, int]] = set()
        self.activation_bytes = 0
        self.cast_bytes = 0
        self.saved_tensors = 0
        self._hooks: Any = None

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        self.saved_tensors += 1
        if t.device.type == "meta":
            return t
        key = storage_key(t)
        if key[1] == 0 or key in self._skip or key in self._seen:
            return t
        self._seen.add(key)
        if _is_param_cast(t, self._param_keys):
            self.cast_bytes += _storage_nbytes(t)
        else:
            self.activation_bytes += _storage_nbytes(t)
        return t

    @staticmethod
    def _unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    def __enter__(self) -> SavedTensorMeter:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)
        self._hooks = None


# -- process peak RSS (Linux) -----------------------------------------------------------------

_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


def reset_peak_rss() -> str | None:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process to its current RSS.

    Returns None on success, else the reason it could not (not Linux, or /proc not writable);
    then ``peak_rss_bytes`` reports the peak since the process started."""
    try:
        with open(_CLEAR_REFS, "w", encoding="ascii") as f:
            f.write("5")
    except OSError as err:
        return f"cannot reset the peak RSS ({_CLEAR_REFS}: {err.strerror or err}); peak is since start"
    return None


def peak_rss_bytes() -> int | None:
    """Peak resident set size of this process in bytes (VmHWM, or ru_maxrss where /proc is
    absent); None where neither is available."""
    try:
        with open(_STATUS, encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) * (1 if os.uname().sysname == "Darwin" else 1024)
