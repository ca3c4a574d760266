"""Precision.setup and the step protocol: casting, misuse errors, schedulers and skipped steps."""

import warnings

import pytest
import torch
from torch import nn

import mixprec as mp


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 8), nn.LayerNorm(8), nn.Linear(8, 2))


@pytest.mark.parametrize("precision", ["16-master", "bf16-master"])
def test_setup_casts_params_keeps_norm_fp32_and_wraps_optimizer(precision):
    model = _net()
    fp32 = [p.detach().clone() for p in model.parameters()]
    params = list(model.parameters())
    prec = mp.Precision(precision, device="cpu")
    model, opt = prec.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    half = prec.policy.param_dtype
    assert list(model.parameters()) == params  # same Parameter objects, cast in place
    for name, p in model.named_parameters():
        expected = torch.float32 if name.startswith(("1.", "5.")) else half
        assert p.dtype == expected, name
    assert model[1].running_mean.dtype == torch.float32
    assert isinstance(opt, mp.MasterWeights)
    # masters start from the FP32 weights as they were before the cast, not from the half copies
    assert all(torch.equal(m, f) for m, f in zip(opt.masters, [f for f, p in zip(fp32, params)
                                                               if p.dtype == half]))
    x = torch.randn(2, 3, 6, 6)
    with prec.autocast():
        out = model(x)
    assert out.dtype == torch.float32  # output dtype of the policy
    prec.backward(out.sum())
    assert all(p.grad is None for p in params if p.dtype == half)  # moved to the FP32 masters
    assert all(m.grad.dtype == torch.float32 for m in opt.masters)


def test_true_preset_runs_without_autocast_in_half():
    with pytest.warns(UserWarning, match="16-master"):
        prec = mp.Precision("16-true", device="cpu")
    model = prec.setup(nn.Linear(4, 4))
    with prec.autocast():
        assert not torch.is_autocast_enabled("cpu")
        assert model(torch.randn(2, 4)).dtype == torch.float16


def test_mixed_keeps_fp32_params_and_autocasts():
    prec = mp.Precision("bf16-mixed", device="cpu")
    model = prec.setup(nn.Linear(4, 4))
    assert model.weight.dtype == torch.float32
    with prec.autocast():
        assert torch.is_autocast_enabled("cpu")
        inner = model.weight @ torch.randn(4, 2)
    assert inner.dtype == torch.bfloat16


def _one_backward(prec, model, opt=None):
    with prec.autocast():
        loss = model(torch.randn(2, 4)).float().sum()
    return loss


def test_step_before_backward_raises_with_the_fix():
    prec = mp.Precision("16-mixed", device="cpu")
    model, opt = prec.setup(nn.Linear(4, 1), torch.optim.SGD(nn.Linear(4, 1).parameters(), lr=0.1))
    with pytest.raises(RuntimeError, match=r"call prec.backward\(loss\) before"):
        prec.step(opt)


def test_plain_backward_with_a_scaler_raises_with_the_fix():
    model = nn.Linear(4, 1)
    prec = mp.Precision("16-mixed", device="cpu")
    model, opt = prec.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    _one_backward(prec, model).backward()
    with pytest.raises(RuntimeError, match=r"replace loss.backward\(\) with prec.backward\(loss\)"):
        prec.step(opt)


def test_unwrapped_optimizer_with_master_policy_raises():
    model = nn.Linear(4, 1)
    raw = torch.optim.SGD(model.parameters(), lr=0.1)
    prec = mp.Precision("16-master", device="cpu")
    model, _ = prec.setup(model, raw)
    prec.backward(_one_backward(prec, model))
    with pytest.raises(ValueError, match="returned by prec.setup"):
        prec.step(raw)


def test_non_scalar_loss_raises():
    prec = mp.Precision("32", device="cpu")
    with pytest.raises(ValueError, match="loss.mean"):
        prec.backward(torch.ones(3, requires_grad=True))


def test_fp8_needs_emulation():
    with pytest.raises(ValueError, match="emulate=True"):
        mp.Precision("fp8-mixed", device="cpu")


def test_skipped_step_does_not_advance_scheduler_nor_warn():
    model = nn.Linear(4, 1)
    prec = mp.Precision("16-master", device="cpu", scaler=mp.DynamicScaler(init_scale=256.0))
    model, opt = prec.setup(model, torch.optim.SGD(model.parameters(), lr=1.0))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5**step)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = []
        for step in range(4):
            prec.backward(_one_backward(prec, model))
            if step == 0:
                opt.param_groups[0]["params"][0].grad[0, 0] = float("nan")
            results.append(prec.step(opt, scheduler=sched))
            opt.zero_grad()
    assert results == [False, True, True, True]
    assert sched.last_epoch == 3  # advanced only on the 3 real steps
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5**3)
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)]


