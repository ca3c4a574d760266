"""How faithful is emulation? Per-op comparisons against two references.

For one op (linear, matmul, bmm, conv1d/2d/3d, attention), forward and backward:

* **correctly rounded**: operands rounded to the format, the op computed in FP64 (exact
  accumulation for these sizes, to well below the format's precision), one rounding at the end.
  This is what a tensor core approximates. (The FP64 -> format rounding goes through FP32;
  double rounding can differ from one rounding only when the FP32 value is an exact tie of the
  format, about 2**-13 of a random tie zone: far below the tolerances tested.)
* **real dtype**: the same op run on real ``float16``/``bfloat16`` tensors with torch's CPU
  kernels (which are not all correctly rounded themselves; ``compare`` measures by how much).

Distances are in ulps of the format (adjacent representable values are 1 ulp apart).
``python -m mixprec.emulate.fidelity`` prints the table quoted in ``docs/emulate.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mixprec.emulate.mode import emulate
from mixprec.emulate.rounding import quantize

__all__ = ["OPS", "OpComparison", "compare", "log_uniform", "ulp_distance"]


def log_uniform(shape: tuple[int, ...], lo_exp: float, hi_exp: float,
                generator: torch.Generator) -> torch.Tensor:
    """FP32 values with random sign and magnitude 2**U(lo_exp, hi_exp) (several decades)."""
    mag = torch.exp2(torch.empty(shape).uniform_(lo_exp, hi_exp, generator=generator))
    sign = torch.randint(0, 2, shape, generator=generator).float() * 2 - 1
    return mag * sign


def ulp_distance(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Number of representable ``dtype`` values between ``a`` and ``b`` (int64 tensor); both
    are rounded to ``dtype`` first. NaN vs anything counts as a huge distance."""
    def ordered(x: torch.Tensor) -> torch.Tensor:
        i = x.to(dtype).view(torch.int16).long()
        return torch.where(i < 0, -(i & 0x7FFF), i)
    d = (ordered(a) - ordered(b)).abs()
    nan = a.isnan() ^ b.isnan()
    return torch.where(nan, torch.full_like(d, 1 << 20), d)


# An op: (build(generator) -> list of input tensors, fn(*inputs) -> output).
def _linear_inputs(g):
    return [log_uniform((16, 48), -6, 3, g), log_uniform((24, 48), -6, 1, g),
            log_uniform((24,), -4, 2, g)]


def _matmul_inputs(g):
    return [log_uniform((3, 12, 40), -6, 3, g), log_uniform((40, 20), -6, 1, g)]


def _bmm_inputs(g):
    return [log_uniform((4, 12, 40), -6, 3, g), log_uniform((4, 40, 16), -6, 1, g)]


def _conv_inputs(nd: int):
    def build(g):
        spatial = (12,) * nd if nd < 3 else (6, 6, 6)
        return [log_uniform((2, 6, *spatial), -6, 3, g), log_uniform((8, 6, *(3,) * nd), -6, 0, g),
                log_uniform((8,), -4, 2, g)]
    return build


def _attention_inputs(g):
    # softmax needs moderate logits: q.k stays within a few units
    return [log_uniform((2, 2, 10, 16), -6, 0, g), log_uniform((2, 2, 10, 16), -6, 0, g),
            log_uniform((2, 2, 10, 16), -6, 3, g)]


OPS: dict[str, tuple[Callable, Callable]] = {
    "linear": (_linear_inputs, F.linear),
    "matmul": (_matmul_inputs, torch.matmul),
    "bmm": (_bmm_inputs, torch.bmm),
    "conv1d": (_conv_inputs(1), lambda x, w, b: F.conv1d(x, w, b, padding=1)),
    "conv2d": (_conv_inputs(2), lambda x, w, b: F.conv2d(x, w, b, padding=1)),
    "conv3d": (_conv_inputs(3), lambda x, w, b: F.conv3d(x, w, b, padding=1)),
    "attention": (_attention_inputs, F.scaled_dot_product_attention),
}


