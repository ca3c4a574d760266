"""emulate(): entering, leaving, nesting, errors, and what leaks (nothing)."""

import pytest
import torch
import torch.nn.functional as F

import mixprec
import mixprec as mp
import mixprec.emulate
from mixprec.emulate import emulate, is_emulating, logical_dtype, mark_storage, quantize


def _fn_stack_len() -> int:
    return torch._C._len_torch_function_stack()


def _linear_inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 32, generator=g) * 3
    w = torch.randn(8, 32, generator=g)
    return x, w


def _expected(x, w, dtype):
    return quantize(F.linear(quantize(x, dtype), quantize(w, dtype)), dtype)


def test_public_name_and_basic_linear_rounding():
    # mixprec.emulate is the package or the class, depending on import order; both are callable
    assert mp.emulate is emulate or isinstance(mp.emulate("16-mixed"), emulate)
    assert isinstance(mixprec.emulate("bf16-mixed"), emulate)
    x, w = _linear_inputs()
    with emulate("16-mixed") as ctx:
        assert is_emulating() and ctx.format.name == "fp16"
        y = F.linear(x, w)
    assert y.dtype == torch.float32 and logical_dtype(y) == torch.float16
    assert torch.equal(y, _expected(x, w, "fp16"))
    assert not torch.equal(y, F.linear(x, w))  # it did round something
    assert not is_emulating()


@pytest.mark.parametrize("spec", ["16-mixed", "bf16-master", "16-true", "fp8-mixed", "fp16",
                                  "bf16", "fp8_e4m3", "fp8_e5m2", mp.PRESETS["bf16-mixed"]])
def test_every_preset_and_format_is_accepted(spec):
    x, w = _linear_inputs()
    with emulate(spec):
        y = F.linear(x, w)
    assert torch.isfinite(y).all()
    assert not torch.equal(y, F.linear(x, w))


@pytest.mark.parametrize("bad", ["fp7", "float8", "int8", "tf32", "16-mixedd"])
def test_unknown_format_raises_listing_the_known_ones(bad):
    with pytest.raises(ValueError) as err:
        emulate(bad)
    msg = str(err.value)
    assert repr(bad) in msg or bad in msg
    for known in ("fp16", "bf16", "fp8_e4m3", "fp8_e5m2", "16-mixed"):
        assert known in msg
    with pytest.raises(ValueError, match="rules"):
        emulate("16-mixed", rules="tpu")


def test_fp32_policy_and_disabled_region_change_nothing():
    x, w = _linear_inputs()
    for ctx in (emulate("32"), emulate("16-mixed", enabled=False), emulate(None)):
        with ctx:
            assert not is_emulating()
            assert torch.equal(F.linear(x, w), F.linear(x, w))
            y = F.linear(x, w)
        assert torch.equal(y, x @ w.t()) or torch.allclose(y, x @ w.t())
        assert logical_dtype(y) == torch.float32


