"""The benchmark's result: one row per precision, and its JSON form (``bench.json``).

Schema ``mixprec.bench/1`` (all sizes in bytes, times in seconds, energy in joules; ``null``
where a figure does not apply or could not be measured, with the reason beside it)::

    {
      "schema": "mixprec.bench/1",
      "created": "2025-01-01T12:00:00+00:00",          # UTC, ISO 8601
      "environment": {...},                             # mixprec.hardware.describe_device + extras
      "config": {"batch_size": 16, "steps": 20, "warmup": 3, "repeats": 5, "seed": 0,
                 "emulate": false, "device": "cpu", "optimizer": "AdamW", "budget": null,
                 "model": "det-n.yaml"},
      "baseline": "32",                                 # ratios and speedups are against this row
      "rows": [{
        "precision": "16-mixed",                        # preset name or policy key string
        "numerics": "real" | "emulated",
        "status": "ok" | "failed",  "error": null | "why it failed",
        "step_time": {"median": 0.1, "min": 0.09, "max": 0.12,
                      "per_repeat": [...],              # seconds per step, one per repeat
                      "steps_timed": 15},
        "throughput": 160.0,                            # samples per second at the median
        "speedup": 1.4,                                 # baseline median / this median
        "memory": {"params": 0, "buffers": 0, "grads": 0, "master": 0, "optimizer_state": 0,
                   "activations": 0, "casts": 0, "batch": 0, "total": 0,
                   "cuda_peak": null, "peak_rss": 123, "peak_rss_note": null,
                   "total_ratio": 0.6, "activation_ratio": 0.5},
        "energy": {"joules_per_step": null, "source": null, "reason": "why n/a"},
        "largest_batch": null | {"batch": 37, "reason": "...", "budget_bytes": ..., ...},
        "convergence": {"losses": [...], "final_loss": 1.2, "tail_mean": 1.25,
                        "final_ratio": 1.01, "tail_ratio": 1.0,
                        "skipped_steps": 0, "loss_scale": 65536.0},
        "notes": ["plain-language remarks, e.g. why this precision is slower than FP32"]
      }]
    }

``memory.total`` is the exact accounted sum params + buffers + grads + master +
optimizer_state + activations + casts + batch (see ``mixprec.bench.memory``); ``casts`` are
autocast's weight copies saved for backward. Non-finite losses are written as ``null``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from mixprec.io import atomic_write_text

__all__ = ["SCHEMA", "BenchResult", "BenchRow", "validate"]

SCHEMA = "mixprec.bench/1"

_NUM = (int, float)
_OPT_NUM = (int, float, type(None))
_OPT_STR = (str, type(None))

_ROW_SPEC: dict[str, Any] = {
    "precision": str, "numerics": str, "status": str, "error": _OPT_STR,
    "step_time": (dict, type(None)), "throughput": _OPT_NUM, "speedup": _OPT_NUM,
    "memory": (dict, type(None)), "energy": dict, "largest_batch": (dict, type(None)),
    "convergence": (dict, type(None)), "notes": list,
}
_STEP_TIME_SPEC = {"median": _NUM, "min": _NUM, "max": _NUM, "per_repeat": list,
                   "steps_timed": int}
_MEMORY_SPEC = {k: int for k in ("params", "buffers", "grads", "master", "optimizer_state",
                                 "activations", "casts", "batch", "total")} | {
    "cuda_peak": (int, type(None)), "peak_rss": (int, type(None)), "peak_rss_note": _OPT_STR,
    "total_ratio": _OPT_NUM, "activation_ratio": _OPT_NUM}
_ENERGY_SPEC = {"joules_per_step": _OPT_NUM, "source": _OPT_STR, "reason": _OPT_STR}
_CONV_SPEC = {"losses": list, "final_loss": _OPT_NUM, "tail_mean": _OPT_NUM,
              "final_ratio": _OPT_NUM, "tail_ratio": _OPT_NUM, "skipped_steps": int,
              "loss_scale": _OPT_NUM}
_TOP_SPEC = {"schema": str, "created": str, "environment": dict, "config": dict,
             "baseline": str, "rows": list}


def _check(obj: Any, spec: dict[str, Any], where: str) -> None:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected an object, got {type(obj).__name__}")
    missing = [k for k in spec if k not in obj]
    if missing:
        raise ValueError(f"{where}: missing keys {missing}")
    for key, types in spec.items():
        value = obj[key]
        if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            raise ValueError(f"{where}.{key}: expected {types}, got a bool")
        if not isinstance(value, types):
            raise ValueError(f"{where}.{key}: expected {types}, got {type(value).__name__} {value!r}")


def validate(data: dict[str, Any]) -> None:
    """Raise ValueError naming the first place where ``data`` breaks schema mixprec.bench/1."""
    _check(data, _TOP_SPEC, "bench.json")
    if data["schema"] != SCHEMA:
        raise ValueError(f"bench.json: schema {data['schema']!r} is not {SCHEMA!r}")
    names = [row.get("precision") for row in data["rows"] if isinstance(row, dict)]
    for i, row in enumerate(data["rows"]):
        where = f"rows[{i}]"
        _check(row, _ROW_SPEC, where)
        if row["numerics"] not in ("real", "emulated"):
            raise ValueError(f"{where}.numerics: {row['numerics']!r} is not 'real' or 'emulated'")
        if row["status"] not in ("ok", "failed"):
            raise ValueError(f"{where}.status: {row['status']!r} is not 'ok' or 'failed'")
        if row["status"] == "failed":
            if not row["error"]:
                raise ValueError(f"{where}: a failed row needs an error message")
            continue
        _check(row["step_time"], _STEP_TIME_SPEC, f"{where}.step_time")
        _check(row["memory"], _MEMORY_SPEC, f"{where}.memory")
        mem = row["memory"]
        parts = sum(mem[k] for k in ("params", "buffers", "grads", "master", "optimizer_state",
                                     "activations", "casts", "batch"))
        if parts != mem["total"]:
            raise ValueError(f"{where}.memory.total {mem['total']} != sum of its parts {parts}")
        _check(row["energy"], _ENERGY_SPEC, f"{where}.energy")
        if row["energy"]["joules_per_step"] is None and not row["energy"]["reason"]:
            raise ValueError(f"{where}.energy: n/a needs a reason")
        _check(row["convergence"], _CONV_SPEC, f"{where}.convergence")
        if not all(v is None or isinstance(v, _NUM) for v in row["convergence"]["losses"]):
            raise ValueError(f"{where}.convergence.losses: numbers or null only")
    if data["baseline"] not in names:
        raise ValueError(f"bench.json: baseline {data['baseline']!r} has no row")


@dataclass
class BenchRow:
    """One precision's measurements; see the module docstring for every field."""

    precision: str
    numerics: str
    status: str = "ok"
    error: str | None = None
    step_time: dict[str, Any] | None = None
    throughput: float | None = None
    speedup: float | None = None
    memory: dict[str, Any] | None = None
    energy: dict[str, Any] = field(default_factory=lambda: {
        "joules_per_step": None, "source": None, "reason": "not measured"})
    largest_batch: dict[str, Any] | None = None
    convergence: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


