"""From measured numbers to advice: loss-scale health, modules to keep in FP32, an initial loss
scale with a stated margin, and whether BF16 fits better. Pure functions of host-side results.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from mixprec.diagnose.skips import SkipRecord
from mixprec.diagnose.stats import RangeSummary, histogram_shares
from mixprec.formats import FloatFormat

__all__ = ["descendant_of", "loss_scale_health", "overflow_sources", "recommend_scale",
           "recommendations"]

MAX_LOG2_SCALE = 24   # the dynamic scaler's default ceiling is 2**24


def descendant_of(child: str, parent: str) -> bool:
    """Module path ``child`` lies strictly inside ``parent`` ("(model)" is the root)."""
    if child == parent:
        return False
    return parent == "(model)" or child.startswith(parent + ".")


def overflow_sources(modules: Sequence[Any]) -> list[Any]:
    """Modules whose output overflowed (or went inf/NaN) while their inputs were finite, earliest
    first; a container is dropped when one of its descendants is itself a source (the
    descendant explains it)."""
    src = [m for m in modules if m.source_calls > 0]
    keep = [m for m in src if not any(descendant_of(o.name, m.name) for o in src)]
    return sorted(keep, key=lambda m: (m.first_source if m.first_source is not None else 1 << 62))


def recommend_scale(act_grad: RangeSummary | None, weight_grad: RangeSummary | None,
                    fmt: FloatFormat, margin_bits: int = 3,
                    target_underflow: float = 1e-2) -> dict[str, Any] | None:
    """A power-of-two initial loss scale for gradients measured *unscaled*.

    Upper bound: ``2**hi`` with ``hi = floor(log2(max / max|g|)) - margin_bits`` (at least
    ``margin_bits`` powers of two below overflow, as Micikevicius et al. choose S so that
    S * max|g| < 65504). Lower bound: the smallest ``2**lo`` at which at most
    ``target_underflow`` of the non-zero activation gradients flush to zero. The recommendation is
    ``2**min(hi, lo + margin_bits)`` (clipped to [2**0, 2**24]): clear of underflow by the same
    margin where the range allows. ``conflict`` is True when no scale satisfies both bounds.
    """
    parts = [s for s in (act_grad, weight_grad) if s is not None and s.elements]
    if not parts:
        return None
    max_g = max(s.max_abs_unscaled for s in parts)
    if not (max_g > 0 and math.isfinite(max_g)):
        return None
    hi = math.floor(math.log2(fmt.max / max_g)) - margin_bits
    base = act_grad if act_grad is not None and act_grad.elements else parts[0]
    nonzero = base.elements - base.counts["zeros"] - base.counts["nan"]

    def under(k: int) -> float:
        sh = histogram_shares(base.hist, base.elements, fmt, k)["underflow_share"]
        return sh * base.elements / nonzero if nonzero else 0.0

    lo = next((k for k in range(-MAX_LOG2_SCALE, 2 * MAX_LOG2_SCALE + 1)
               if under(k) <= target_underflow), None)
    rec = hi if lo is None else min(hi, lo + margin_bits)
    rec = max(0, min(MAX_LOG2_SCALE, rec))
    at = histogram_shares(base.hist, base.elements, fmt, rec)
    return {
        "log2": rec, "value": float(2**rec), "margin_bits": margin_bits,
        "target_underflow_of_nonzero": target_underflow,
        "max_abs_grad_unscaled": max_g,
        "overflow_bound_log2": hi, "underflow_bound_log2": lo,
        "conflict": lo is not None and lo > hi,
        "act_grad_underflow_share_unscaled": histogram_shares(base.hist, base.elements, fmt,
                                                              0)["underflow_share"],
        "act_grad_underflow_share_at_scale": at["underflow_share"],
        "act_grad_underflow_of_nonzero_at_scale": under(rec),
        "act_grad_subnormal_share_at_scale": at["subnormal_share"],
        "headroom_bits_at_scale": math.log2(fmt.max / (max_g * 2**rec)),
    }


def loss_scale_health(scales: Sequence[float | None], stepped: Sequence[bool],
                      skips: Sequence[SkipRecord], fmt: FloatFormat, streak: int = 5,
                      sources: Sequence[Any] = ()) -> dict[str, Any]:
    """Flags for a collapsing loss scale (below 1, or ``streak`` skips in a row, or more than
    5% of at least 20 steps skipped), each with the likely cause read off the skip records."""
    flags: list[dict[str, str]] = []
    known = [s for s in scales if s is not None]
    run = longest = 0
    for ok in stepped:
        run = 0 if ok else run + 1
        longest = max(longest, run)
    n, n_skip = len(stepped), sum(1 for ok in stepped if not ok)
    causes = Counter(r.cause for r in skips)
    cause = _likely_cause(causes, skips, sources, fmt)
    if known and min(known) < 1:
        flags.append({"kind": "scale_below_1", "message":
                      f"loss scale fell to {min(known):g} (< 1): scaling cannot fix this. {cause}"})
    if longest >= streak:
        flags.append({"kind": "skip_streak", "message":
                      f"{longest} steps skipped in a row. {cause}"})
    if n >= 20 and n_skip / n > 0.05:
        flags.append({"kind": "skip_rate", "message":
                      f"{n_skip} of {n} steps skipped ({100 * n_skip / n:.0f}%). {cause}"})
    return {"ok": not flags, "flags": flags, "steps": n, "skipped": n_skip,
            "longest_skip_streak": longest, "causes": dict(causes),
            "min_scale": min(known) if known else None,
            "final_scale": known[-1] if known else None}


def _likely_cause(causes: Counter, skips: Sequence[SkipRecord], sources: Sequence[Any],
                  fmt: FloatFormat) -> str:
    if not causes:
        return "No skip was recorded."
    top, _ = causes.most_common(1)[0]
    src = ", ".join(m.name for m in sources[:3])
    if top == "data":
        return "Likely cause: the input batches hold inf/NaN (bad data), not the loss scale."
    if top == "loss":
        return ("Likely cause: the loss is inf/NaN while the model's outputs are finite: bad "
                "targets/labels or a loss that is not safe in low precision; the loss scale is "
                "not the problem.")
    if top == "forward":
        where = f" (overflow starts in: {src})" if src else ""
        return (f"Likely cause: the forward pass overflows {fmt.name}{where}: keep those modules in "
                "FP32 or use BF16; lowering the loss scale cannot help.")
    mods = Counter(m for r in skips for m in r.modules).most_common(3)
    where = ", ".join(m for m, _ in mods)
    if top == "grad_overflow":
        return (f"Likely cause: gradients overflow {fmt.name} even at small scales (in: {where}): "
                "a genuine inf in the backward pass, e.g. from huge activations; find it with the "
                "NaN locator and keep that region in FP32.")
    return f"Likely cause: NaN gradients (in: {where}); see the NaN locator."


def recommendations(modules: Sequence[Any], act_grad: RangeSummary | None,
                    weight_grad: RangeSummary | None, fmt: FloatFormat,
                    margin_bits: int = 3) -> dict[str, Any]:
    """``keep_fp32`` (overflow sources with the evidence), ``init_scale`` (see
    ``recommend_scale``) and ``bf16`` (whether BF16 fits better, and why)."""
    sources = overflow_sources(modules)
    keep = []
    for m in sources:
        s = m.forward
        evidence = (f"output max |x| {s.max_abs:.3g} vs {fmt.name} max {fmt.max:g}; "
                    f"{100 * s.share('overflow_s'):.2g}% of outputs overflow, "
                    f"{100 * s.share('nan'):.2g}% NaN, from finite inputs in {m.source_calls} "
                    "call(s)") if s else ""
        keep.append({"module": m.name, "type": m.kind, "reason": evidence})
    scale = recommend_scale(act_grad, weight_grad, fmt, margin_bits) if fmt.name != "fp32" else None
    if fmt.name == "bf16":
        bf16 = {"better": None, "reason": "already BF16"}
    elif sources:
        bf16 = {"better": True, "reason": (
            f"activations exceed {fmt.name}'s max ({fmt.max:g}) in {len(sources)} module(s); "
            "BF16 has FP32's range, so no FP32 islands would be needed")}
    elif scale is not None and scale["conflict"]:
        bf16 = {"better": True, "reason": (
            f"no single loss scale keeps gradients clear of both {fmt.name} underflow and "
            f"overflow with a {margin_bits}-bit margin; BF16's range covers them")}
    elif scale is not None:
        trade = (f"; BF16 would need no scaling but keeps {fmt.mantissa_bits - 7} fewer mantissa "
                 f"bits (eps 2**-7 vs 2**-{fmt.mantissa_bits})" if fmt.mantissa_bits > 7 else "")
        bf16 = {"better": False, "reason": (
            f"{fmt.name} fits with loss scale 2**{scale['log2']} "
            f"({100 * scale['act_grad_underflow_share_at_scale']:.2g}% of activation gradients "
            f"still flush to zero){trade}")}
    else:
        bf16 = {"better": None, "reason": "no gradients were measured"}
    return {"keep_fp32": keep, "init_scale": scale, "bf16": bf16}