def test_exit_restores_mode_stack_autocast_and_cache_also_on_exception():
    depth = _fn_stack_len()
    lin = torch.nn.Linear(8, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(RuntimeError, match="boom"), emulate("16-mixed"):
            assert _fn_stack_len() == depth + 1
            assert not torch.is_autocast_enabled("cpu")  # real autocast is off inside
            lin(torch.randn(2, 8))
            raise RuntimeError("boom")
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    assert _fn_stack_len() == depth
    from mixprec.emulate.mode import _STATE
    assert _STATE.frames == [] and _STATE.cache == {} and _STATE.mode is None


def test_nesting_inner_policy_wins_and_outer_resumes():
    x, w = _linear_inputs()
    with emulate("16-mixed"):
        a = F.linear(x, w)
        with emulate("bf16-mixed"):
            b = F.linear(x, w)
            with emulate("32"):
                c = F.linear(x, w)
        d = F.linear(x, w)
        with pytest.raises(KeyError), emulate("bf16-mixed"):
            raise KeyError("inner failure")
        e = F.linear(x, w)
    assert torch.equal(a, _expected(x, w, "fp16")) and torch.equal(d, a) and torch.equal(e, a)
    assert torch.equal(b, _expected(x, w, "bf16"))
    assert torch.equal(c, F.linear(x, w))
    assert logical_dtype(b) == torch.bfloat16 and logical_dtype(c) == torch.float32


def test_backward_outside_the_region_still_rounds_gradients():
    x, w = _linear_inputs()
    x.requires_grad_(True)
    w.requires_grad_(True)
    with emulate("16-mixed"):
        y = F.linear(x, w)
    g = torch.randn(y.shape) * 1e-3
    y.backward(g)
    qg = quantize(g, "fp16")
    assert torch.equal(x.grad, quantize(qg @ quantize(w.detach(), "fp16"), "fp16"))
    assert torch.equal(w.grad, quantize(qg.t() @ quantize(x.detach(), "fp16"), "fp16"))


def test_weight_cache_is_reused_and_invalidated_by_in_place_updates():
    lin = torch.nn.Linear(16, 16, bias=False)
    x = torch.randn(2, 16)
    with emulate("16-mixed"):
        y1 = lin(x)
        with torch.no_grad():
            lin.weight.add_(1e-3)
        y2 = lin(x)
    assert torch.equal(y2, _expected(x, lin.weight.detach(), "fp16"))
    assert not torch.equal(y1, y2)


def test_mark_storage_rounds_tags_and_rejects_bad_input():
    p = torch.nn.Parameter(torch.tensor([1 + 2**-12, 3.0]))
    mark_storage(p, "fp16")
    assert p.tolist() == [1.0, 3.0] and logical_dtype(p) == torch.float16
    mark_storage(p, None)
    assert logical_dtype(p) == torch.float32
    with pytest.raises(ValueError, match="FP32"):
        mark_storage(torch.zeros(2, dtype=torch.float16), "fp16")
    with pytest.raises(ValueError, match="known"):
        mark_storage(torch.zeros(2), "tf32")


def test_marked_parameter_in_elementwise_op_gets_rounded_gradient_and_output():
    gamma = mark_storage(torch.nn.Parameter(torch.full((4,), 1.5)), "fp16")
    h = torch.randn(3, 4)
    with emulate("16-true"):
        h16 = h.half()  # an explicit cast to the emulated dtype stays FP32 storage
        assert h16.dtype == torch.float32 and logical_dtype(h16) == torch.float16
        out = h16 * gamma * 1.1
    assert logical_dtype(out) == torch.float16
    assert torch.equal(out, quantize(quantize(h16 * 1.5, "fp16") * 1.1, "fp16"))
    g = torch.randn(3, 4)
    out.backward(g)
    assert torch.equal(gamma.grad, quantize(gamma.grad, "fp16"))


def test_explicit_float_cast_makes_a_low_tensor_fp32_again():
    x, w = _linear_inputs()
    with emulate("16-mixed"):
        y = F.linear(x, w)
        z = y.float()
        big = z * 1.001
    assert logical_dtype(y) == torch.float16 and logical_dtype(z) == torch.float32
    assert torch.equal(big, y * 1.001)  # FP32 arithmetic, not rounded


def test_inference_under_no_grad_and_inplace_ops_on_low_tensors():
    x, w = _linear_inputs()
    with torch.no_grad(), emulate("16-mixed"):
        y = F.linear(x, w)
        y += 0.1
        y.mul_(1.7)
    ref = _expected(x, w, "fp16")
    ref = quantize(quantize(ref + 0.1, "fp16") * 1.7, "fp16")
    assert torch.equal(y, ref)


def test_setitem_into_a_low_tensor_rounds_and_zero_dim_promotion_is_memoised_per_shape():
    x, w = _linear_inputs()
    with torch.no_grad(), emulate("16-mixed"):
        y = F.linear(x, w)
        y[0] = 1 + 2**-12  # not representable in FP16
        s = y.sum() * 0 + torch.tensor(1.0)  # 0-dim FP32 (sum is on autocast's FP32 list)
        lo = mark_storage(torch.tensor(2.0), "fp16")
        a = lo * torch.tensor(1.1)          # 0-dim low x 0-dim FP32 -> FP32
        b = y * torch.tensor(1.1)           # dimensioned low x 0-dim FP32 -> low
    assert y[0].tolist() == [1.0] * y.shape[1]
    assert logical_dtype(s) == torch.float32
    assert logical_dtype(a) == torch.float32 and logical_dtype(b) == torch.float16
