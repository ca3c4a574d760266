"""Scalers: the dynamic rule against torch's own kernel and torch.amp.GradScaler."""

import pytest
import torch
from torch import nn

import mixprec as mp
from mixprec.scaler import DynamicConfig, dynamic_update


def test_dynamic_update_equals_torch_kernel_for_default_settings():
    """5000 steps with a random overflow pattern: identical scale and tracker sequences."""
    g = torch.Generator().manual_seed(0)
    overflow = torch.rand(5000, generator=g) < 1 / 1500
    config = DynamicConfig(min_scale=None)
    scale, tracker = torch.tensor(2.0**16), torch.tensor(0, dtype=torch.int32)
    hyst = torch.tensor(1, dtype=torch.int32)
    t_scale, t_tracker = torch.tensor(2.0**16), torch.tensor(0, dtype=torch.int32)
    grew = backed = 0
    for found in overflow:
        found_inf = torch.tensor(float(found))
        before = scale.item()
        scale, tracker, hyst = dynamic_update(scale, tracker, hyst, found_inf, config)
        torch._amp_update_scale_(t_scale, t_tracker, found_inf.clone(), 2.0, 0.5, 2000)
        assert scale.item() == t_scale.item() and tracker.item() == t_tracker.item()
        grew += scale.item() > before
        backed += scale.item() < before
    assert grew >= 1 and backed >= 1  # the pattern exercised both branches


@pytest.mark.parametrize(("min_scale", "max_scale"), [(None, None), (2.0**14, 2.0**17), (None, 2.0**16)])
def test_fused_update_path_equals_the_pure_rule(min_scale, max_scale):
    """hysteresis=1 runs torch's fused kernel plus a clamp: it must follow dynamic_update."""
    g = torch.Generator().manual_seed(1)
    overflow = torch.rand(600, generator=g) < 0.2
    fused = mp.DynamicScaler(init_scale=2.0**16, growth_interval=3, min_scale=min_scale,
                             max_scale=max_scale)
    config = fused.config
    scale, tracker = torch.tensor(2.0**16), torch.tensor(0, dtype=torch.int32)
    hyst = torch.tensor(1, dtype=torch.int32)
    for found in overflow:
        found_inf = torch.tensor([float(found)])
        fused.update(found_inf)
        scale, tracker, hyst = dynamic_update(scale, tracker, hyst, found_inf, config)
        assert fused.scale == scale.item()
        assert fused.state_dict()["growth_tracker"] == tracker.item()


def _train_with_injected_infs(use_mixprec: bool, inf_steps: set[int], steps: int = 14):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 8), torch.randn(16, 1)
    scales, stepped = [], []
    if use_mixprec:
        # min_scale=None: the explicit GradScaler-parity option (the default has a floor of 1.0)
        prec = mp.Precision("16-mixed", scaler=mp.DynamicScaler(growth_interval=3, min_scale=None),
                            device="cpu")
        model, opt = prec.setup(model, opt)
    else:
        scaler = torch.amp.GradScaler("cpu", growth_interval=3)
    for step in range(steps):
        with torch.autocast("cpu", dtype=torch.float16):
            loss = nn.functional.mse_loss(model(x).float(), y)
        if use_mixprec:
            prec.backward(loss)
        else:
            scaler.scale(loss).backward()
        if step in inf_steps:
            model[0].weight.grad[0, 0] = float("inf")
        if use_mixprec:
            stepped.append(prec.step(opt))
            scales.append(prec.scaler.scale)
        else:
            before = [p.detach().clone() for p in model.parameters()]
            scaler.step(opt)
            scaler.update()
            stepped.append(not all(torch.equal(a, b) for a, b in zip(before, model.parameters())))
            scales.append(scaler.get_scale())
        opt.zero_grad(set_to_none=True)
    return scales, stepped, [p.detach().clone() for p in model.parameters()]


def test_same_scales_skips_and_params_as_grad_scaler():
    infs = {2, 5, 6, 11}
    ours = _train_with_injected_infs(True, infs)
    torchs = _train_with_injected_infs(False, infs)
    assert ours[0] == torchs[0]
    assert ours[1] == torchs[1] == [s not in infs for s in range(14)]
    assert all(torch.equal(a, b) for a, b in zip(ours[2], torchs[2]))


def test_hysteresis_floor_and_ceiling():
    s = mp.DynamicScaler(init_scale=8.0, growth_interval=2, hysteresis=2, min_scale=2.0, max_scale=16.0)
    seq = []
    for found in [1, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0]:
        s.update(torch.tensor([float(found)]))
        seq.append(s.scale)
    # one overflow is tolerated (hysteresis 2); a clean step refills; two in a row halve;
    # the floor holds at 2; growth every 2 clean steps stops at the ceiling 16.
    assert seq == [8, 8, 8, 4, 4, 2, 2, 2, 2, 4, 4, 8, 8, 16]


def test_growth_never_reaches_inf_without_ceiling():
    s = mp.DynamicScaler(init_scale=2.0**127, growth_interval=1, max_scale=None)
    s.update(torch.zeros(1))
    assert s.scale == 2.0**127


@pytest.mark.parametrize("factory", [
    lambda: mp.NoScaler(), lambda: mp.StaticScaler(1024.0),
    lambda: mp.DynamicScaler(init_scale=64.0, growth_interval=3, hysteresis=2, min_scale=1.0,
                             max_scale=2**20),
])
def test_state_dict_round_trips_every_field(factory):
    a = factory()
    for found in [0, 1, 0, 0, 1]:
        a.scale_loss(torch.ones(()))
        a.update(torch.tensor([float(found)]))
    state = a.state_dict()
    b = factory()
    b.load_state_dict(state)
    assert b.state_dict() == state
    for found in [0, 0, 1, 0]:  # and they keep evolving identically
        a.update(torch.tensor([float(found)]))
        b.update(torch.tensor([float(found)]))
    assert a.state_dict() == b.state_dict()


def test_loading_another_scalers_state_is_refused():
    with pytest.raises(ValueError, match="same policy"):
        mp.NoScaler().load_state_dict(mp.DynamicScaler().state_dict())


@pytest.mark.parametrize("kwargs", [{"growth_factor": 1.0}, {"backoff_factor": 1.5},
                                    {"growth_interval": 0}, {"hysteresis": 0},
                                    {"min_scale": 4.0, "max_scale": 2.0}, {"init_scale": 0.0},
                                    {"init_scale": 2.0**30}])
def test_bad_config_raises_with_the_value(kwargs):
    with pytest.raises(ValueError, match="must be|>"):
        mp.DynamicScaler(**kwargs)
