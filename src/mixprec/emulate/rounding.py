"""Fast rounding to a low-precision format, for use inside the emulator.

``quantize`` returns FP32 tensors holding values rounded to nearest-even in the format. For
fp16/bf16/fp8 it goes through torch's own cast (``x.to(dtype).float()``), which is bitwise equal
to :func:`mixprec.formats.round_to` for every FP32 input, specials and out-of-range values
included (``tests/emulate/test_rounding.py`` checks this on millions of random bit patterns) and
roughly 10x faster on CPU. ``round_storage_`` rounds in place without bumping autograd's version
counter, so tensors saved for backward see the rounded value, exactly as a low-precision tensor
saved on a GPU would. Nothing here synchronises with the host.
"""

from __future__ import annotations

import sys
import threading

import torch
from torch.utils._python_dispatch import _disable_current_modes, _get_current_dispatch_mode

from mixprec.formats import FloatFormat, get_format, round_to

__all__ = ["grad_rounder", "quantize", "round_storage_"]

_SCRATCH = threading.local()


def _dense(x: torch.Tensor) -> bool:
    return (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)
            or x.is_contiguous(memory_format=torch.channels_last_3d))


def _through_half(x: torch.Tensor, dtype: torch.dtype, out: torch.Tensor) -> torch.Tensor:
    """``out[...] = x rounded to dtype`` (FP32 ``x`` and ``out``, same shape; ``out`` may be ``x``).

    On the CPU the half copy goes through a per-thread scratch buffer that is reused from call
    to call: a fresh multi-megabyte allocation per rounding (page faults) costs more than the
    conversion itself. Not differentiable; the values equal ``x.to(dtype).float()`` bit for bit."""
    if (x.device.type != "cpu" or not _dense(x) or out.stride() != x.stride()
            or _get_current_dispatch_mode() is not None):
        # Under a dispatch mode (e.g. the doctor's NaN locator, which judges each aten op by its
        # inputs and outputs) keep the plain cast: a reused buffer's stale contents would look
        # like an input of the copy.
        return out.copy_(x.to(dtype))
    buffers = getattr(_SCRATCH, "buffers", None)
    if buffers is None:
        buffers = _SCRATCH.buffers = {}
    n = x.numel()
    buf = buffers.get(dtype)
    if buf is None or buf.numel() < n:
        buf = buffers[dtype] = torch.empty(n, dtype=dtype)
    half = buf[:n].as_strided(x.shape, x.stride())  # same layout as x (channels-last too)
    half.copy_(x)
    return out.copy_(half)


def quantize(x: torch.Tensor, fmt: str | torch.dtype | FloatFormat) -> torch.Tensor:
    """Round ``x`` (any float dtype) to ``fmt`` nearest-even; returns a new FP32 tensor.

    Differentiable for fp16/bf16: the gradient flowing back through it is rounded to the same
    format (the backward of ``x.to(half).float()``), just as the gradient of a low-precision copy
    is low precision on a GPU. For fp8 formats it is not differentiable (use the FP8 recipe).
    """
    f = get_format(fmt)
    if f.dtype is None:  # tf32 has no torch dtype: fall back to the bit-exact reference
        return round_to(x, f)
    if x.dtype == f.dtype:
        return x.float()
    return x.to(f.dtype).float()


def _round_data_(t: torch.Tensor, f: FloatFormat) -> None:
    d = t.data  # no version bump: saved-for-backward copies see the rounded values
    if f.dtype is None:
        d.copy_(round_to(d, f))
    else:
        _through_half(d, f.dtype, d)


def round_storage_(t: torch.Tensor, fmt: str | torch.dtype | FloatFormat) -> torch.Tensor:
    """Round the FP32 tensor ``t`` to ``fmt`` in place (autograd's version counter untouched)."""
    if t.dtype != torch.float32:
        raise ValueError(f"round_storage_ needs an FP32 tensor, got {t.dtype}; emulation keeps "
                         "storage in FP32 (call .float() first)")
    _round_data_(t, get_format(fmt))
    return t


_ROUNDED = "_mixprec_rounded_gradient"


def _rounded_before(g: torch.Tensor, name: str) -> bool:
    """True when ``g`` is (a view of) a gradient this module already rounded to ``name`` and
    nothing has written to it since (views share the version counter of their base): e.g. the
    pieces ``cat``'s backward cuts from its rounded output gradient."""
    return any(t is not None and t.__dict__.get(_ROUNDED) == (name, t._version)
               for t in (g, g._base))


def _counts(g: torch.Tensor) -> tuple[int, int, int] | None:
    """(Python references, autograd/C++ references, storage references) of a gradient, as seen
    from a tensor hook that calls this directly; None on a torch without the counters."""
    try:
        return (sys.getrefcount(g), g._use_count(),
                torch._C._storage_Use_Count(g.untyped_storage()._cdata))
    except (AttributeError, RuntimeError, NotImplementedError):  # e.g. no storage (a subclass)
        return None


_FRESH: list[tuple[int, int, int] | None] = []


def _fresh_counts() -> tuple[int, int, int] | None:
    """The counts of a gradient nothing but the engine holds, measured once on a tiny graph
    through the same hook path (so they do not depend on torch's hook plumbing)."""
    if not _FRESH:
        def probe(g: torch.Tensor) -> torch.Tensor:
            _FRESH.append(_counts(g))
            return g
        # plain torch: no torch-function mode (the emulator calls this from inside its own)
        # and no dispatch mode (the NaN locator) may see or recurse into the probe
        with torch._C.DisableTorchFunction(), _disable_current_modes(), torch.enable_grad():
            a = torch.ones(3, requires_grad=True)
            y = a * 2.0
            y.register_hook(probe)
            (y * 3.0).sum().backward()  # y's gradient: a fresh tensor from MulBackward
    return _FRESH[0]


def _exclusive(counts: tuple[int, int, int] | None) -> bool:
    """True when a gradient's counts (``_counts``, taken in the hook) are those of a gradient
    only the engine holds, so rounding it in place cannot change anything else: ``AddBackward``
    hands one tensor to both inputs, ``cat``/``chunk`` backward hand out views, a user hook may
    have kept it. Saves an allocation per rounded gradient, which on a CPU (fresh pages) costs
    more than the rounding. Conservative: any extra reference, or no counters, means a copy."""
    fresh = _fresh_counts()
    return (counts is not None and fresh is not None
            and all(c <= f for c, f in zip(counts, fresh, strict=True)))


_ROUNDERS: dict[str, object] = {}


def grad_rounder(fmt: str | torch.dtype | FloatFormat):
    """A tensor hook ``g -> g rounded to fmt`` (one shared callable per format)."""
    f = get_format(fmt)
    hook = _ROUNDERS.get(f.name)
    if hook is None:
        dtype = f.dtype
        _fresh_counts()  # calibrate now, in the forward pass, not inside a backward

        def hook(g: torch.Tensor) -> torch.Tensor:
            if g.dtype != torch.float32:
                return g
            if dtype is None:
                return round_to(g, f)
            if g.requires_grad:  # double backward: keep the cast differentiable
                return g.to(dtype).float()
            if _rounded_before(g, f.name):
                return g
            # round where it lies if nobody else can see g, else into a copy
            exclusive = _exclusive(_counts(g))  # called from here: same depth as the probe
            r = _through_half(g, dtype, g if exclusive else torch.empty_like(g))
            r.__dict__[_ROUNDED] = (f.name, r._version)
            return r

        hook.__name__ = f"round_grad_to_{f.name}"
        _ROUNDERS[f.name] = hook
    return hook
