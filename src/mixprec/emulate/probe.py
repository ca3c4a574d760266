"""Ask torch's own autocast what dtype an op produces, without running the op.

The emulator never hard-codes autocast's op lists. For each function it meets it calls the
function once on *fake* tensors (``torch._subclasses.FakeTensorMode``: shapes and dtypes only,
no data, no compute) with torch's autocast switched on for the emulated device, and reads the
output dtypes. Fake tensors can claim ``device="cuda"`` on a machine without a GPU, so the CUDA
autocast rules (the ones a GPU run follows) are probed on any machine. Results are memoised by
the caller; a probe costs about a millisecond and happens once per function and dtype pattern.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils._pytree import tree_map

__all__ = ["RULES", "lowers", "output_dtypes"]

RULES = ("cuda", "cpu")  # whose autocast op lists to follow


@contextlib.contextmanager
def autocast_state(device: str, dtype: torch.dtype | None) -> Iterator[None]:
    """Switch torch's autocast for ``device`` on (``dtype``) or off; restores it on exit."""
    prev_enabled = torch.is_autocast_enabled(device)
    prev_dtype = torch.get_autocast_dtype(device)
    torch.set_autocast_enabled(device, dtype is not None)
    if dtype is not None:
        torch.set_autocast_dtype(device, dtype)
    torch.autocast_increment_nesting()
    try:
        yield
    finally:
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
        torch.set_autocast_enabled(device, prev_enabled)
        torch.set_autocast_dtype(device, prev_dtype)


def _flat_dtypes(out: Any) -> tuple[torch.dtype | None, ...]:
    if isinstance(out, torch.Tensor):
        return (out.dtype,)
    if isinstance(out, (tuple, list)):
        return tuple(o.dtype if isinstance(o, torch.Tensor) else None for o in out)
    return ()


def fake_call(func: Callable, args: tuple, kwargs: dict, device: str,
              dtype_of: Callable[[torch.Tensor], torch.dtype],
              autocast_dtype: torch.dtype | None) -> tuple[torch.dtype | None, ...] | None:
    """Output dtypes of ``func`` on fake ``device`` tensors with dtypes ``dtype_of(t)``.

    Returns None when the function cannot run on fake tensors (data-dependent control flow,
    ``.item()``, numpy, ...). Pure: real tensors are neither read nor written.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode()

    def to_fake(t: Any) -> Any:
        if isinstance(t, torch.Tensor):
            return torch.empty_strided(tuple(t.shape), t.stride(), dtype=dtype_of(t), device=device)
        return t

    try:
        with warnings.catch_warnings(), autocast_state(device, autocast_dtype), mode:
            warnings.simplefilter("ignore")
            fargs = tree_map(to_fake, args)
            fkwargs = tree_map(to_fake, kwargs)
            out = func(*fargs, **fkwargs)
            return _flat_dtypes(out)
    except Exception:  # any failure means "cannot tell": the caller falls back to promotion
        return None


def _float32_everywhere(t: torch.Tensor) -> torch.dtype:
    return torch.float32 if t.is_floating_point() and t.dtype != torch.float64 else t.dtype


def lowers(func: Callable, args: tuple, kwargs: dict, device: str, low: torch.dtype) -> bool:
    """True when autocast on ``device`` runs ``func`` in ``low`` precision: with every floating
    input in FP32, some output comes out in ``low`` with autocast on but not with it off
    (autocast's ``lower_precision_fp`` list; explicit casts such as ``.half()`` are not)."""
    dtypes = fake_call(func, args, kwargs, device, _float32_everywhere, low)
    if not dtypes or low not in dtypes:
        return False
    plain = fake_call(func, args, kwargs, device, _float32_everywhere, None)
    return plain is not None and low not in plain


def output_dtypes(func: Callable, args: tuple, kwargs: dict, device: str,
                  dtype_of: Callable[[torch.Tensor], torch.dtype],
                  autocast_dtype: torch.dtype | None) -> tuple[torch.dtype | None, ...] | None:
    """Output dtypes ``func`` gives for inputs of the (logical) dtypes ``dtype_of(t)``."""
    return fake_call(func, args, kwargs, device, dtype_of, autocast_dtype)
