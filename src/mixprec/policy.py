"""Precision policies: which dtype the parameters, the compute and the outputs use.

A ``Policy`` is a frozen value. ``Policy.parse`` accepts a preset name (``"16-mixed"``) or a
``params=..,compute=..,output=..[,master=..]`` string; ``str(policy)`` gives the preset name
back, or the key string for a custom policy, so the two round-trip.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["PRESETS", "Policy"]

_DTYPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32, "f32": torch.float32, "32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "f16": torch.float16, "16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}
if hasattr(torch, "float8_e4m3fn"):
    _DTYPE_NAMES.update({"float8_e4m3fn": torch.float8_e4m3fn, "fp8_e4m3": torch.float8_e4m3fn,
                         "float8_e5m2": torch.float8_e5m2, "fp8_e5m2": torch.float8_e5m2})

_CANONICAL: dict[torch.dtype, str] = {
    torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16",
}
if hasattr(torch, "float8_e4m3fn"):
    _CANONICAL.update({torch.float8_e4m3fn: "float8_e4m3fn", torch.float8_e5m2: "float8_e5m2"})

_HALF = (torch.float16, torch.bfloat16)


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """``"fp16"``/``"float16"``/``"half"``/``torch.float16`` -> ``torch.float16`` (and so on)."""
    if isinstance(name, torch.dtype):
        if name not in _CANONICAL:
            raise ValueError(f"unsupported dtype {name}; use one of {sorted(set(_CANONICAL.values()))}")
        return name
    key = str(name).strip().lower().replace("torch.", "")
    if key not in _DTYPE_NAMES:
        raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(sorted(_DTYPE_NAMES))}")
    return _DTYPE_NAMES[key]


def dtype_name(dtype: torch.dtype) -> str:
    return _CANONICAL[dtype]


@dataclass(frozen=True)
class Policy:
    """Dtypes of one precision recipe.

    ``param_dtype``: storage of the model's parameters (normalisation layers stay FP32 when this
    is a half type). ``compute_dtype``: what matmuls and convolutions run in (via autocast, or
    natively for half parameters). ``output_dtype``: floating outputs of the model are cast to it.
    ``master_dtype``: dtype of a separate master copy the optimizer updates, or None when the
    parameters themselves are what the optimizer updates.
    """

    param_dtype: torch.dtype = torch.float32
    compute_dtype: torch.dtype = torch.float32
    output_dtype: torch.dtype = torch.float32
    master_dtype: torch.dtype | None = None

    def __post_init__(self) -> None:
        for field in ("param_dtype", "compute_dtype", "output_dtype"):
            object.__setattr__(self, field, parse_dtype(getattr(self, field)))
        if self.master_dtype is not None:
            object.__setattr__(self, "master_dtype", parse_dtype(self.master_dtype))
            if self.master_dtype == self.param_dtype:
                raise ValueError(
                    f"master={dtype_name(self.master_dtype)} equals params: a master copy must be "
                    "wider than the parameters; drop 'master=' or use half parameters")
        if self.param_dtype not in (torch.float32, *_HALF):
            raise ValueError(f"params={dtype_name(self.param_dtype)} is not a storage dtype; "
                             "use float32, float16 or bfloat16")

    # -- derived properties --------------------------------------------------------------
    @property
    def is_mixed(self) -> bool:
        """FP32 parameters with lower-precision compute (autocast)."""
        return self.param_dtype == torch.float32 and self.compute_dtype != torch.float32

    @property
    def casts_params(self) -> bool:
        """``setup`` stores the parameters in a half type (``*-master`` / ``*-true``)."""
        return self.param_dtype in _HALF

    @property
    def uses_autocast(self) -> bool:
        """Autocast runs for mixed and master policies; ``*-true`` is pure half, no autocast."""
        return self.compute_dtype != torch.float32 and (self.is_mixed or self.master_dtype is not None)

    @property
    def is_fp8(self) -> bool:
        return "float8" in dtype_name(self.compute_dtype)

    @property
    def default_scaler(self) -> str:
        """``"dynamic"`` where FP16 gradients can underflow and a master exists, else ``"none"``."""
        has_master = self.param_dtype == torch.float32 or self.master_dtype is not None
        fp16_like = self.compute_dtype == torch.float16 or self.is_fp8
        return "dynamic" if fp16_like and has_master else "none"

    # -- text form -----------------------------------------------------------------------
    def to_keys(self) -> str:
        parts = [f"params={dtype_name(self.param_dtype)}", f"compute={dtype_name(self.compute_dtype)}",
                 f"output={dtype_name(self.output_dtype)}"]
        if self.master_dtype is not None:
            parts.append(f"master={dtype_name(self.master_dtype)}")
        return ",".join(parts)

    def __str__(self) -> str:
        for name, preset in PRESETS.items():
            if preset == self:
                return name
        return self.to_keys()

    @classmethod
    def parse(cls, text: str | Policy) -> Policy:
        """Parse a preset name, alias or ``key=value`` string; raises ValueError listing presets."""
        if isinstance(text, Policy):
            return text
        s = str(text).strip().lower()
        s = _ALIASES.get(s, s)
        if s in PRESETS:
            return PRESETS[s]
        if s == "auto":
            raise ValueError("'auto' depends on the device: call mixprec.auto_policy(device), or "
                             "pass 'auto' to Precision(...) which resolves it")
        if "=" not in s:
            raise ValueError(f"unknown precision {text!r}; valid presets: {', '.join(PRESET_NAMES)}"
                             " (or 'params=..,compute=..,output=..[,master=..]')")
        keys = {"params": "param_dtype", "p": "param_dtype", "compute": "compute_dtype",
                "c": "compute_dtype", "output": "output_dtype", "o": "output_dtype",
                "master": "master_dtype", "m": "master_dtype"}
        values: dict[str, torch.dtype] = {}
        for item in s.split(","):
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep or key not in keys:
                raise ValueError(f"bad policy item {item!r} in {text!r}; keys are params, compute, "
                                 f"output, master; valid presets: {', '.join(PRESET_NAMES)}")
            values[keys[key]] = parse_dtype(value)
        params = values.get("param_dtype", torch.float32)
        compute = values.get("compute_dtype", params)
        output = values.get("output_dtype", torch.float32)
        return cls(params, compute, output, values.get("master_dtype"))


PRESETS: dict[str, Policy] = {
    "32": Policy(),
    "16-mixed": Policy(torch.float32, torch.float16, torch.float32),
    "bf16-mixed": Policy(torch.float32, torch.bfloat16, torch.float32),
    "16-master": Policy(torch.float16, torch.float16, torch.float32, torch.float32),
    "bf16-master": Policy(torch.bfloat16, torch.bfloat16, torch.float32, torch.float32),
    "16-true": Policy(torch.float16, torch.float16, torch.float16),
    "bf16-true": Policy(torch.bfloat16, torch.bfloat16, torch.bfloat16),
}
if hasattr(torch, "float8_e4m3fn"):
    # FP8 compute (per-tensor scaled E4M3 forward / E5M2 gradients) runs under emulation only.
    PRESETS["fp8-mixed"] = Policy(torch.float32, torch.float8_e4m3fn, torch.float32)

PRESET_NAMES: tuple[str, ...] = (*PRESETS, "auto")

_ALIASES = {"32-true": "32", "fp32": "32", "16": "16-mixed", "bf16": "bf16-mixed",
            "fp16-mixed": "16-mixed", "fp16": "16-mixed"}
