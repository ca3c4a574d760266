"""Range statistics against real casts (torch's own FP16/BF16 conversion is the reference)."""

import math

import numpy as np
import pytest
import torch

from mixprec.diagnose.stats import (
    HIST_MIN_EXP,
    RangeAccumulator,
    format_thresholds,
    histogram_shares,
    range_counts,
)
from mixprec.formats import FORMATS


def _values(fmt):
    """Log-uniform magnitudes over the whole FP32 range around fmt's limits, both signs, plus
    the exact rounding thresholds and their float32 neighbours, zeros, inf and NaN."""
    f = FORMATS[fmt]
    thr = format_thresholds(fmt)
    g = torch.Generator().manual_seed(1)
    lo, hi = math.log2(f.smallest_subnormal) - 6, min(math.log2(f.max) + 4, 127)
    mags = torch.exp2(torch.empty(20000).uniform_(lo, hi, generator=g))
    edges = torch.tensor([thr.overflow, thr.underflow, thr.normal, f.max, f.smallest_subnormal])
    near = torch.cat([edges, torch.nextafter(edges, torch.zeros(5)),
                      torch.nextafter(edges, torch.full((5,), math.inf))])
    signs = torch.where(torch.rand(mags.numel() + near.numel(), generator=g) < 0.5, -1.0, 1.0)
    x = torch.cat([mags, near]) * signs
    return torch.cat([x, torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan])])


@pytest.mark.parametrize("fmt", ["fp16", "bf16"])
def test_counts_match_real_casts(fmt):
    x = _values(fmt)
    dtype = FORMATS[fmt].dtype
    c = x.to(dtype).float()
    normal = FORMATS[fmt].smallest_normal
    vec, mx, mn, _ = range_counts(x, format_thresholds(fmt))
    got = dict(zip(["elements", "zeros", "nan", "inf", "overflow", "underflow", "subnormal"],
                   vec[:7].tolist(), strict=True))
    assert got["elements"] == x.numel()
    assert got["zeros"] == int((x == 0).sum())
    assert got["nan"] == int(x.isnan().sum())
    assert got["inf"] == int(x.isinf().sum())
    assert got["overflow"] == int(c.isinf().sum())            # includes the inputs already inf
    assert got["underflow"] == int(((c == 0) & (x != 0)).sum())
    assert got["subnormal"] == int(((c != 0) & (c.abs() < normal)).sum())
    finite = x[x.isfinite()]
    assert float(mx) == float(finite.abs().max())
    assert float(mn) == float(finite[finite != 0].abs().min())


@pytest.mark.parametrize("scale", [2.0**12, 1000.0, 2.0**-3])
def test_unscaled_counts_and_histogram_match_divided_values(scale):
    g = torch.Generator().manual_seed(2)
    x = torch.exp2(torch.empty(5000).uniform_(-40, 20, generator=g))
    vec, _, _, hist = range_counts(x, format_thresholds("fp16"), scale)
    c = (x / scale).half().float()
    assert vec[7] == int(c.isinf().sum())
    assert vec[8] == int(((c == 0) & (x != 0)).sum())
    assert vec[9] == int(((c != 0) & (c.abs() < 2.0**-14)).sum())
    u = (x.double() / scale).numpy()
    expected = np.bincount(np.floor(np.log2(u)).astype(int) - HIST_MIN_EXP, minlength=len(hist))
    assert hist.tolist() == expected.tolist()


def test_half_input_and_histogram_bins():
    x = torch.tensor([3.0, 0.75, 2.0**-20, 0.0, 65504.0], dtype=torch.float16)
    _, mx, _, hist = range_counts(x, format_thresholds("fp16"))
    assert float(mx) == 65504.0
    nz = x.float()[x != 0]
    expected = np.bincount(np.floor(np.log2(nz.numpy())).astype(int) - HIST_MIN_EXP,
                           minlength=len(hist))
    assert hist.tolist() == expected.tolist()


def test_accumulator_sums_and_summary():
    acc = RangeAccumulator("fp16")
    a, b = torch.tensor([1e-9, 1.0]), torch.tensor([7e4, -2.0, 0.0])
    acc.add(a)
    acc.add(b, scale=4.0)
    s = acc.summary()
    assert s.elements == 5 and s.counts["zeros"] == 1 and s.calls == 2
    assert s.counts["overflow_s"] == 1 and s.counts["underflow_s"] == 1
    assert s.max_abs == pytest.approx(7e4) and s.max_abs_unscaled == pytest.approx(7e4 / 4)
    above, below = s.headroom_bits()
    assert above == pytest.approx(math.log2(65504 / 7e4))
    assert below == pytest.approx(math.log2(1e-9 / 2.0**-24), rel=1e-6)
    d = s.to_dict(scaled=True)
    assert d["unscaled"]["overflow_share"] == 0.0   # 7e4 / 4 fits
    assert RangeAccumulator("bf16").summary() is None


def test_histogram_shares_agree_with_direct_counts_at_power_of_two_scales():
    # Values kept away from the bins that straddle a threshold, where the histogram is exact.
    g = torch.Generator().manual_seed(3)
    e = torch.randint(-45, 18, (4000,), generator=g).float()
    x = torch.exp2(e + 0.5)                     # mid-bin values: never on a threshold bin edge
    acc = RangeAccumulator("fp16")
    acc.add(x)
    s = acc.summary()
    for k in (-3, 0, 5, 12):
        sh = histogram_shares(s.hist, s.elements, FORMATS["fp16"], k)
        c = (x * 2.0**k).half().float()
        direct_under = int(((c == 0)).sum()) / x.numel()
        assert sh["underflow_share"] == pytest.approx(direct_under, abs=0.02)
        direct_over = int(c.isinf().sum()) / x.numel()
        assert sh["overflow_share"] == pytest.approx(direct_over, abs=0.02)