def _finite_or_none(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite_or_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite_or_none(v) for v in x]
    return x


@dataclass
class BenchResult:
    """All rows of one ``bench`` run, the environment and the config. ``result["16-mixed"]``
    gives a row; ``to_json``/``save_json``/``load`` write and read ``bench.json``."""

    rows: list[BenchRow]
    environment: dict[str, Any]
    config: dict[str, Any]
    created: str
    baseline: str = "32"

    def __getitem__(self, precision: str) -> BenchRow:
        for row in self.rows:
            if row.precision == precision:
                return row
        raise KeyError(f"no row for {precision!r}; rows: {[r.precision for r in self.rows]}")

    def __iter__(self):
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def to_dict(self) -> dict[str, Any]:
        data = {"schema": SCHEMA, "created": self.created, "environment": self.environment,
                "config": self.config, "baseline": self.baseline,
                "rows": [asdict(r) for r in self.rows]}
        return _finite_or_none(data)

    def to_json(self, indent: int = 2) -> str:
        data = self.to_dict()
        validate(data)
        return json.dumps(data, indent=indent, allow_nan=False) + "\n"

    def save_json(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, self.to_json())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchResult:
        validate(data)
        rows = [BenchRow(**row) for row in data["rows"]]
        return cls(rows=rows, environment=data["environment"], config=data["config"],
                   created=data["created"], baseline=data["baseline"])

    @classmethod
    def load(cls, path: str | os.PathLike) -> BenchResult:
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))