def test_clipping_uses_unscaled_gradients():
    torch.manual_seed(0)
    ref_model = nn.Linear(4, 1)
    model = nn.Linear(4, 1)
    model.load_state_dict(ref_model.state_dict())
    x = torch.randn(8, 4) * 100
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=0.1)
    ref_model(x).sum().backward()
    torch.nn.utils.clip_grad_norm_(ref_model.parameters(), 1.0)
    ref_opt.step()
    prec = mp.Precision("32", scaler=mp.StaticScaler(1024.0), device="cpu")
    model, opt = prec.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    prec.backward(model(x).sum())
    assert prec.step(opt, max_norm=1.0)
    for a, b in zip(ref_model.parameters(), model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_setup_twice_and_prewrapped_optimizer_are_refused():
    model = nn.Linear(4, 1)
    prec = mp.Precision("16-master", device="cpu")
    model, opt = prec.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(RuntimeError, match="one Precision per model"):
        prec.setup(model)
    with pytest.raises(ValueError, match="plain optimizer"):
        mp.Precision("16-master", device="cpu").setup(nn.Linear(2, 2), opt)


def test_master_weights_refuses_an_fp32_only_optimizer():
    with pytest.raises(ValueError, match="no FP16/BF16 parameter"):
        mp.MasterWeights(torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1))


def test_existing_optimizer_state_moves_to_the_masters():
    model = nn.Linear(4, 2).half()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    wrapped = mp.MasterWeights(opt)
    assert len(wrapped.state) == 2
    assert all(s["exp_avg"].dtype == torch.float32 for s in wrapped.state.values())
    assert all(m in wrapped.state for m in wrapped.masters)


def test_master_batchnorm_normalises_half_inputs_with_fp32_statistics():
    """BatchNorm keeps FP32 weights and running stats but takes (and saves) the half input."""
    model = _net()
    prec = mp.Precision("16-master", device="cpu")
    model, _ = prec.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    seen = {}
    model[1].register_forward_hook(lambda m, i, o: seen.update(inp=i[0].dtype, out=o.dtype))
    model[5].register_forward_hook(lambda m, i, o: seen.update(ln_inp=i[0].dtype))
    with prec.autocast():
        model(torch.randn(2, 3, 6, 6))
    assert seen == {"inp": torch.float16, "out": torch.float16, "ln_inp": torch.float32}
    assert model[1].weight.dtype == model[1].running_var.dtype == torch.float32


def test_emulated_master_tags_storage_and_no_autocast_leaves_emulation():
    from mixprec.emulate import is_emulating, logical_dtype

    model = _net()
    prec = mp.Precision("16-master", device="cpu", emulate=True)
    model, opt = prec.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert model[0].weight.dtype == torch.float32  # storage stays FP32 ...
    assert logical_dtype(model[0].weight) == torch.float16  # ... holding FP16 values
    assert torch.equal(model[0].weight, model[0].weight.half().float())
    assert logical_dtype(model[1].weight) == torch.float32  # norm layers are not half
    with prec.autocast():
        assert is_emulating()
        with prec.no_autocast():
            assert not is_emulating()
        assert is_emulating()


@pytest.mark.parametrize("precision", ["16-mixed", "16-master", "bf16-true"])
def test_fused_unscale_and_clip_equals_unscale_then_clip_grad_norm(precision):
    """step(max_norm=...) unscales and clips in one pass; compare with the two-pass reference
    (torch's clip_grad_norm_ on gradients unscaled by torch's own kernel)."""
    torch.manual_seed(0)
    grads = [torch.randn(64, 32) * 300.0, torch.randn(32) * 5.0]
    for max_norm in (0.5, 1e9):  # clipping active, and inactive
        scale = 2.0**8
        fused = [g.clone() for g in grads]
        found = torch.zeros(1)
        from mixprec.precision import _unscale_clip_and_check
        norm = _unscale_clip_and_check(fused, torch.tensor(1 / scale), max_norm, found)
        ref = [g.clone() for g in grads]
        ref_found = torch.zeros(1)
        torch._amp_foreach_non_finite_check_and_unscale_(ref, ref_found, torch.tensor(1 / scale))
        params = [torch.nn.Parameter(torch.zeros_like(g)) for g in ref]
        for p, g in zip(params, ref):
            p.grad = g
        ref_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        assert found.item() == ref_found.item() == 0.0
        torch.testing.assert_close(norm, ref_norm, rtol=1e-6, atol=0)
        for a, p in zip(fused, params):
            torch.testing.assert_close(a, p.grad, rtol=2e-7, atol=0)  # one rounding vs two
    bad = [g.clone() for g in grads]
    bad[1][3] = float("nan")
    found = torch.zeros(1)
    _unscale_clip_and_check(bad, torch.tensor(1.0), 1.0, found)
    assert found.item() == 1.0

    # and through Precision.step: a skipped step on inf, a clipped step otherwise
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prec = mp.Precision(precision, device="cpu", scaler=mp.DynamicScaler(init_scale=64.0)
                            if precision.startswith("16-") else None)
    model = nn.Linear(4, 2)
    model, opt = prec.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    with prec.autocast():
        prec.backward(model(torch.randn(8, 4) * 50).float().sum())
    assert prec.step(opt, max_norm=1.0)
    assert prec.last_grad_norm.item() > 1.0
