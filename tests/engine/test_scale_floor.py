"""The loss-scale floor (issue #11): a run of NaN losses cannot collapse the scale to 0 and then
write NaN into the weights; the skip-streak warning names the cause; GradScaler parity holds
with ``min_scale=None``; the misuse and state checks name the problem."""

import warnings

import pytest
import torch
from torch import nn

import mixprec as mp

NAN_STEPS, FINITE_STEPS = 300, 20


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only contend on a shared machine
    yield
    torch.set_num_threads(n)


def _nan_then_finite(kind: str):
    """16-mixed, inputs NaN for 300 steps (bad data), then finite. ``kind``: "default" (mixprec's
    default scaler), "none" (min_scale=None) or "torch" (torch.amp.GradScaler). Returns the scale
    history, the final parameters and the warnings raised."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(16, 8), torch.randn(16, 1)
    bad = torch.full_like(x, float("nan"))
    if kind == "torch":
        scaler = torch.amp.GradScaler("cpu")
    else:
        s = mp.DynamicScaler() if kind == "default" else mp.DynamicScaler(min_scale=None)
        prec = mp.Precision("16-mixed", scaler=s, device="cpu")
        model, opt = prec.setup(model, opt)
    scales = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(NAN_STEPS + FINITE_STEPS):
            with torch.autocast("cpu", dtype=torch.float16):
                loss = nn.functional.mse_loss(model(bad if step < NAN_STEPS else x).float(), y)
            if kind == "torch":
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                scales.append(scaler.get_scale())
            else:
                prec.backward(loss)
                prec.step(opt)
                scales.append(prec.scaler.scale)
            opt.zero_grad(set_to_none=True)
    params = [p.detach().clone() for p in model.parameters()]
    return scales, params, [w for w in caught if issubclass(w.category, mp.SkippedStepsWarning)]


def test_nan_losses_cannot_collapse_the_scale_nor_poison_the_weights():
    scales, params, warned = _nan_then_finite("default")
    assert min(scales) == 1.0  # the floor: 65536 halved 16 times, then held
    assert all(torch.isfinite(p).all() for p in params)
    assert len(warned) == 1  # once per streak
    msg = str(warned[0].message)
    assert "20 consecutive" in msg and "loss itself was inf/NaN in 20" in msg and "not FP16 overflow" in msg
    # the reference: torch's GradScaler (and min_scale=None) collapse to 0 and write NaN
    t_scales, t_params, _ = _nan_then_finite("torch")
    assert 0.0 in t_scales and not all(torch.isfinite(p).all() for p in t_params)


def test_min_scale_none_reproduces_grad_scaler_bit_for_bit_through_the_collapse():
    n_scales, n_params, _ = _nan_then_finite("none")
    t_scales, t_params, _ = _nan_then_finite("torch")
    assert n_scales == t_scales
    for a, b in zip(n_params, t_params, strict=True):
        assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())


def test_overflow_streak_warning_names_gradient_overflow_not_bad_data():
    model = nn.Linear(4, 1)
    prec = mp.Precision("16-mixed", device="cpu", warn_skips=5)
    model, opt = prec.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.warns(mp.SkippedStepsWarning) as caught:
        for _ in range(6):
            with prec.autocast():
                loss = model(torch.randn(2, 4)).float().sum()
            prec.backward(loss)
            model.weight.grad[0, 0] = float("inf")  # finite loss, overflowing gradient
            assert not prec.step(opt)
            opt.zero_grad()
    msgs = [str(w.message) for w in caught if issubclass(w.category, mp.SkippedStepsWarning)]
    assert len(msgs) == 1
    assert "finite loss and inf/NaN gradients" in msgs[0] and "float16" in msgs[0]
    assert prec.consecutive_skips == 6 and prec.last_loss_finite


def test_step_reads_the_host_once(monkeypatch):
    """The loss-finite flag rides on the found-inf read: one .item()/.tolist() per step."""
    model = nn.Linear(4, 1)
    prec = mp.Precision("16-mixed", scaler=mp.DynamicScaler(init_scale=1024.0), device="cpu")
    model, opt = prec.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    with prec.autocast():
        loss = model(torch.randn(2, 4)).float().sum()
    prec.backward(loss)
    calls = []
    for name in ("item", "tolist", "__bool__"):
        orig = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name,
                            lambda self, *a, _o=orig, _n=name, **k: (calls.append(_n), _o(self, *a, **k))[1])
    assert prec.step(opt)
    monkeypatch.undo()
    assert len(calls) == 1, calls


def test_plain_backward_after_prec_backward_is_detected():
    model = nn.Linear(4, 1)
    prec = mp.Precision("16-mixed", scaler=mp.DynamicScaler(init_scale=1024.0), device="cpu")
    model, opt = prec.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    with prec.autocast():
        l1 = model(torch.randn(2, 4)).float().sum()
        l2 = model(torch.randn(2, 4)).float().sum()
    prec.backward(l1)
    l2.backward()
    before = model.weight.detach().clone()
    with pytest.raises(RuntimeError, match=r"outside prec.backward\(loss\).*not scaled"):
        prec.step(opt)
    assert torch.equal(model.weight, before)
    # two prec.backward calls (gradient accumulation) are fine
    opt.zero_grad()
    with prec.autocast():
        l3 = model(torch.randn(2, 4)).float().sum()
        l4 = model(torch.randn(2, 4)).float().sum()
    prec.backward(l3)
    prec.backward(l4)
    assert prec.step(opt)


@pytest.mark.parametrize("state", [{"foo": 1}, {"policy": "32"}, [1, 2]])
def test_loading_something_that_is_not_a_precision_state_names_the_keys(state):
    with pytest.raises(ValueError, match="not a Precision state.*policy, emulate, scaler, steps"):
        mp.Precision("32").load_state_dict(state)


def test_default_floor_is_one_for_every_default_dynamic_scaler():
    assert mp.DynamicScaler().config.min_scale == 1.0
    assert mp.Precision("16-mixed").scaler.config.min_scale == 1.0
    assert mp.Precision("16-master").scaler.config.min_scale == 1.0
