"""FP8 training numerics: the per-tensor ("tensorwise") current-scaling recipe.

This is the recipe of torchao's default ``Float8LinearConfig`` (``tensorwise``) and of
Transformer Engine's ``Float8CurrentScaling`` in the ``HYBRID`` format:

* every GEMM operand (activation, weight) is scaled per tensor so that its largest magnitude
  lands on the format maximum, ``scale = fmax / max(amax(x), 1e-12)``, the scaled values are
  saturated to ``[-fmax, fmax]`` and cast to E4M3 (``fp8_e4m3``, max 448);
* the GEMM accumulates in FP32 and its output is dequantised (divided by both scales) and
  kept in high precision (FP32 here);
* in backward the incoming gradient is scaled the same way and cast to E5M2 (``fp8_e5m2``,
  max 57344; more range, less precision); the gradients the GEMM produces are high precision.
  The weight and activation reused in backward are the E4M3 copies from forward.

Scales are computed from the current tensor (no amax history), on device: no host
synchronisation. An inf/NaN in a tensor makes its scale 0 or NaN, so the non-finite value
propagates and the loss scaler sees it. Emulation only: the products are FP32 multiplications of
dequantised values, which equal the FP8 products; accumulation order differs from a tensor core.
"""

from __future__ import annotations

import torch

from mixprec.formats import FloatFormat, get_format

__all__ = ["AMAX_EPS", "fake_quantize", "fp8_grad_hook", "fp8_operand", "scale_for"]

AMAX_EPS = 1e-12  # torchao's floor on amax, so an all-zero tensor gets a finite scale


def scale_for(x: torch.Tensor, fmt: str | FloatFormat) -> torch.Tensor:
    """Per-tensor scale ``fmax / max(amax, 1e-12)`` as a 0-d FP32 tensor (no host sync)."""
    f = get_format(fmt)
    amax = x.detach().abs().amax().float()
    return f.max / amax.clamp(min=AMAX_EPS)


def fake_quantize(x: torch.Tensor, fmt: str | FloatFormat) -> torch.Tensor:
    """Scale per tensor, saturate, round to the FP8 format, unscale; returns FP32 (no grad)."""
    f = get_format(fmt)
    if f.dtype is None or f.bits != 8:
        raise ValueError(f"fake_quantize needs an FP8 format (fp8_e4m3 or fp8_e5m2), got {f.name!r}")
    x = x.detach().float()
    s = scale_for(x, f)
    q = (x * s).clamp_(-f.max, f.max).to(f.dtype).float()
    return q.div_(s)


class _Fp8Operand(torch.autograd.Function):
    """Forward: fake-quantise to FP8; backward: pass the gradient straight through (torchao and
    TE return high-precision gradients for GEMM operands)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, fmt: str) -> torch.Tensor:
        return fake_quantize(x, fmt)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        return g, None


def fp8_operand(x: torch.Tensor, fmt: str | FloatFormat = "fp8_e4m3") -> torch.Tensor:
    """Differentiable fake-quantisation of a GEMM operand (straight-through gradient)."""
    return _Fp8Operand.apply(x, get_format(fmt).name)


_GRAD_HOOKS: dict[str, object] = {}


def fp8_grad_hook(fmt: str | FloatFormat = "fp8_e5m2"):
    """A tensor hook that fake-quantises the incoming gradient per tensor (E5M2 by default)."""
    f = get_format(fmt)
    hook = _GRAD_HOOKS.get(f.name)
    if hook is None:
        def hook(g: torch.Tensor) -> torch.Tensor:
            return fake_quantize(g, f) if g.dtype == torch.float32 else g

        _GRAD_HOOKS[f.name] = hook
    return hook
