"""Precision.unscale_: unscale now (to clip or inspect), step later -- as GradScaler.unscale_."""

import pytest
import torch
from torch import nn

import mixprec as mp


def _run(unscale_first: bool, plant_inf: bool = False):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2))
    prec = mp.Precision("16-mixed", device="cpu", scaler=mp.DynamicScaler(init_scale=2.0**10))
    model, opt = prec.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    x, y = torch.randn(4, 6), torch.randn(4, 2)
    loss = nn.functional.mse_loss(model(x), y)
    prec.backward(loss * (float("inf") if plant_inf else 1.0))
    if unscale_first:
        prec.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05, error_if_nonfinite=False)
        stepped = prec.step(opt)
    else:
        stepped = prec.step(opt, max_norm=0.05)  # fused unscale + clip
    return [p.detach().clone() for p in model.parameters()], prec, stepped


def test_unscale_then_clip_then_step_equals_fused_step():
    ref, _, _ = _run(False)
    got, prec, stepped = _run(True)
    assert stepped and prec.scaler.scale == 2.0**10
    for a, b in zip(ref, got):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_unscale_records_inf_and_step_skips_and_backs_off():
    torch.manual_seed(0)
    before = [p.detach().clone()
              for p in nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2)).parameters()]
    got, prec, stepped = _run(True, plant_inf=True)
    assert not stepped and prec.skipped_steps == 1 and prec.scaler.scale == 2.0**9
    assert all(torch.equal(a, b) for a, b in zip(before, got))


def test_unscale_twice_raises():
    prec = mp.Precision("16-mixed", device="cpu")
    lin = nn.Linear(2, 2)
    model, opt = prec.setup(lin, torch.optim.SGD(lin.parameters(), lr=0.1))
    prec.backward(model(torch.randn(1, 2)).sum())
    prec.unscale_(opt)
    with pytest.raises(RuntimeError, match="already called"):
        prec.unscale_(opt)
