"""MixprecPrecision in a real Lightning Fabric loop on CPU: the numerics are mixprec's."""

import pytest
import torch
from torch import nn

import mixprec as mp

lightning = pytest.importorskip("lightning")
from lightning.fabric import Fabric  # noqa: E402

from mixprec.integrations.lightning import MixprecPrecision  # noqa: E402


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 4))


def _batches(n):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(6, 8, generator=g), torch.randn(6, 4, generator=g)) for _ in range(n)]


def _fabric(precision, **kw):
    plugin = MixprecPrecision(precision, **kw)
    fabric = Fabric(accelerator="cpu", devices=1, plugins=[plugin])
    return fabric, plugin


def _fabric_steps(fabric, model, opt, batches, max_norm=None, plant_inf_at=None):
    losses = []
    for i, (x, y) in enumerate(batches):
        loss = nn.functional.mse_loss(model(x), y)
        losses.append(loss.item())
        fabric.backward(loss * float("inf") if i == plant_inf_at else loss)
        if max_norm is not None:
            fabric.clip_gradients(model, opt, max_norm=max_norm, error_if_nonfinite=False)
        opt.step()
        opt.zero_grad()
    return losses


@pytest.mark.parametrize("precision", ["bf16-master", "16-master", "bf16-mixed"])
def test_fabric_loop_equals_the_mixprec_loop_and_steps_fp32_masters(precision):
    batches = _batches(4)
    # reference: the same loop written directly against mixprec.Precision
    ref_prec = mp.Precision(precision, device="cpu")
    ref_model = _model()
    ref_model, ref_opt = ref_prec.setup(ref_model, torch.optim.AdamW(ref_model.parameters(), lr=1e-2))
    ref_losses = []
    for x, y in batches:
        with ref_prec.autocast():
            loss = nn.functional.mse_loss(ref_model(x), y)
        ref_losses.append(loss.item())
        ref_prec.backward(loss)
        ref_prec.step(ref_opt, max_norm=0.5)
        ref_opt.zero_grad()

    fabric, plugin = _fabric(precision)
    model = _model()
    model, opt = fabric.setup(model, torch.optim.AdamW(model.parameters(), lr=1e-2))
    half = plugin.precision.policy.param_dtype
    assert model.module[0].weight.dtype == half and model.module[1].weight.dtype == torch.float32
    losses = _fabric_steps(fabric, model, opt, batches, max_norm=0.5)

    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=1e-5, atol=0)
    for a, b in zip(model.module.parameters(), ref_model.parameters()):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-4, atol=1e-6)
    if precision.endswith("-master"):
        stepped = [q for g in opt.param_groups for q in g["params"]]
        assert all(q.dtype == torch.float32 for q in stepped)  # the optimizer steps FP32 masters
        master = plugin._master
        assert all(torch.equal(m.to(q.dtype), q) for q, m in zip(master.model_params, master.masters))
    assert plugin.precision.steps == 4 and plugin.precision.last_grad_norm is None  # clipped unfused


@pytest.mark.parametrize("precision", ["16-master", "bf16-mixed"])
def test_emulated_presets_run_through_fabric_as_through_mixprec(precision):
    batches = _batches(3)
    fabric, _ = _fabric(precision, emulate=True)
    model = _model()
    model, opt = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    losses = _fabric_steps(fabric, model, opt, batches)
    prec = mp.Precision(precision, device="cpu", emulate=True)
    ref = _model()
    ref, ref_opt = prec.setup(ref, torch.optim.SGD(ref.parameters(), lr=0.1))
    ref_losses = []
    for x, y in batches:
        with prec.autocast():
            loss = nn.functional.mse_loss(ref(x), y)
        ref_losses.append(loss.item())
        prec.backward(loss)
        prec.step(ref_opt)
        ref_opt.zero_grad()
    assert losses == ref_losses
    assert all(torch.equal(a, b) for a, b in zip(model.module.parameters(), ref.parameters()))


