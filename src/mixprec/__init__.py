"""mixprec: mixed-precision training for PyTorch that you can see and measure.

Importing mixprec initialises no CUDA context and reads no environment variable; the larger
parts (vision trainer, emulation, benchmarks, diagnostics) load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from mixprec._version import __version__
from mixprec.formats import FORMATS, FloatFormat, round_to
from mixprec.policy import PRESETS, Policy

# name -> module that defines it; imported on first attribute access (PEP 562).
_LAZY = {
    "NoScaler": "mixprec.scaler",
    "StaticScaler": "mixprec.scaler",
    "DynamicScaler": "mixprec.scaler",
    "LossScaler": "mixprec.scaler",
    "MasterWeights": "mixprec.master",
    "Precision": "mixprec.precision",
    "SkippedStepsWarning": "mixprec.precision",
    "auto_policy": "mixprec.hardware",
    "describe_device": "mixprec.hardware",
    "check_amp": "mixprec.check",
    "emulate": "mixprec.emulate",
    "bench": "mixprec.bench",
    "diagnose": "mixprec.diagnose",
    "Model": "mixprec.vision",
}

__all__ = ["FORMATS", "PRESETS", "FloatFormat", "Policy", "__version__", "round_to", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mixprec' has no attribute {name!r}")
    imported = importlib.import_module(module)
    # a callable subpackage (emulate, bench, diagnose) is bound as the module itself, so that
    # ``import mixprec.bench.autobatch as m`` still walks module attributes after ``mp.bench``
    value = imported if module == f"{__name__}.{name}" else getattr(imported, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
