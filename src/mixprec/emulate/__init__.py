"""Emulated numerics: FP16, BF16 and FP8 behaviour at FP32 speed on any machine.

``with mixprec.emulate("16-mixed"): ...`` runs the wrapped forward (and, through the autograd
graph, the backward) so that every value a GPU would store in the low-precision format is
rounded to it, while all arithmetic stays FP32. See :class:`emulate` and ``docs/emulate.md``.
"""

import sys as _sys
import types as _types

from mixprec.emulate.fp8 import fake_quantize, scale_for
from mixprec.emulate.mode import (
    EMULATED_FORMATS,
    emulate,
    is_emulating,
    logical_dtype,
    mark_storage,
)
from mixprec.emulate.rounding import quantize, round_storage_

__all__ = [
    "EMULATED_FORMATS",
    "emulate",
    "fake_quantize",
    "is_emulating",
    "logical_dtype",
    "mark_storage",
    "quantize",
    "round_storage_",
    "scale_for",
]


class _CallableModule(_types.ModuleType):
    """``mixprec.emulate`` is both this package and the context manager: once the package is
    imported Python binds the *module* to ``mixprec.emulate``, so calling the module forwards to
    :class:`emulate` (``with mixprec.emulate("16-mixed"):`` works either way)."""

    def __call__(self, *args, **kwargs) -> emulate:
        return emulate(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