def _run(fn: Callable, inputs: list[torch.Tensor], grad_out_fp32: torch.Tensor | None,
         dtype: torch.dtype, cast: Callable[[torch.Tensor], torch.Tensor]
         ) -> list[torch.Tensor]:
    leaves = [cast(t).detach().requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    res = [out.detach()]
    if grad_out_fp32 is not None:
        grads = torch.autograd.grad(out, leaves, cast(grad_out_fp32))
        res += [g.detach() for g in grads]
    return res


@dataclass(frozen=True)
class OpComparison:
    """Agreement of one op, forward output and every input gradient; each share is that of the
    *worst* of those tensors (fraction of its elements)."""

    op: str
    dtype: torch.dtype
    elements: int                      # all tensors together
    emulated_vs_correct_exact: float   # bit-exact share, emulated vs correctly rounded
    emulated_vs_correct_max_ulp: int
    emulated_vs_real_1ulp: float       # share within 1 ulp, emulated vs real-dtype CPU kernel
    real_vs_correct_exact: float       # how often the CPU kernel itself is correctly rounded
    real_vs_correct_1ulp: float        # ... and within 1 ulp of it
    real_vs_correct_max_ulp: int       # its worst deviation (ulps)


def compare(op: str, dtype: torch.dtype, seed: int = 0, backward: bool = True,
            real: bool = True) -> OpComparison:
    """Emulated vs correctly rounded vs real-dtype results of ``OPS[op]`` (see module doc)."""
    build, fn = OPS[op]
    g = torch.Generator().manual_seed(seed)
    inputs = build(g)
    with torch.no_grad():
        probe_out = fn(*inputs)
    grad_out = log_uniform(tuple(probe_out.shape), -8, 0, g) if backward else None

    def q(t: torch.Tensor) -> torch.Tensor:
        return quantize(t, dtype)

    with emulate(dtype):
        emu = _run(fn, inputs, grad_out, dtype, lambda t: t)
    # correctly rounded: rounded operands in FP64, one rounding of the result
    ref = [q(r.float()) for r in _run(fn, [q(t) for t in inputs], None if grad_out is None
                                       else q(grad_out), dtype, lambda t: t.double())]
    nan = float("nan")
    real_res = _run(fn, inputs, grad_out, dtype, lambda t: t.to(dtype)) if real else [None] * len(emu)
    ex, ex_max, er1, rex, r1, rmax = [], [], [], [], [], []
    for e, r, rr in zip(emu, ref, real_res, strict=True):
        d = ulp_distance(e, r, dtype)
        ex.append(float((d == 0).float().mean()))
        ex_max.append(int(d.max()))
        if rr is not None:
            rr = rr.float()
            er1.append(float((ulp_distance(e, rr, dtype) <= 1).float().mean()))
            d_rr = ulp_distance(rr, r, dtype)
            rex.append(float((d_rr == 0).float().mean()))
            r1.append(float((d_rr <= 1).float().mean()))
            rmax.append(int(d_rr.max()))
    return OpComparison(op, dtype, sum(e.numel() for e in emu), min(ex), max(ex_max),
                        min(er1, default=nan), min(rex, default=nan), min(r1, default=nan),
                        max(rmax, default=-1))


def main() -> None:  # pragma: no cover - a report for the docs
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print("| op | dtype | elements | emulated = correctly rounded | emulated max ulp | "
          "emulated vs real CPU (<=1 ulp) | real CPU = correctly rounded | real CPU <=1 ulp | "
          "real CPU max ulp |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for op in OPS:
        for dtype in (torch.float16, torch.bfloat16):
            c = compare(op, dtype)
            print(f"| {op} | {str(dtype).replace('torch.', '')} | {c.elements} | "
                  f"{c.emulated_vs_correct_exact:.2%} | {c.emulated_vs_correct_max_ulp} | "
                  f"{c.emulated_vs_real_1ulp:.2%} | {c.real_vs_correct_exact:.2%} | "
                  f"{c.real_vs_correct_1ulp:.2%} | {c.real_vs_correct_max_ulp} |")


if __name__ == "__main__":  # pragma: no cover
    main()
