"""The Hugging Face Accelerate recipe (docs/integrations.md): Accelerate with mixed_precision="no"
places the model, mixprec does the numerics, register_for_checkpointing(prec) makes resume exact."""

import pytest
import torch
from torch import nn

import mixprec as mp

accelerate = pytest.importorskip("accelerate")


def _start(precision="16-master", **kw):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 4))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    # -- the recipe -------------------------------------------------------------------------
    accelerator = accelerate.Accelerator(mixed_precision="no", cpu=True)
    prec = mp.Precision(precision, device=accelerator.device, **kw)
    model, optimizer = prec.setup(model, optimizer)        # before prepare: cast + FP32 masters
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(prec)           # scaler state in save_state/load_state
    return accelerator, prec, model, optimizer


def _steps(prec, model, optimizer, batches, plant_inf_at=None):
    losses = []
    for i, (x, y) in enumerate(batches):
        with prec.autocast():
            loss = nn.functional.mse_loss(model(x), y)
        losses.append(loss.item())
        prec.backward(loss * float("inf") if i == plant_inf_at else loss)
        prec.step(optimizer.optimizer, max_norm=1.0)       # the MasterWeights inside Accelerate's wrapper
        optimizer.zero_grad()
    return losses


def _batches(n):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(6, 8, generator=g), torch.randn(6, 4, generator=g)) for _ in range(n)]


def test_recipe_equals_plain_mixprec_and_keeps_fp32_masters():
    batches = _batches(4)
    _, prec, model, optimizer = _start()
    assert model[0].weight.dtype == torch.float16 and model[1].weight.dtype == torch.float32
    assert isinstance(optimizer.optimizer, mp.MasterWeights)
    assert all(q.dtype == torch.float32 for g in optimizer.param_groups for q in g["params"])
    losses = _steps(prec, model, optimizer, batches)

    torch.manual_seed(0)  # reference: the same loop without Accelerate
    ref = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 4))
    ref_prec = mp.Precision("16-master", device="cpu")
    ref, ref_opt = ref_prec.setup(ref, torch.optim.Adam(ref.parameters(), lr=1e-2))
    ref_losses = []
    for x, y in batches:
        with ref_prec.autocast():
            loss = nn.functional.mse_loss(ref(x), y)
        ref_losses.append(loss.item())
        ref_prec.backward(loss)
        ref_prec.step(ref_opt, max_norm=1.0)
        ref_opt.zero_grad()
    assert losses == ref_losses
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), ref.parameters()))


def test_planted_inf_skips_the_step_and_halves_the_scale():
    _, prec, model, optimizer = _start(scaler=mp.DynamicScaler(init_scale=2.0**12))
    batches = _batches(2)
    _steps(prec, model, optimizer, batches[:1])
    before = [q.detach().clone() for q in model.parameters()]
    _steps(prec, model, optimizer, batches[1:], plant_inf_at=0)
    assert prec.skipped_steps == 1 and prec.scaler.scale == 2.0**11
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_exact_resume_through_save_state_and_load_state(tmp_path):
    batches = _batches(6)
    scaler = dict(init_scale=2.0**8, growth_interval=2)
    accelerator, prec, model, optimizer = _start(scaler=mp.DynamicScaler(**scaler))
    _steps(prec, model, optimizer, batches[:3])
    accelerator.save_state(tmp_path / "state")
    saved_scale = prec.scaler.scale
    expected = _steps(prec, model, optimizer, batches[3:])

    accelerator2, prec2, model2, optimizer2 = _start(scaler=mp.DynamicScaler(**scaler))
    accelerator2.load_state(tmp_path / "state")
    assert prec2.steps == 3 and prec2.scaler.scale == saved_scale != 2.0**8
    assert _steps(prec2, model2, optimizer2, batches[3:]) == expected
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters()))
