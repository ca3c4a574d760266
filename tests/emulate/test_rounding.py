"""The emulator's fast rounding is bitwise the reference rounding (and torch's casts)."""

import pytest
import torch

from mixprec.emulate import fake_quantize, quantize, round_storage_, scale_for
from mixprec.emulate.rounding import grad_rounder
from mixprec.formats import FORMATS, round_to

SPECIALS = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 65504.0, 65519.99,
                         65520.0, 448.0, 464.0, 57344.0, 61440.0, 6e-8, 3e-8, 2.98e-8, 1e-40,
                         -1e-45, 3.4e38, 1.0 + 2**-11, 1.0 + 3 * 2**-11])


def _random_bit_patterns(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    bits = torch.randint(-2**31, 2**31 - 1, (n,), generator=g, dtype=torch.int64).to(torch.int32)
    return torch.cat([bits.view(torch.float32), SPECIALS])


def _bit_equal(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.view(torch.int32) == b.view(torch.int32)) | (a.isnan() & b.isnan())


@pytest.mark.parametrize("fmt", ["fp16", "bf16", "fp8_e4m3", "fp8_e5m2"])
def test_quantize_is_bitwise_round_to_on_all_kinds_of_fp32(fmt):
    x = _random_bit_patterns(1_000_000)  # normals, subnormals, inf, NaN, out of range, -0
    assert _bit_equal(quantize(x, fmt), round_to(x, fmt)).all()


@pytest.mark.parametrize("fmt", ["fp8_e4m3", "fp8_e5m2"])
def test_fp8_rounding_equals_torch_float8_casts_in_range(fmt):
    f = FORMATS[fmt]
    x = _random_bit_patterns(1_000_000)
    x = x[x.isfinite() & (x.abs() <= f.max)]
    ref = x.to(f.dtype).float()
    assert _bit_equal(round_to(x, fmt), ref).all()
    assert _bit_equal(quantize(x, fmt), ref).all()


def test_quantize_gradient_is_rounded_and_real_half_inputs_widen_exactly():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    quantize(x, "fp16").backward(torch.tensor([1 + 2**-13, 3e-8]))
    assert x.grad.tolist() == [1.0, round_to(torch.tensor(3e-8), "fp16").item()]
    h = torch.tensor([1.5, -2.25], dtype=torch.float16)
    assert quantize(h, "fp16").dtype == torch.float32
    assert quantize(h, "fp16").tolist() == [1.5, -2.25]


def test_round_storage_rounds_in_place_without_a_version_bump():
    t = torch.tensor([1 + 2**-12, 70000.0])
    version = t._version
    assert round_storage_(t, "fp16") is t
    assert t.tolist() == [1.0, float("inf")]
    assert t._version == version
    with pytest.raises(ValueError, match="FP32"):
        round_storage_(torch.zeros(2, dtype=torch.float64), "fp16")


def test_grad_rounder_hook_rounds_to_the_format():
    hook = grad_rounder("bf16")
    g = torch.tensor([1 + 2**-9, 1 + 3 * 2**-9])
    assert hook(g).tolist() == [1.0, 1 + 2**-7]


def test_fp8_scale_and_fake_quantize_follow_the_tensorwise_recipe():
    x = torch.tensor([0.001, -0.5, 2.0, 3.0])
    s = scale_for(x, "fp8_e4m3")
    assert s.item() == pytest.approx(448.0 / 3.0)
    fq = fake_quantize(x, "fp8_e4m3")
    expected = (x * s).to(torch.float8_e4m3fn).float() / s
    assert torch.equal(fq, expected)
    assert fq.abs().max().item() == pytest.approx(3.0, rel=2**-4)  # amax maps onto 448
    assert torch.equal(fake_quantize(torch.zeros(3), "fp8_e5m2"), torch.zeros(3))
    with pytest.raises(ValueError, match="FP8"):
        fake_quantize(x, "fp16")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed"])
def test_scratch_buffer_rounding_equals_the_cast(dtype, layout):
    """The in-place and hook rounding reuse a per-thread half buffer: same bits as x.to(dtype)."""
    from mixprec.emulate.rounding import _through_half, grad_rounder

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 8, 6, 5, generator=g) * torch.exp2(
        torch.randint(-30, 20, (3, 8, 6, 5), generator=g).float())
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed":
        x = x.transpose(1, 3)
    ref = x.to(dtype).float()
    for _ in range(2):  # the second call reuses the buffer
        out = _through_half(x, dtype, torch.empty_like(x))
        assert torch.equal(out.view(torch.int32), ref.view(torch.int32))
        assert out.stride() == x.stride()
    y = x.clone()
    _through_half(y, dtype, y)
    assert torch.equal(y.view(torch.int32), ref.view(torch.int32))
    hooked = grad_rounder(dtype)(x.clone())
    assert torch.equal(hooked.view(torch.int32), ref.view(torch.int32))


