"""Numerics telemetry for mixed precision: where FP16/BF16 overflows or underflows, and why a
step was skipped.

- ``diagnose(model, batches, loss_fn, precision=..., steps=...)`` -> ``DoctorReport``: a short
  training run with telemetry on (also reachable as ``mixprec.diagnose(...)``).
- ``Telemetry(model, precision=prec)``: context manager for any training loop; per-module range
  statistics of activations, activation gradients and weight gradients. No hooks remain after
  the ``with`` block.
- ``SkipRecorder``: skipped-step attribution, the small API a trainer calls after ``prec.step``.
- ``locate_nonfinite(model, run)``: the first module and op whose output became inf/NaN.
"""

from __future__ import annotations

from mixprec._callable_module import make_module_callable
from mixprec.diagnose.locate import NonFiniteEvent, NonFiniteReport, locate_nonfinite
from mixprec.diagnose.report import SCHEMA, DoctorReport
from mixprec.diagnose.run import diagnose
from mixprec.diagnose.skips import SkipRecord, SkipRecorder, nonfinite_grads
from mixprec.diagnose.stats import RangeAccumulator, format_thresholds, range_counts
from mixprec.diagnose.telemetry import Telemetry

__all__ = [
    "SCHEMA", "DoctorReport", "NonFiniteEvent", "NonFiniteReport", "RangeAccumulator",
    "SkipRecord", "SkipRecorder", "Telemetry", "diagnose", "format_thresholds",
    "locate_nonfinite", "nonfinite_grads", "range_counts",
]


# ``mixprec.diagnose`` is both this package and the function (see mixprec._callable_module).
make_module_callable(__name__, diagnose)
