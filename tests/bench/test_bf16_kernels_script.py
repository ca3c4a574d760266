"""benchmarks/bf16_kernels.py: it records every Conv-BN-act block of the detector, and each
kernel it times computes what autograd computes in the training step (FP32, same tensors). No
timing conclusions: the figures of a tiny run on a shared machine mean nothing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mixprec.vision.models.blocks import Conv
from mixprec.vision.models.detector import DetectionModel, load_model_yaml

ROOT = Path(__file__).parents[2]
TINY_DET = str(ROOT / "tests" / "vision" / "det-t.yaml")


def _close(got: torch.Tensor, ref: torch.Tensor) -> None:
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_block_shapes_cover_every_conv_block_in_call_order(benchmark_script):
    mod = benchmark_script("bf16_kernels")
    model = DetectionModel(load_model_yaml(TINY_DET), nc=3).train()
    blocks = [m for m in model.modules() if isinstance(m, Conv)]
    shapes = mod.block_shapes(model, torch.randn(2, 3, 64, 64))
    assert len(shapes) == len(blocks)  # each block runs once per forward
    assert [s["first"] for s in shapes] == [True] + [False] * (len(shapes) - 1)
    assert shapes[0]["x"] == (2, 3, 64, 64) and shapes[0]["stride"] == (2, 2)
    assert sorted(s["w"] for s in shapes) == sorted(tuple(b.conv.weight.shape) for b in blocks)
    assert sum(not s["act"] for s in shapes) == sum(isinstance(b.act, torch.nn.Identity) for b in blocks)


@pytest.mark.parametrize("shape", [
    {"x": (2, 8, 12, 12), "w": (16, 8, 3, 3), "stride": (1, 1), "padding": (1, 1), "groups": 1},
    {"x": (2, 8, 12, 12), "w": (16, 8, 3, 3), "stride": (2, 2), "padding": (1, 1), "groups": 1},
    {"x": (2, 16, 6, 6), "w": (16, 1, 3, 3), "stride": (1, 1), "padding": (1, 1), "groups": 16},
])
def test_each_timed_kernel_equals_autograd(benchmark_script, shape):
    mod = benchmark_script("bf16_kernels")
    shape = {**shape, "act": True, "first": False}
    torch.manual_seed(0)
    t = mod.block_tensors(shape, torch.float32)
    calls = mod.kernels(shape, t)
    assert set(calls) == set(mod.CLASSES)
    x, w = t["x"].clone().requires_grad_(), t["w"].clone().requires_grad_()
    y = F.conv2d(x, w, None, shape["stride"], shape["padding"], 1, shape["groups"])
    gx, gw = torch.autograd.grad(y, (x, w), t["g"])
    _close(calls["conv forward"](), y.detach())
    _close(calls["conv input-grad"]()[0], gx)
    _close(calls["conv weight-grad"]()[1], gw)
    yb = t["y"].clone().requires_grad_()
    bw, bb = t["bn_w"].clone().requires_grad_(), t["bn_b"].clone().requires_grad_()
    z = F.batch_norm(yb, t["rm"].clone(), t["rv"].clone(), bw, bb, True, 0.1, 1e-3)
    _close(calls["BatchNorm forward"]()[0], z.detach())
    refs = torch.autograd.grad(z, (yb, bw, bb), t["g"])
    for got, ref in zip(calls["BatchNorm backward"](), refs, strict=True):
        _close(got, ref)
    a = F.silu(yb)
    _close(calls["SiLU forward"](), a.detach())
    _close(calls["SiLU backward"](), torch.autograd.grad(a, yb, t["g"])[0])


def test_first_block_and_blocks_without_activation_skip_those_kernels(benchmark_script):
    mod = benchmark_script("bf16_kernels")
    shape = {"x": (1, 3, 8, 8), "w": (4, 3, 3, 3), "stride": (2, 2), "padding": (1, 1), "groups": 1,
             "act": False, "first": True}
    calls = mod.kernels(shape, mod.block_tensors(shape, torch.bfloat16))
    assert set(calls) == set(mod.CLASSES) - {"conv input-grad", "SiLU forward", "SiLU backward"}
    assert calls["conv forward"]().dtype == torch.bfloat16


def test_tiny_run_writes_every_class_for_both_dtypes(benchmark_script, tmp_path, capsys):
    mod = benchmark_script("bf16_kernels")
    torch.set_num_threads(1)
    out = tmp_path / "k.json"
    mod.main(["--model", TINY_DET, "--imgsz", "32", "--batch", "2", "--rounds", "2", "--threads", "1",
              "--json", str(out)])
    rec = json.loads(out.read_text())
    assert set(rec["ms"]) == {"fp32", "bf16"}
    for per_class in rec["ms"].values():
        assert set(per_class) == set(mod.CLASSES)
        assert all(len(v) == 2 and all(math.isfinite(t) and t > 0 for t in v) for v in per_class.values())
    printed = capsys.readouterr().out
    assert "| **all** |" in printed and f"{rec['blocks']} Conv-BN-SiLU blocks" in printed
