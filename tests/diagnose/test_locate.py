"""NaN locator: the first module and op that produced inf/NaN, forward and backward."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from mixprec.diagnose import locate_nonfinite


class _Boost(torch.autograd.Function):
    """Identity forward; backward multiplies by 1e6 (a planted backward overflow)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * 1e6


class Boost(nn.Module):
    def forward(self, x):
        return _Boost.apply(x)


def test_forward_origin_is_the_planted_op(planted):
    net, batches = planted
    x, y = batches[0]

    def run():
        with torch.autocast("cpu", dtype=torch.float16):
            return F.cross_entropy(net(x), y)

    rep = locate_nonfinite(net, run)
    assert rep.origin is rep.first
    assert rep.first.phase == "forward" and rep.first.module == "amp"
    assert rep.first.op == "aten.mul.Tensor" and rep.first.from_finite_inputs
    (inp,) = [r for r in rep.first.inputs if r["shape"] == [16, 16]]
    assert inp["dtype"] == "float16" and inp["nan"] == 0 and 0 < inp["max_abs"] < 10
    assert rep.loss == "nan"
    assert "amp" in rep.describe()


def test_backward_origin_is_attributed_to_its_module():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), Boost(), nn.Linear(8, 2))
    x = torch.randn(3, 4)

    def run():
        with torch.autocast("cpu", dtype=torch.float16):
            return net(x).float().pow(2).mean()

    rep = locate_nonfinite(net, run, scale=2.0**8)
    assert isinstance(rep.loss, float)
    assert rep.first.phase == "backward" and rep.first.module == "1"
    assert rep.first.op == "aten.mul.Tensor" and rep.origin is rep.first
    assert all(p.grad is None for p in net.parameters())     # .grad untouched


def test_clean_run_and_buffers_restored():
    net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    before = net[1].running_mean.clone()
    rep = locate_nonfinite(net, lambda: net(torch.randn(8, 4)).sum())
    assert rep.first is None and rep.origin is None and math.isfinite(rep.loss)
    assert torch.equal(net[1].running_mean, before)
    assert not net[0]._forward_hooks and not net[0]._forward_pre_hooks
    assert "no inf/NaN" in rep.describe()
