"""Emulated numerics: FP16, BF16 and FP8 behaviour at FP32 speed on any machine.

``with mixprec.emulate("16-mixed"): ...`` runs the wrapped forward (and, through the autograd
graph, the backward) so that every value a GPU would store in the low-precision format is
rounded to it, while all arithmetic stays FP32. See :class:`emulate` and ``docs/emulate.md``.
"""

from mixprec._callable_module import make_module_callable
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


make_module_callable(__name__, emulate)
