"""Floating-point formats and pure rounding functions.

Every number format mixprec reasons about (fp32, tf32, fp16, bf16, fp8_e4m3, fp8_e5m2) is one
row of ``FORMATS``. ``round_to`` rounds FP32 values to a format and returns them *as FP32*, so
low-precision numerics can be reproduced with FP32 arithmetic on any device. Round-to-nearest-even
results are bitwise equal to torch's own ``x.to(dtype).float()`` casts for every in-range value.

All functions here are pure (no global state, no host synchronisation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["FORMATS", "FloatFormat", "get_format", "round_to"]

_FP32_MANTISSA_BITS = 23
_FP32_MIN_EXPONENT = -126


@dataclass(frozen=True)
class FloatFormat:
    """One binary floating-point format.

    ``max`` is the largest finite value, ``smallest_normal`` is 2**min_exponent,
    ``smallest_subnormal`` is 2**(min_exponent - mantissa_bits) and ``eps`` is the gap between 1.0
    and the next larger value (2**-mantissa_bits). ``has_inf`` is False for formats (fp8_e4m3)
    whose out-of-range values become NaN instead of infinity.
    """

    name: str
    exponent_bits: int
    mantissa_bits: int
    max: float
    min_exponent: int
    has_inf: bool
    dtype: torch.dtype | None

    @property
    def smallest_normal(self) -> float:
        return 2.0**self.min_exponent

    @property
    def smallest_subnormal(self) -> float:
        return 2.0 ** (self.min_exponent - self.mantissa_bits)

    @property
    def eps(self) -> float:
        return 2.0**-self.mantissa_bits

    @property
    def bits(self) -> int:
        return 1 + self.exponent_bits + self.mantissa_bits


def _ieee_max(exponent_bits: int, mantissa_bits: int) -> float:
    max_exponent = 2 ** (exponent_bits - 1) - 1
    return (2.0 - 2.0**-mantissa_bits) * 2.0**max_exponent


FORMATS: dict[str, FloatFormat] = {
    "fp32": FloatFormat("fp32", 8, 23, _ieee_max(8, 23), -126, True, torch.float32),
    "tf32": FloatFormat("tf32", 8, 10, _ieee_max(8, 10), -126, True, None),
    "fp16": FloatFormat("fp16", 5, 10, 65504.0, -14, True, torch.float16),
    "bf16": FloatFormat("bf16", 8, 7, _ieee_max(8, 7), -126, True, torch.bfloat16),
    # OCP FP8 E4M3 ("fn": finite, no inf; the all-ones pattern is NaN): max 1.75 * 2**8 = 448.
    "fp8_e4m3": FloatFormat("fp8_e4m3", 4, 3, 448.0, -6, False, getattr(torch, "float8_e4m3fn", None)),
    "fp8_e5m2": FloatFormat("fp8_e5m2", 5, 2, 57344.0, -14, True, getattr(torch, "float8_e5m2", None)),
}

_ALIASES = {
    "float32": "fp32", "float": "fp32", "32": "fp32",
    "float16": "fp16", "half": "fp16", "16": "fp16",
    "bfloat16": "bf16",
    "float8_e4m3fn": "fp8_e4m3", "float8_e4m3": "fp8_e4m3", "e4m3": "fp8_e4m3",
    "float8_e5m2": "fp8_e5m2", "e5m2": "fp8_e5m2",
}


def get_format(fmt: str | torch.dtype | FloatFormat) -> FloatFormat:
    """Look up a format by name (``"fp16"``, ``"bfloat16"``, ...), torch dtype or FloatFormat."""
    if isinstance(fmt, FloatFormat):
        return fmt
    if isinstance(fmt, torch.dtype):
        for f in FORMATS.values():
            if f.dtype == fmt:
                return f
        raise ValueError(f"no mixprec format for dtype {fmt}; known formats: {', '.join(FORMATS)}")
    key = str(fmt).lower().replace("torch.", "")
    key = _ALIASES.get(key, key)
    if key not in FORMATS:
        raise ValueError(f"unknown float format {fmt!r}; known formats: {', '.join(FORMATS)}")
    return FORMATS[key]


def round_to(
    x: torch.Tensor,
    fmt: str | torch.dtype | FloatFormat,
    stochastic: bool = False,
    generator: torch.Generator | None = None,
    saturate: bool = False,
) -> torch.Tensor:
    """Round FP32 ``x`` to the values representable in ``fmt``; returns a new FP32 tensor.

    Nearest mode rounds half to even, exactly as an IEEE cast does (subnormals included).
    Stochastic mode rounds up with probability (x - down(x)) / (up(x) - down(x)), so
    E[round_to(x)] == x for in-range x; its random bits come from ``generator``.
    Values beyond ``fmt.max`` become +-inf, or +-max with ``saturate=True``; formats without
    inf (fp8_e4m3) always saturate, as torch's cast does (inf included). NaN stays NaN.
    Other dtypes are computed in FP32 and returned in FP32. Pure; no host synchronisation.
    """
    f = get_format(fmt)
    x = x.float()
    if f.name == "fp32":
        return x.clone()
    shift = _FP32_MANTISSA_BITS - f.mantissa_bits
    bits = x.view(torch.int32)
    if stochastic:
        noise = torch.randint(0, 1 << shift, x.shape, generator=generator, dtype=torch.int32,
                              device=x.device)
        bits = bits + noise
    else:
        lsb = (bits >> shift) & 1
        bits = bits + ((1 << (shift - 1)) - 1) + lsb
    bits = bits & ~((1 << shift) - 1)
    out = bits.view(torch.float32)

    if f.min_exponent > _FP32_MIN_EXPONENT:
        # Below the format's smallest normal the spacing is fixed: the smallest subnormal.
        inv_quantum = 2.0 ** (f.mantissa_bits - f.min_exponent)  # exact power of two
        scaled = x * inv_quantum
        if stochastic:
            noise = torch.rand(x.shape, generator=generator, device=x.device)
            sub = torch.floor(scaled.abs() + noise).copysign(x)
        else:
            sub = torch.round(scaled)
        out = torch.where(x.abs() < f.smallest_normal, sub / inv_quantum, out)

    if saturate or not f.has_inf:
        out = torch.where(x.isnan(), x, out.nan_to_num(posinf=f.max, neginf=-f.max))
        return out.clamp(-f.max, f.max)
    out = torch.where(out.abs() > f.max, torch.full_like(out, float("inf")).copysign(x), out)
    return torch.where(torch.isfinite(x), out, x)
