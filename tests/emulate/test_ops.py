"""Which ops run in low precision: the emulator against torch's autocast itself.

CPU rules are checked against *real* CPU autocast runs; CUDA rules (the default, probed on fake
CUDA tensors) against the op lists of torch's ``autocast_mode.h`` quoted in
``research/engines.md``.
"""

import pytest
import torch
import torch.nn.functional as F

from mixprec.emulate import emulate, logical_dtype, mark_storage, quantize
from mixprec.emulate.mode import _PRESERVING


def _t(*shape):
    return torch.randn(*shape) * 2


# name -> (fn, input builder); every fn takes floating tensors
CATALOGUE = {
    "linear": (F.linear, lambda: [_t(4, 8), _t(3, 8), _t(3)]),
    "conv2d": (F.conv2d, lambda: [_t(1, 2, 5, 5), _t(3, 2, 3, 3)]),
    "matmul": (torch.matmul, lambda: [_t(4, 8), _t(8, 3)]),
    "matmul_op": (lambda a, b: a @ b, lambda: [_t(4, 8), _t(8, 3)]),
    "mm": (torch.mm, lambda: [_t(4, 8), _t(8, 3)]),
    "bmm": (torch.bmm, lambda: [_t(2, 4, 8), _t(2, 8, 3)]),
    "baddbmm": (torch.baddbmm, lambda: [_t(2, 4, 3), _t(2, 4, 8), _t(2, 8, 3)]),
    "addmm": (torch.addmm, lambda: [_t(4, 3), _t(4, 8), _t(8, 3)]),
    "sdpa": (F.scaled_dot_product_attention, lambda: [_t(1, 2, 4, 8), _t(1, 2, 4, 8),
                                                      _t(1, 2, 4, 8)]),
    "softmax": (lambda x: torch.softmax(x, -1), lambda: [_t(4, 8)]),
    "log_softmax": (lambda x: F.log_softmax(x, -1), lambda: [_t(4, 8)]),
    "exp": (torch.exp, lambda: [_t(4, 8)]),
    "log": (lambda x: torch.log(x.abs() + 1), lambda: [_t(4, 8)]),
    "pow": (lambda x: torch.pow(x, 2), lambda: [_t(4, 8)]),
    "relu": (torch.relu, lambda: [_t(4, 8)]),
    "gelu": (F.gelu, lambda: [_t(4, 8)]),
    "silu": (F.silu, lambda: [_t(4, 8)]),
    "sigmoid": (torch.sigmoid, lambda: [_t(4, 8)]),
    "tanh": (torch.tanh, lambda: [_t(4, 8)]),
    "mul_scalar": (lambda x: x * 1.7, lambda: [_t(4, 8)]),
    "add": (torch.add, lambda: [_t(4, 8), _t(4, 8)]),
    "layer_norm": (lambda x, w, b: F.layer_norm(x, (8,), w, b), lambda: [_t(4, 8), _t(8), _t(8)]),
    "group_norm": (lambda x: F.group_norm(x, 2), lambda: [_t(2, 4, 3, 3)]),
    "batch_norm": (lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
                   lambda: [_t(4, 3, 2, 2), _t(3), _t(3)]),
    "mse_loss": (F.mse_loss, lambda: [_t(4, 8), _t(4, 8)]),
    "cross_entropy": (lambda x: F.cross_entropy(x, torch.tensor([0, 1, 2, 3])), lambda: [_t(4, 8)]),
    "sum": (torch.sum, lambda: [_t(4, 8)]),
    "mean": (torch.mean, lambda: [_t(4, 8)]),
    "cat": (lambda a, b: torch.cat([a, b]), lambda: [_t(4, 8), _t(4, 8)]),
    "max_pool2d": (lambda x: F.max_pool2d(x, 2), lambda: [_t(1, 2, 4, 4)]),
    "avg_pool2d": (lambda x: F.avg_pool2d(x, 2), lambda: [_t(1, 2, 4, 4)]),
    "interpolate": (lambda x: F.interpolate(x, scale_factor=2.0, mode="bilinear"),
                    lambda: [_t(1, 2, 4, 4)]),
    "sqrt": (lambda x: torch.sqrt(x.abs()), lambda: [_t(4, 8)]),
}

LOW = [torch.float16, torch.bfloat16]


def _dtypes(out):
    outs = out if isinstance(out, (tuple, list)) else [out]
    return [o.dtype for o in outs if isinstance(o, torch.Tensor)]


