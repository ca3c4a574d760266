"""Optimizer groups, the warmup/decay schedule, skipped steps and the FP32 EMA."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mixprec.precision import Precision
from mixprec.vision.optim import (
    ModelEMA,
    Schedule,
    build_optimizer,
    plan_steps,
    resolve_optimizer,
    warmup_accumulate,
)


def test_groups_decay_only_weights():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4))
    opt = build_optimizer(net, "SGD", 0.01, 0.9, 5e-4)
    names = [g["name"] for g in opt.param_groups]
    assert names == ["weight", "norm", "bias"]
    assert [len(g["params"]) for g in opt.param_groups] == [1, 1, 2]
    assert [g["weight_decay"] for g in opt.param_groups] == [5e-4, 0.0, 0.0]


def test_auto_optimizer_rule():
    assert resolve_optimizer("auto", 0.01, 0.937, nc=6, iterations=100)[:3] == ("AdamW", 0.001, 0.9)
    assert resolve_optimizer("auto", 0.01, 0.937, nc=6, iterations=20_000)[:3] == ("SGD", 0.01, 0.9)
    with pytest.raises(ValueError, match="not supported"):
        resolve_optimizer("lion", 0.01, 0.9, 6, 10)


def test_schedule_warmup_then_linear_decay():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    opt = build_optimizer(net, "SGD", 0.01, 0.937, 0.0)
    s = Schedule(opt, lr0=0.01, lrf=0.01, total=100, warmup=10, warmup_bias_lr=0.1,
                 warmup_momentum=0.8, momentum=0.937)
    assert s.lrs() == [0.0, 0.0, 0.1] and opt.param_groups[0]["momentum"] == 0.8
    for _ in range(10):
        s.step()
    expected = 0.01 * ((1 - 10 / 100) * (1 - 0.01) + 0.01)
    assert s.lrs() == pytest.approx([expected] * 3) and opt.param_groups[0]["momentum"] == 0.937
    state = s.state_dict()
    s2 = Schedule(opt, 0.01, 0.01, 100, 10)
    s2.load_state_dict(state)
    assert s2.lrs() == pytest.approx(s.lrs())


def test_a_skipped_step_does_not_advance_the_schedule():
    net = nn.Linear(3, 1)
    opt = build_optimizer(net, "SGD", 0.01, 0.9, 0.0)
    prec = Precision("16-mixed", device="cpu")
    net, opt = prec.setup(net, opt)
    sched = Schedule(opt, 0.01, 0.01, total=10, warmup=0)
    before = [p.detach().clone() for p in net.parameters()]
    prec.backward(net(torch.full((1, 3), float("inf"))).sum())  # inf gradients: must skip
    assert prec.step(opt, max_norm=10.0, scheduler=sched) is False
    assert sched.count == 0 and prec.skipped_steps == 1
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    opt.zero_grad(set_to_none=True)
    prec.backward(net(torch.ones(1, 3)).sum())
    assert prec.step(opt, max_norm=10.0, scheduler=sched) is True and sched.count == 1


def test_ema_is_fp32_and_follows_the_model():
    net = nn.Linear(2, 2).to(torch.bfloat16)
    ema = ModelEMA(net, decay=0.5, tau=1e-9)  # effective decay 0.5 from the first update
    assert ema.ema.weight.dtype == torch.float32
    start = ema.ema.weight.clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net)
    torch.testing.assert_close(ema.ema.weight, 0.5 * start + 0.5 * net.weight.float())


@pytest.mark.parametrize("name", ["AdamW", "SGD"])
def test_optimizer_follows_the_reference_update(name):
    """build_optimizer may pick the fused kernel: its steps match torch's reference loop
    implementation (foreach=False) within FP32 rounding."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.BatchNorm1d(16), nn.Linear(16, 2))
    ref, start = copy.deepcopy(net), copy.deepcopy(net)
    opt = build_optimizer(net, name, 0.01, 0.9, 5e-4)
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": list(rg)}
              for g, rg in zip(opt.param_groups, _groups_like(ref, opt, net), strict=True)]
    for g in groups:
        g["fused"], g["foreach"] = None, False
    ref_opt = type(opt)(groups)
    for _ in range(5):
        x = torch.randn(32, 8)
        for m, o in ((net, opt), (ref, ref_opt)):
            o.zero_grad()
            m(x).square().mean().backward()
            o.step()
    for a, b in zip(net.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    moved = [not torch.equal(a, b) for a, b in zip(net.parameters(), start.parameters(), strict=True)]
    assert all(moved)


def _groups_like(ref: nn.Module, opt: torch.optim.Optimizer, net: nn.Module):
    index = {id(p): q for p, q in zip(net.parameters(), ref.parameters(), strict=True)}
    return [[index[id(p)] for p in g["params"]] for g in opt.param_groups]


def test_warmup_leaves_adam_betas_and_a_zero_bias_lr_starts_at_zero():
    """As Ultralytics' warmup: it only touches a group's 'momentum' (SGD), never Adam's betas;
    warmup_bias_lr=0 (what Ultralytics forces under optimizer=auto) ramps biases up from 0."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    opt = build_optimizer(net, "AdamW", 0.001, 0.9, 0.0)
    s = Schedule(opt, 0.001, 0.01, total=100, warmup=10, warmup_bias_lr=0.0, warmup_momentum=0.8,
                 momentum=0.9)
    assert s.lrs() == [0.0, 0.0, 0.0]
    s.step()
    assert all(g["betas"] == (0.9, 0.999) for g in opt.param_groups)
    assert s.lrs()[2] == pytest.approx(0.001 * ((1 - 1 / 100) * 0.99 + 0.01) / 10)


def test_accumulate_ramps_from_one_during_warmup():
    """Hand values of round(1 + (acc - 1) * ni / nw) (Python's round, half to even, as numpy's)."""
    assert [warmup_accumulate(ni, 75, 4) for ni in (0, 12, 13, 37, 38, 62, 63, 74, 75, 500)] == \
        [1, 1, 2, 2, 3, 3, 4, 4, 4, 4]
    assert warmup_accumulate(5, 0, 4) == 4  # no warmup: fixed accumulation
    # 4 batches per epoch, 2 epochs, accumulate 4, warmup over the first 4 batches:
    # ni 0 (acc 1) steps; ni 1 (acc 2) waits; ni 2 (acc 2) steps; ni 3 is the epoch's last: steps;
    # epoch 2 (acc 4) steps only at its last batch -> 3 steps in warmup, 4 in all
    assert plan_steps(4, 2, 4, 4) == (3, 4)
    assert plan_steps(25, 12, 4, 0) == (0, 12 * 7)  # no warmup: ceil(25 / 4) per epoch
    warm, total = plan_steps(25, 12, 4, 75)  # 400 images, batch 16, nbs 64, 3 warmup epochs
    assert warm > 21 and total > 12 * 7  # more, smaller steps early than without the ramp
