"""Range statistics of tensors against a float format: pure functions and an on-device accumulator.

For one tensor ``x`` (any float dtype) and one target format (``mixprec.formats.FORMATS``) we count,
at a loss scale ``s`` (the values as observed) and unscaled (the values divided by ``s``):

- *overflow*: finite values that a round-to-nearest cast to the format turns into inf, i.e.
  ``|x| >= max + ulp(max)/2`` (65520 for FP16), plus values that are already inf;
- *underflow*: non-zero values the cast flushes to zero, i.e. ``0 < |x| <= smallest_subnormal/2``
  (the exact half rounds to even, which is zero);
- *subnormal*: values that survive but round to a subnormal (below the smallest normal, with
  fewer significant bits).

and a histogram of ``floor(log2|x|)`` over finite non-zero values, in integer bins from 2**-150
to 2**128 (every FP32 exponent). Because the bins are whole powers of two, the shares at any
power-of-two scale follow from the histogram exactly, except for the one bin that straddles each
rounding threshold.

Everything is accumulated in tensors on the data's device: no host synchronisation until
``RangeAccumulator.summary()`` reads the totals (one sync).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import torch

from mixprec.formats import FloatFormat, get_format

__all__ = [
    "HIST_BINS", "HIST_MIN_EXP", "RangeAccumulator", "RangeSummary", "format_thresholds",
    "histogram_shares", "range_counts",
]

HIST_MIN_EXP = -150            # bin 0 holds floor(log2|x|) <= -150 (FP32 subnormals: <= -127)
HIST_MAX_EXP = 128             # last bin holds floor(log2|x|) >= 128 (FP32 max is just below 2**128)
HIST_BINS = HIST_MAX_EXP - HIST_MIN_EXP + 1

# Positions in the count vector returned by ``range_counts``.
_FIELDS = ("elements", "zeros", "nan", "inf", "overflow_s", "underflow_s", "subnormal_s",
           "overflow_1", "underflow_1", "subnormal_1")
_N = len(_FIELDS)


@dataclass(frozen=True)
class Thresholds:
    """Magnitude thresholds of a format for the three verdicts (see module docstring)."""

    overflow: float     # |x| >= this rounds to inf
    underflow: float    # 0 < |x| <= this rounds to zero
    normal: float       # |x| < this (and above ``underflow``) rounds to a subnormal


def format_thresholds(fmt: str | torch.dtype | FloatFormat) -> Thresholds:
    """Rounding thresholds of ``fmt``; exact for round-to-nearest-even casts (checked against
    torch's own casts in the tests). Formats without inf (fp8_e4m3) saturate instead: their
    "overflow" is then a clipped value."""
    f = get_format(fmt)
    top_exp = math.floor(math.log2(f.max))
    half_ulp = 2.0 ** (top_exp - f.mantissa_bits - 1)
    # Just below the smallest normal, values within half a subnormal step round up to it.
    return Thresholds(overflow=f.max + half_ulp, underflow=f.smallest_subnormal / 2,
                      normal=f.smallest_normal - f.smallest_subnormal / 2)


_INF_BITS = 0x7F800000        # bit pattern of +inf in FP32; NaNs (after abs) lie above it
_EXPS = 256                   # FP32 biased exponents


@functools.lru_cache(maxsize=256)
def _bits(v: float) -> int:
    """FP32 bit pattern of a non-negative float (inf beyond FP32's range)."""
    return int(torch.tensor(v, dtype=torch.float32).view(torch.int32))


_EDGES: dict[tuple, torch.Tensor] = {}


def _edges_tensor(edges: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Cached per device: no host-to-device copy per call."""
    t = _EDGES.get((edges, device))
    if t is None:
        if len(_EDGES) > 512:
            _EDGES.clear()
        t = _EDGES[(edges, device)] = torch.tensor(edges, dtype=torch.int32, device=device)
    return t


def _scatter_count(code: torch.Tensor, size: int) -> torch.Tensor:
    """``bincount`` without a host sync (CUDA's bincount reads the max to size its output)."""
    if code.device.type == "cpu":
        return torch.bincount(code, minlength=size)
    out = torch.zeros(size, dtype=torch.int64, device=code.device)
    return out.index_put_((code,), torch.ones((), dtype=torch.int64, device=code.device).expand(
        code.numel()), accumulate=True)


@torch.no_grad()
def range_counts(x: torch.Tensor, thr: Thresholds, scale: float = 1.0) -> tuple[torch.Tensor, ...]:
    """Counts, max |x|, min non-zero |x| and the log2 histogram (of the unscaled values).

    ``x`` holds values observed at loss scale ``scale`` (1.0 for activations). Returns
    ``(counts int64[10], max_abs fp32[], min_nonzero fp32[], hist int64[HIST_BINS])`` on ``x``'s
    device; counts follow ``_FIELDS`` ("_s" at ``scale``, as observed; "_1" unscaled, i.e.
    divided by ``scale``). Works on the FP32 bit patterns of |x| (monotone in the value), so one
    ``bucketize`` against every threshold and one joint count with the exponent give all
    numbers in a few passes. FP64 input is judged after rounding to FP32. Thresholds times a
    scale that is not a power of two are rounded to FP32 (off by at most one FP32 ulp).
    No host synchronisation.
    """
    a = x.detach().abs()
    if a.dtype != torch.float32:
        a = a.float()
    key = a.reshape(-1).view(torch.int32)
    dev = key.device
    s = float(scale)
    # Bucket edges (bit patterns): nonzero | underflow | subnormal | normal | overflow, at the
    # scale in use and unscaled, then inf and NaN. bucketize(right=True) gives, for each key,
    # the number of edges <= key, so "count(key >= edge_j)" = count(bucket > j).
    raw = [1,
           _bits(thr.underflow) + 1, _bits(thr.normal), _bits(thr.overflow),
           _bits(thr.underflow * s) + 1, _bits(thr.normal * s), _bits(thr.overflow * s),
           _INF_BITS, _INF_BITS + 1]
    edges = sorted(set(raw))
    pos = {e: i for i, e in enumerate(edges)}
    nb = len(edges) + 1
    bucket = torch.bucketize(key, _edges_tensor(tuple(edges), dev), right=True, out_int32=True)
    code = (key >> 23).mul_(nb).add_(bucket)                    # exponent 0..255 (255: inf/NaN)
    joint = _scatter_count(code, _EXPS * nb).view(_EXPS, nb)   # int32 codes: half the traffic
    per_bucket = joint.sum(0)
    at_least = per_bucket.flip(0).cumsum(0).flip(0)             # at_least[j] = count(bucket >= j)

    def ge(edge: int) -> torch.Tensor:                         # count(key >= edge)
        return at_least[pos[edge] + 1]

    n = torch.full((), key.numel(), dtype=torch.int64, device=dev)
    nan = ge(_INF_BITS + 1)
    inf = ge(_INF_BITS) - nan
    zeros = n - ge(1)
    counts = [n, zeros, nan, inf]
    for u_edge, n_edge, o_edge in ((raw[1], raw[2], raw[3]), (raw[4], raw[5], raw[6])):
        over = ge(o_edge) - nan                                  # finite beyond, plus inf
        under = ge(1) - ge(u_edge)                               # 0 < |x| <= underflow
        sub = ge(u_edge) - ge(n_edge) if n_edge > u_edge else torch.zeros_like(n)
        counts += [over, under, sub]
    vec = torch.stack(counts)
    finite_key = torch.where(key < _INF_BITS, key, 0)
    max_abs = finite_key.amax().view(torch.float32) if key.numel() else torch.zeros((), device=dev)
    nz_key = torch.where(key > 0, key, _INF_BITS)
    min_nz = (nz_key.amin().view(torch.float32) if key.numel()
              else torch.full((), math.inf, device=dev))
    # Histogram of floor(log2(|x| / scale)) over finite non-zero values: the biased exponent
    # e (1..254) is floor(log2|x|) + 127 for FP32 normals; FP32 subnormals (e = 0) go to the
    # lowest bin. A power-of-two scale shifts bins exactly; any other scale recomputes them.
    k = math.log2(s) if s > 0 else 0.0
    if k == int(k):
        per_exp = joint[:255, 1:].sum(1)                        # nonzero, finite (e < 255)
        idx = (torch.arange(255, device=dev) - 127 - int(k) - HIST_MIN_EXP).clamp_(0, HIST_BINS - 1)
        hist = torch.zeros(HIST_BINS, dtype=torch.int64, device=dev).index_add_(0, idx, per_exp)
    else:
        ukey = (a.reshape(-1) / s).view(torch.int32)
        uexp = (ukey >> 23).to(torch.int64)
        keep = (key > 0) & (key < _INF_BITS)
        code = torch.where(keep, (uexp - 127 - HIST_MIN_EXP).clamp_(0, HIST_BINS - 1), HIST_BINS)
        hist = _scatter_count(code, HIST_BINS + 1)[:HIST_BINS]
    return vec, max_abs, min_nz, hist


class RangeAccumulator:
    """Running totals of ``range_counts`` over many tensors (one module, one kind of tensor).

    State lives on the device of the first tensor added; ``add`` never synchronises.
    """

    def __init__(self, fmt: str | torch.dtype | FloatFormat) -> None:
        self.fmt = get_format(fmt)
        self.thr = format_thresholds(self.fmt)
        self.counts: torch.Tensor | None = None
        self.max_abs: torch.Tensor | None = None
        self.min_nonzero: torch.Tensor | None = None
        self.hist: torch.Tensor | None = None
        self.max_abs_unscaled: torch.Tensor | None = None
        self.min_nonzero_unscaled: torch.Tensor | None = None
        self.calls = 0

    def add(self, x: torch.Tensor | None, scale: float = 1.0,
            counts: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
        """Accumulate ``x`` (observed at loss scale ``scale``), or ``counts`` already computed
        by ``range_counts`` for it (same format); returns this tensor's count vector."""
        vec, mx, mn, hist = counts if counts is not None else range_counts(x, self.thr, scale)
        mxu, mnu = mx / scale, mn / scale
        if self.counts is None:
            self.counts, self.max_abs, self.min_nonzero, self.hist = vec, mx, mn, hist
            self.max_abs_unscaled, self.min_nonzero_unscaled = mxu, mnu
        else:
            dev = self.counts.device
            self.counts = self.counts + vec.to(dev)
            self.max_abs = torch.maximum(self.max_abs, mx.to(dev))
            self.min_nonzero = torch.minimum(self.min_nonzero, mn.to(dev))
            self.max_abs_unscaled = torch.maximum(self.max_abs_unscaled, mxu.to(dev))
            self.min_nonzero_unscaled = torch.minimum(self.min_nonzero_unscaled, mnu.to(dev))
            self.hist = self.hist + hist.to(dev)
        self.calls += 1
        return vec

    def summary(self) -> RangeSummary | None:
        """Totals as Python numbers (one host synchronisation); None if nothing was added."""
        if self.counts is None:
            return None
        c = dict(zip(_FIELDS, self.counts.tolist(), strict=True))
        return RangeSummary(fmt=self.fmt, counts=c, max_abs=float(self.max_abs),
                            min_nonzero=float(self.min_nonzero), hist=self.hist.tolist(),
                            calls=self.calls, max_abs_unscaled=float(self.max_abs_unscaled),
                            min_nonzero_unscaled=float(self.min_nonzero_unscaled))


@dataclass
class RangeSummary:
    """Host-side totals of one accumulator. Shares are fractions of all elements seen."""

    fmt: FloatFormat
    counts: dict[str, int]
    max_abs: float
    min_nonzero: float
    hist: list[int]
    calls: int
    max_abs_unscaled: float
    min_nonzero_unscaled: float

    @property
    def elements(self) -> int:
        return self.counts["elements"]

    def share(self, field: str) -> float:
        n = self.counts["elements"]
        return self.counts[field] / n if n else 0.0

    def headroom_bits(self, unscaled: bool = False) -> tuple[float | None, float | None]:
        """(above, below): log2(max / max|x|) and log2(min non-zero |x| / smallest subnormal),
        at the loss scale in use or ``unscaled``. Negative means values beyond the format's
        range on that side; None when undefined (no finite non-zero values)."""
        mx = self.max_abs_unscaled if unscaled else self.max_abs
        mn = self.min_nonzero_unscaled if unscaled else self.min_nonzero
        above = math.log2(self.fmt.max / mx) if 0 < mx < math.inf else None
        below = math.log2(mn / self.fmt.smallest_subnormal) if 0 < mn < math.inf else None
        return above, below

    def merge(self, other: RangeSummary) -> RangeSummary:
        counts = {k: self.counts[k] + other.counts[k] for k in self.counts}
        return RangeSummary(self.fmt, counts, max(self.max_abs, other.max_abs),
                            min(self.min_nonzero, other.min_nonzero),
                            [a + b for a, b in zip(self.hist, other.hist, strict=True)],
                            self.calls + other.calls,
                            max(self.max_abs_unscaled, other.max_abs_unscaled),
                            min(self.min_nonzero_unscaled, other.min_nonzero_unscaled))

    def to_dict(self, scaled: bool) -> dict[str, Any]:
        """JSON-ready dict (schema in docs/doctor.md). ``scaled``: whether a loss scale applied
        (gradients); for activations the ``unscaled`` block is omitted."""
        above, below = self.headroom_bits()
        n = self.elements
        nonzero = n - self.counts["zeros"] - self.counts["nan"]
        out: dict[str, Any] = {
            "elements": n,
            "max_abs": _num(self.max_abs),
            "min_nonzero_abs": _num(self.min_nonzero),
            "zero_share": self.share("zeros"),
            "nan_share": self.share("nan"),
            "inf_share": self.share("inf"),
            "at_scale" if scaled else "in_format": {
                "overflow_share": self.share("overflow_s"),
                "underflow_share": self.share("underflow_s"),
                "subnormal_share": self.share("subnormal_s"),
                "underflow_share_of_nonzero": self.counts["underflow_s"] / nonzero if nonzero else 0.0,
            },
            "headroom_bits": {"above": _num(above), "below": _num(below)},
            "histogram_unscaled": {"log2_min": HIST_MIN_EXP,
                          "counts": {str(HIST_MIN_EXP + i): v for i, v in enumerate(self.hist) if v}},
        }
        if scaled:
            out["unscaled"] = {
                "overflow_share": self.share("overflow_1"),
                "underflow_share": self.share("underflow_1"),
                "subnormal_share": self.share("subnormal_1"),
                "underflow_share_of_nonzero": self.counts["underflow_1"] / nonzero if nonzero else 0.0,
                "max_abs": _num(self.max_abs_unscaled),
                "headroom_bits": dict(zip(("above", "below"),
                                          map(_num, self.headroom_bits(unscaled=True)), strict=True)),
            }
        return out


def _num(v: float | None) -> float | str | None:
    """JSON has no inf/NaN: keep finite floats, spell the others."""
    if v is None:
        return None
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return float(v)


def histogram_shares(hist: list[int], elements: int, fmt: FloatFormat,
                     log2_scale: int) -> dict[str, float]:
    """Shares (of ``elements``) that would overflow / flush to zero / be subnormal if the values
    behind ``hist`` (unscaled) were multiplied by 2**``log2_scale``. Exact to within the bin
    that straddles each threshold: a bin counts as overflowing only when wholly >= the overflow
    threshold, as flushing when wholly below half the smallest subnormal."""
    over = under = sub = 0
    max_exp_ok = math.floor(math.log2(fmt.max))            # bin of the largest finite value
    under_exp = fmt.min_exponent - fmt.mantissa_bits - 1   # values < 2**under_exp flush (bins < it)
    for i, v in enumerate(hist):
        if not v:
            continue
        e = HIST_MIN_EXP + i + log2_scale                  # the bin [2**e, 2**(e+1)) after scaling
        if e > max_exp_ok:
            over += v
        elif e < under_exp:
            under += v
        elif e < fmt.min_exponent:
            sub += v
    n = max(elements, 1)
    return {"overflow_share": over / n, "underflow_share": under / n, "subnormal_share": sub / n}