def test_planted_inf_skips_the_step_and_halves_the_scale():
    fabric, plugin = _fabric("16-master", scaler=mp.DynamicScaler(init_scale=2.0**12))
    model = _model()
    model, opt = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    batches = _batches(3)
    _fabric_steps(fabric, model, opt, batches[:1], max_norm=1.0)
    before = [q.detach().clone() for q in model.parameters()]
    masters = [m.detach().clone() for m in plugin._master.masters]
    _fabric_steps(fabric, model, opt, batches[1:2], max_norm=1.0, plant_inf_at=0)
    assert plugin.precision.skipped_steps == 1 and plugin.precision.scaler.scale == 2.0**11
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(masters, plugin._master.masters))
    _fabric_steps(fabric, model, opt, batches[2:], max_norm=1.0)
    assert plugin.precision.steps == 3 and plugin.precision.skipped_steps == 1
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_exact_resume_through_fabric_save_and_load(tmp_path):
    batches = _batches(6)

    def start():
        fabric, plugin = _fabric("16-master", scaler=mp.DynamicScaler(init_scale=2.0**8, growth_interval=2))
        model = _model()
        model, opt = fabric.setup(model, torch.optim.Adam(model.parameters(), lr=1e-2))
        return fabric, plugin, model, opt

    fabric, plugin, model, opt = start()
    _fabric_steps(fabric, model, opt, batches[:3])
    fabric.save(tmp_path / "ckpt.pt", {"model": model, "optimizer": opt, "mixprec": plugin})
    scale = plugin.precision.scaler.scale
    expected = _fabric_steps(fabric, model, opt, batches[3:])

    fabric2, plugin2, model2, opt2 = start()  # a new process: the plugin has not seen the optimizer
    fabric2.load(tmp_path / "ckpt.pt", {"model": model2, "optimizer": opt2, "mixprec": plugin2})
    assert plugin2.precision.scaler.scale == scale and plugin2.precision.steps == 3
    got = _fabric_steps(fabric2, model2, opt2, batches[3:])
    assert got == expected  # bit-identical losses after the resume
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(plugin._master.masters, plugin2._master.masters))


def test_second_optimizer_is_refused_with_the_fix():
    fabric, plugin = _fabric("bf16-master")
    model = _model()
    model, opt = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    _fabric_steps(fabric, model, opt, _batches(1))
    with pytest.raises(ValueError, match="one optimizer"):
        plugin.optimizer_step(torch.optim.SGD(model.parameters(), lr=0.1))


@pytest.mark.cuda
def test_fabric_on_cuda_builds_the_masters_on_the_module_device():
    """Fabric casts the module on the CPU and moves it afterwards: masters must follow it."""
    batches = [(x.cuda(), y.cuda()) for x, y in _batches(3)]
    plugin = MixprecPrecision("16-master")
    fabric = Fabric(accelerator="cuda", devices=1, plugins=[plugin])
    model = _model()
    model, opt = fabric.setup(model, torch.optim.AdamW(model.parameters(), lr=1e-2))
    losses = _fabric_steps(fabric, model, opt, batches, max_norm=0.5)
    assert model.module[0].weight.dtype == torch.float16 and model.module[0].weight.is_cuda
    assert all(m.is_cuda and m.dtype == torch.float32 for m in plugin._master.masters)

    prec = mp.Precision("16-master", device="cuda")
    ref = _model().cuda()
    ref, ref_opt = prec.setup(ref, torch.optim.AdamW(ref.parameters(), lr=1e-2))
    ref_losses = []
    for x, y in batches:
        with prec.autocast():
            loss = nn.functional.mse_loss(ref(x), y)
        ref_losses.append(loss.item())
        prec.backward(loss)
        prec.unscale_(ref_opt)
        torch.nn.utils.clip_grad_norm_([q for g in ref_opt.param_groups for q in g["params"]], 0.5)
        prec.step(ref_opt)
        ref_opt.zero_grad()
    assert losses == ref_losses
