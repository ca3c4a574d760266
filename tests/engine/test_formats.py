"""formats: the table against torch.finfo, and round_to against torch's own casts."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mixprec.formats import FORMATS, get_format, round_to

REAL = [name for name, f in FORMATS.items() if f.dtype is not None]


@pytest.mark.parametrize("name", REAL)
def test_table_matches_torch_finfo(name):
    f = FORMATS[name]
    info = torch.finfo(f.dtype)
    assert f.max == info.max
    assert f.smallest_normal == info.smallest_normal
    assert f.eps == info.eps
    assert f.bits == info.bits
    # smallest subnormal: the first positive bit pattern
    first = torch.tensor([1], dtype=torch.int8 if f.bits == 8 else torch.int16 if f.bits == 16
                         else torch.int32).view(f.dtype).float().item()
    assert f.smallest_subnormal == first


def test_tf32_row():
    tf32 = FORMATS["tf32"]
    assert (tf32.exponent_bits, tf32.mantissa_bits, tf32.eps) == (8, 10, 2.0**-10)
    assert tf32.smallest_normal == 2.0**-126


def _same_bits(a, b):
    return (a.view(torch.int32) == b.view(torch.int32)) | (a.isnan() & b.isnan())


@pytest.mark.parametrize("name", REAL)
def test_nearest_equals_torch_cast_across_magnitudes(name):
    g = torch.Generator().manual_seed(1)
    exponents = torch.randint(-40, 40, (200_000,), generator=g).float()
    x = torch.randn(200_000, generator=g) * torch.exp2(exponents)
    specials = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e-45, -1e-45, 3.4e38])
    x = torch.cat([x, specials])
    dtype = FORMATS[name].dtype
    assert _same_bits(round_to(x, name), x.to(dtype).float()).all()


@pytest.mark.parametrize("name", ["fp16", "bf16"])
def test_ties_round_to_even_like_torch(name):
    """Midpoints between every pair of adjacent 16-bit values: the hardest case for rounding."""
    dtype = FORMATS[name].dtype
    patterns = torch.arange(0, 2**15 - 1, dtype=torch.int32).to(torch.int16).view(dtype).float()
    finite = patterns[torch.isfinite(patterns)]
    mids = (finite[:-1].double() + finite[1:].double()) / 2
    mids = mids.float()[(mids.float().double() == mids)]  # midpoints exactly representable in FP32
    mids = torch.cat([mids, -mids])
    assert _same_bits(round_to(mids, name), mids.to(dtype).float()).all()


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=-(2**31), max_value=2**31 - 1))
def test_any_fp32_bit_pattern_matches_cast(bits):
    x = torch.tensor([bits], dtype=torch.int32).view(torch.float32)
    for name in REAL:
        assert _same_bits(round_to(x, name), x.to(FORMATS[name].dtype).float()).all(), (name, x.item())


@pytest.mark.parametrize("name", ["fp16", "bf16", "fp8_e4m3", "fp8_e5m2", "tf32"])
@pytest.mark.parametrize("value", [1.0 + 1 / 3, -2.7e-3, 5.3e-7, 123.456])
def test_stochastic_rounding_is_unbiased(name, value):
    f = get_format(name)
    if abs(value) < f.smallest_subnormal or abs(value) > f.max:
        pytest.skip("value outside the format's range")
    n = 200_000
    x = torch.full((n,), value)
    r = round_to(x, f, stochastic=True, generator=torch.Generator().manual_seed(2))
    down, up = r.min().item(), r.max().item()
    assert down <= value <= up
    assert set(torch.unique(r).tolist()) <= {down, up}  # only the two neighbours
    p = (value - down) / (up - down) if up > down else 0.0
    sigma = (up - down) * math.sqrt(max(p * (1 - p), 1e-12) / n)
    # mean of n Bernoulli roundings: within 5 standard errors of the input
    assert abs(r.double().mean().item() - value) <= 5 * sigma + 1e-12


def test_stochastic_rounding_is_reproducible_by_generator():
    x = torch.rand(1000)
    a = round_to(x, "bf16", stochastic=True, generator=torch.Generator().manual_seed(3))
    b = round_to(x, "bf16", stochastic=True, generator=torch.Generator().manual_seed(3))
    c = round_to(x, "bf16", stochastic=True, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_overflow_and_saturation():
    x = torch.tensor([65519.0, 65520.0, -1e6, 1e6])
    assert round_to(x, "fp16").tolist() == [65504.0, math.inf, -math.inf, math.inf]
    assert round_to(x, "fp16", saturate=True).tolist() == [65504.0, 65504.0, -65504.0, 65504.0]
    assert round_to(torch.tensor([1e4, float("inf")]), "fp8_e4m3").tolist() == [448.0, 448.0]


def test_unknown_format_lists_known():
    with pytest.raises(ValueError, match="known formats: fp32, tf32, fp16"):
        get_format("fp12")
