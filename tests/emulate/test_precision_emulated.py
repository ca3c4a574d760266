"""The engine's claims reproduce under emulation with the same outcome as with real dtypes.

Real runs use CPU autocast / real half parameters on tiny models; emulated runs use
``Precision(..., emulate=True)``, whose ``autocast()`` is ``mixprec.emulate.emulate``.
"""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mixprec as mp
from mixprec.emulate import emulate


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                         nn.Linear(32, 1))


def _data(n: int = 64, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g)
    y = (x[:, :4].sum(1, keepdim=True) - x[:, 4:8].sum(1, keepdim=True)).sin()
    return x, y


def _run(policy: str, emulated: bool, steps: int, *, lr: float = 0.05, scaler=None,
         loss_mult: float = 1.0, model: nn.Module | None = None):
    """Train; returns (losses, stepped flags, loss scale after each step, model)."""
    model = model if model is not None else _mlp()
    x, y = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # *-true warns that it may stall
        prec = mp.Precision(policy, device="cpu", emulate=emulated, scaler=scaler)
    model, opt = prec.setup(model, torch.optim.SGD(model.parameters(), lr=lr))
    losses, stepped, scales = [], [], []
    for i in range(steps):
        xb, yb = x[(i * 16) % 64:(i * 16) % 64 + 16], y[(i * 16) % 64:(i * 16) % 64 + 16]
        with prec.autocast():
            loss = F.mse_loss(model(xb).float(), yb) * loss_mult
        prec.backward(loss)
        stepped.append(prec.step(opt))
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        scales.append(prec.scaler.scale)
    return losses, stepped, scales, model


def test_autocast_of_an_emulated_precision_is_the_emulator():
    prec = mp.Precision("16-mixed", device="cpu", emulate=True)
    assert isinstance(prec.autocast(), emulate)


def _first_grads(policy: str, emulated: bool, scaler, loss_mult: float) -> list[torch.Tensor]:
    model = _mlp()
    x, y = _data()
    prec = mp.Precision(policy, device="cpu", emulate=emulated, scaler=scaler)
    model = prec.setup(model)
    with prec.autocast():
        loss = F.mse_loss(model(x[:16]).float(), y[:16]) * loss_mult
    prec.backward(loss)
    return [p.grad.float() / prec.scaler.scale for p in model.parameters()]


@pytest.mark.parametrize("emulated", [False, True])
def test_gradients_underflow_without_a_loss_scale_and_survive_with_one(emulated):
    tiny = 1e-8  # dL/d(output) ~ 1e-9: below half of FP16's smallest subnormal (6e-8)
    unscaled = _first_grads("16-mixed", emulated, "none", tiny)
    scaled = _first_grads("16-mixed", emulated, mp.StaticScaler(2.0**24), tiny)
    fp32 = _first_grads("32", False, "none", tiny)
    assert all(torch.count_nonzero(g) == 0 for g in unscaled[:-1])  # all weights underflow
    for g, ref in zip(scaled, fp32, strict=True):
        assert torch.count_nonzero(g) > 0
        assert torch.allclose(g, ref, rtol=0.02, atol=5e-3 * ref.abs().max().item())


def test_underflow_pattern_is_the_same_emulated_and_real():
    real = _first_grads("16-mixed", False, "none", 1e-5)
    emu = _first_grads("16-mixed", True, "none", 1e-5)
    for r, e in zip(real, emu, strict=True):  # partial underflow: same elements flushed
        assert torch.equal(r == 0, e == 0)


def _regression(policy: str, emulated: bool, steps: int = 60) -> tuple[list[float], nn.Module]:
    """Linear regression whose weights sit in [1, 2) (FP16 ulp 2**-10) and whose SGD updates
    (lr * grad ~ 2e-4) are below half an ulp: FP16 storage rounds every update away."""
    torch.manual_seed(0)
    model = nn.Linear(16, 1)
    with torch.no_grad():
        model.weight.uniform_(1.0, 1.9)
        model.bias.fill_(1.5)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(64, 16, generator=g)
    y = x @ (model.weight.detach().t() + 0.5) + 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # *-true warns that it may stall
        prec = mp.Precision(policy, device="cpu", emulate=emulated)
    model, opt = prec.setup(model, torch.optim.SGD(model.parameters(), lr=2e-4))
    losses = []
    for _ in range(steps):
        with prec.autocast():
            loss = F.mse_loss(model(x).float(), y)
        prec.backward(loss)
        prec.step(opt)
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses, model


@pytest.mark.parametrize("emulated", [False, True])
def test_16_true_stagnates_where_16_master_converges(emulated):
    true_losses, true_model = _regression("16-true", emulated)
    master_losses, _ = _regression("16-master", emulated)
    fp32_losses, _ = _regression("32", False)
    assert true_losses[-1] == true_losses[0]  # not one update survived the FP16 rounding
    assert true_model.weight.dtype == (torch.float32 if emulated else torch.float16)
    assert master_losses[-1] < 0.98 * master_losses[0]
    assert master_losses[-1] == pytest.approx(fp32_losses[-1], rel=0.02)


def test_16_true_and_16_master_losses_match_between_emulated_and_real():
    for policy in ("16-true", "16-master"):
        real, _ = _regression(policy, False, 30)
        emu, _ = _regression(policy, True, 30)
        assert emu == pytest.approx(real, rel=1e-3), policy


def test_overflow_skips_steps_and_backs_off_like_the_real_run():
    def scaler():
        return mp.DynamicScaler(init_scale=2.0**28, growth_interval=1000, max_scale=None)
    real = _run("16-mixed", False, 16, scaler=scaler())
    emu = _run("16-mixed", True, 16, scaler=scaler())
    assert real[1] == emu[1] and real[2] == emu[2]
    assert not any(real[1][:8])  # 2**28 ... 2**21 overflow FP16 gradients: skipped, halved
    assert real[2][7] == 2.0**20 and any(real[1][8:])


def test_100_step_run_follows_the_real_dtype_run():
    """Same skipped steps and loss-scale sequence; losses within 1% (relative) at every step."""
    def scaler():
        return mp.DynamicScaler(init_scale=2.0**15, growth_interval=8)
    real_losses, real_stepped, real_scales, _ = _run("16-mixed", False, 100, scaler=scaler())
    emu_losses, emu_stepped, emu_scales, _ = _run("16-mixed", True, 100, scaler=scaler())
    assert 3 <= real_stepped.count(False) <= 30  # the scale grows into overflow repeatedly
    assert emu_stepped == real_stepped
    assert emu_scales == real_scales
    assert emu_losses == pytest.approx(real_losses, rel=1e-2)
    assert real_losses[-1] < 0.7 * real_losses[0]