def _emulated_dtypes(fn, inputs, dtype, low_inputs, rules, policy=None):
    with emulate(policy or dtype, rules=rules):
        if low_inputs:
            inputs = [mark_storage(i.clone(), dtype) for i in inputs]
        out = fn(*inputs)
    outs = out if isinstance(out, (tuple, list)) else [out]
    return [logical_dtype(o) for o in outs if isinstance(o, torch.Tensor)]


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("name", list(CATALOGUE))
def test_cpu_rules_match_real_cpu_autocast(name, dtype):
    fn, build = CATALOGUE[name]
    inputs = build()
    for low_inputs in (False, True):
        real_in = [i.to(dtype) for i in inputs] if low_inputs else inputs
        try:
            with torch.autocast("cpu", dtype=dtype):
                real = _dtypes(fn(*real_in))
        except RuntimeError as e:  # e.g. no low-precision CPU kernel for this op
            pytest.skip(f"real CPU autocast cannot run {name} on {dtype}: {e}")
        assert _emulated_dtypes(fn, inputs, dtype, low_inputs, "cpu") == real, (name, low_inputs)


# torch autocast_mode.h (CUDA): lower_precision_fp, fp32 (incl. fp32_set_opt_dtype), and ops
# that follow their inputs (unlisted or promote)
CUDA_LOWER = {"linear", "conv2d", "matmul", "matmul_op", "mm", "bmm", "baddbmm", "addmm", "sdpa"}
CUDA_FP32 = {"softmax", "log_softmax", "exp", "log", "pow", "layer_norm", "group_norm",
             "mse_loss", "cross_entropy", "sum", "interpolate"}
CUDA_FOLLOW = set(CATALOGUE) - CUDA_LOWER - CUDA_FP32


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_cuda_rules_match_autocast_op_lists(name):
    fn, build = CATALOGUE[name]
    inputs = build()
    dt = torch.float16
    from_fp32 = _emulated_dtypes(fn, inputs, dt, False, "cuda")
    from_low = _emulated_dtypes(fn, inputs, dt, True, "cuda")
    if name in CUDA_LOWER:
        assert from_fp32[0] == dt and from_low[0] == dt
    elif name in CUDA_FP32:
        assert from_fp32[0] == torch.float32 and from_low[0] == torch.float32
    else:
        assert from_fp32[0] == torch.float32 and from_low[0] == dt
    # *-true presets have no autocast: FP32-list ops follow their (half) inputs
    if name in CUDA_FP32 - {"cross_entropy"}:
        assert _emulated_dtypes(fn, inputs, dt, True, "cuda", policy="16-true")[0] == dt


def test_promotion_with_fp32_operands_gives_fp32_and_zero_dim_tensors_do_not_promote():
    a = torch.randn(4, 8)
    with emulate("16-mixed"):
        h = F.linear(a, torch.randn(8, 8))
        assert logical_dtype(h + a) == torch.float32
        assert logical_dtype(torch.cat([h, a])) == torch.float32
        assert logical_dtype(h * torch.tensor(1.5)) == torch.float16


PRESERVING_CASES = {
    "relu": torch.relu, "max_pool2d": lambda x: F.max_pool2d(x, 2),
    "cat": lambda x: torch.cat([x, -x]), "flip": lambda x: x.flip(0),
    "maximum": lambda x: torch.maximum(x, x.roll(1, 0)), "abs": torch.abs,
    "amax": lambda x: x.amax(1), "gather": lambda x: x.gather(1, torch.zeros_like(x).long()),
    "repeat": lambda x: x.repeat(2, 1, 1, 1), "pixel_shuffle": lambda x: F.pixel_shuffle(x, 2),
    "sort": lambda x: torch.sort(x, -1).values, "clone": torch.clone,
}


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("name", list(PRESERVING_CASES))
def test_preserving_ops_keep_values_representable(name, dtype):
    assert name in _PRESERVING
    x = quantize(torch.randn(2, 4, 4, 4) * 100, dtype)
    out = PRESERVING_CASES[name](x)
    assert torch.equal(out, quantize(out, dtype))
    with emulate(dtype):
        y = PRESERVING_CASES[name](mark_storage(x.clone(), dtype))
    assert torch.equal(y, out) and logical_dtype(y) == dtype


def test_small_cnn_under_cpu_rules_tracks_real_cpu_autocast():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU(inplace=True),
        torch.nn.Conv2d(8, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8), torch.nn.SiLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5))
    x = torch.randn(4, 3, 12, 12)
    y = torch.tensor([0, 1, 2, 3])
    with emulate("16-mixed", rules="cpu"):
        out = net(x)
        loss = F.cross_entropy(out, y)
    loss.backward()
    emu_grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    with torch.autocast("cpu", dtype=torch.float16):
        out_r = net(x)
        loss_r = F.cross_entropy(out_r, y)
    loss_r.backward()
    assert out_r.dtype == torch.float16 and logical_dtype(out) == torch.float16
    # both round the logits to FP16: they agree to a couple of FP16 ulps
    assert torch.allclose(out, out_r.float(), rtol=4e-3, atol=2e-3)
    assert loss.item() == pytest.approx(loss_r.item(), rel=1e-3)
    for g, p in zip(emu_grads, net.parameters(), strict=True):
        scale = p.grad.abs().max().item()
        assert (g - p.grad).abs().max().item() <= 5e-3 * scale + 1e-6