def _unrepresentable(shape: tuple[int, ...]) -> torch.Tensor:
    """Values with FP32 bits below FP16's precision: rounding to FP16 changes every one."""
    return 1.0 + (torch.arange(1, 1 + torch.Size(shape).numel()).reshape(shape) % 7 + 1) * 2**-14


@pytest.mark.parametrize("share", ["add", "cat", "hook_argument_kept"])
def test_gradient_rounding_never_touches_a_shared_gradient(share):
    """The grad hook rounds in place only when nothing else holds the gradient. Here the
    low-precision branch's gradient tensor is also the FP32 branch's (add), a view of a larger
    gradient (cat), or referenced from outside: the FP32 branch must get the exact values."""
    from mixprec.emulate import emulate

    lin = torch.nn.Linear(4, 4, bias=False)
    x = torch.randn(3, 4)
    fp32_in = torch.randn(3, 4, requires_grad=True)
    kept = []
    with emulate("16-mixed"):
        low = lin(x)  # FP16 on a GPU: its gradient is rounded
        # FP16 with FP32 -> FP32; cat's backward hands out two views, add's one shared tensor
        out = torch.cat([low, fp32_in], 1) if share == "cat" else low + fp32_in
        if share == "hook_argument_kept":
            out.register_hook(lambda g: kept.append(g) or g)
    upstream = _unrepresentable(tuple(out.shape))
    out.backward(upstream)
    g_low, g_fp32 = (upstream[:, :4], upstream[:, 4:]) if share == "cat" else (upstream, upstream)
    torch.testing.assert_close(fp32_in.grad, g_fp32, rtol=0, atol=0)  # exact: never rounded
    if kept:
        torch.testing.assert_close(kept[0], upstream, rtol=0, atol=0)
    ref = g_low.to(torch.float16).float().T @ x.to(torch.float16).float()
    torch.testing.assert_close(lin.weight.grad, ref.to(torch.float16).float(), rtol=1e-3, atol=0)


def test_gradient_a_user_hook_kept_is_not_rounded_in_place():
    """A user hook on the FP32 sum keeps the gradient; by the time the low branch's rounding
    hook runs, the FP32 branch is done, so only the user's reference is left: it must still
    hold the exact values afterwards."""
    from mixprec.emulate import emulate

    lin = torch.nn.Linear(4, 4, bias=False)
    fp32_in = torch.randn(3, 4, requires_grad=True)
    kept = []
    with emulate("16-mixed"):
        low = lin(torch.randn(3, 4))
        fp32_branch = fp32_in * 2.0  # created last: its backward runs before the low branch's
        out = fp32_branch + low
        out.register_hook(lambda g: kept.append(g) or g)
    upstream = _unrepresentable(tuple(out.shape))
    out.backward(upstream)
    torch.testing.assert_close(kept[0], upstream, rtol=0, atol=0)
    torch.testing.assert_close(fp32_in.grad, 2.0 * upstream, rtol=0, atol=0)


def test_first_use_inside_an_emulated_forward_in_a_fresh_process():
    """The gradient hook calibrates itself on first use, which happens inside the emulator's
    own torch-function handler: in a fresh interpreter that must neither recurse nor hang."""
    import subprocess
    import sys

    code = ("import torch\nfrom mixprec.emulate import emulate\n"
            "lin = torch.nn.Linear(4, 4)\n"
            "with emulate('16-mixed'):\n    y = lin(torch.randn(2, 4)).relu()\n"
            "y.sum().backward()\nprint(bool(torch.isfinite(lin.weight.grad).all()))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"
