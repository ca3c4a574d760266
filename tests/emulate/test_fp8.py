"""FP8 under emulation follows the per-tensor scaled recipe (torchao tensorwise / TE current)."""

import torch
import torch.nn.functional as F

from mixprec.emulate import emulate, fake_quantize, logical_dtype


def _inputs():
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(6, 32, generator=g) * 5).requires_grad_(True)
    w = (torch.randn(16, 32, generator=g) * 0.05).requires_grad_(True)
    b = torch.randn(16, generator=g).requires_grad_(True)
    return x, w, b


def test_linear_forward_and_backward_follow_the_hybrid_recipe():
    x, w, b = _inputs()
    g = torch.randn(6, 16) * 1e-3
    with emulate("fp8-mixed"):
        y = F.linear(x, w, b)
        assert logical_dtype(y) == torch.float32  # dequantised, high-precision output
    y.backward(g)
    xq, wq = fake_quantize(x, "fp8_e4m3"), fake_quantize(w, "fp8_e4m3")
    gq = fake_quantize(g, "fp8_e5m2")
    assert torch.equal(y.detach(), F.linear(xq, wq, b.detach()))
    assert torch.equal(x.grad, gq @ wq)
    assert torch.equal(w.grad, gq.t() @ xq)
    assert torch.equal(b.grad, gq.sum(0))  # the bias stays high precision
    # the quantisation is real: E4M3 keeps 3 mantissa bits
    assert not torch.equal(y.detach(), F.linear(x, w, b).detach())


def test_e5m2_policy_quantises_forward_operands_to_e5m2():
    x, w, _ = _inputs()
    with emulate("fp8_e5m2"):
        y = F.linear(x, w)
    expected = F.linear(fake_quantize(x, "fp8_e5m2"), fake_quantize(w, "fp8_e5m2"))
    assert torch.equal(y.detach(), expected)


def test_non_gemm_ops_stay_fp32_and_masks_and_biases_are_not_quantised():
    x, w, b = _inputs()
    with emulate("fp8-mixed"):
        s = torch.softmax(x, -1)
        e = torch.exp(x * 0.1)
        q = k = v = x.detach().reshape(1, 2, 3, 32)
        mask = torch.randn(1, 2, 3, 3)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        att_pos = F.scaled_dot_product_attention(q, k, v, mask)
    assert torch.equal(s, torch.softmax(x, -1)) and torch.equal(e, torch.exp(x * 0.1))
    fq = fake_quantize(q, "fp8_e4m3")
    assert torch.equal(att, F.scaled_dot_product_attention(fq, fq, fq, attn_mask=mask))
    assert torch.equal(att_pos, att)


def test_overflowing_gradient_propagates_as_non_finite():
    x, w, _ = _inputs()
    with emulate("fp8-mixed"):
        y = F.linear(x, w)
    g = torch.zeros(6, 16)
    g[0, 0] = float("inf")
    y.backward(g)
    assert not torch.isfinite(x.grad).all()
