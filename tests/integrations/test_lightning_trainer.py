"""MixprecTrainerPrecision in a real Lightning Trainer on CPU."""

import itertools

import pytest
import torch
from torch import nn

import mixprec as mp

pytest.importorskip("lightning")
import lightning as L
from torch.utils.data import DataLoader, TensorDataset

from mixprec.integrations.lightning import MixprecTrainerPrecision


class Regressor(L.LightningModule):
    def __init__(self, plant_inf_at=None):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 4))
        self.plant_inf_at, self.losses = plant_inf_at, []

    def training_step(self, batch, i):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.losses.append(loss.item())
        return loss * float("inf") if self.global_step == self.plant_inf_at else loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def _loader(n=18, repeat=1):
    """``n // 6`` batches per epoch (resume at an epoch boundary), each ``repeat``-ed."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, 8, generator=g), torch.randn(n, 4, generator=g)
    return DataLoader(TensorDataset(x.repeat(repeat, 1), y.repeat(repeat, 1)), batch_size=6, shuffle=False)


def _trainer(plugin, max_steps=-1, **kw):
    return L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, plugins=[plugin], logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     gradient_clip_val=0.5, **kw)


def test_trainer_equals_the_mixprec_loop_with_fp32_masters():
    plugin = MixprecTrainerPrecision("16-master")
    module = Regressor()
    _trainer(plugin, 5).fit(module, _loader())
    assert module.net[0].weight.dtype == torch.float16 and module.net[1].weight.dtype == torch.float32
    opt = plugin._master
    assert isinstance(opt, mp.MasterWeights) and all(m.dtype == torch.float32 for m in opt.masters)

    ref = Regressor().net  # reference: the same steps written against mixprec.Precision
    prec = mp.Precision("16-master", device="cpu")
    ref, ref_opt = prec.setup(ref, torch.optim.Adam(ref.parameters(), lr=1e-2))
    ref_losses = []
    for (x, y), _ in zip(itertools.chain(_loader(), _loader()), range(5)):
        with prec.autocast():
            loss = nn.functional.mse_loss(ref(x), y)
        ref_losses.append(loss.item())
        prec.backward(loss)
        prec.unscale_(ref_opt)
        torch.nn.utils.clip_grad_norm_([q for g in ref_opt.param_groups for q in g["params"]], 0.5)
        prec.step(ref_opt)
        ref_opt.zero_grad()
    assert module.losses == ref_losses
    for a, b in zip(module.net.parameters(), ref.parameters()):
        assert torch.equal(a, b)


def test_planted_inf_skips_the_step_and_halves_the_scale():
    plugin = MixprecTrainerPrecision("16-master", scaler=mp.DynamicScaler(init_scale=2.0**12))
    module = Regressor(plant_inf_at=1)
    _trainer(plugin, 3).fit(module, _loader(n=6, repeat=3))  # the same batch at every step
    assert plugin.precision.steps == 3 and plugin.precision.skipped_steps == 1
    assert plugin.precision.scaler.scale == 2.0**11
    assert module.losses[1] == module.losses[2] != module.losses[0]  # step 1 changed no weight


def test_exact_resume_from_a_trainer_checkpoint(tmp_path):
    def plugin():
        scaler = mp.DynamicScaler(init_scale=2.0**8, growth_interval=2)
        return MixprecTrainerPrecision("16-master", scaler=scaler)

    full, full_plugin = Regressor(), plugin()
    _trainer(full_plugin, max_epochs=2).fit(full, _loader())  # 3 steps per epoch

    part = Regressor()
    trainer = _trainer(plugin(), max_epochs=1)
    trainer.fit(part, _loader())
    trainer.save_checkpoint(tmp_path / "part.ckpt")

    resumed, resumed_plugin = Regressor(), plugin()
    _trainer(resumed_plugin, max_epochs=2).fit(resumed, _loader(), ckpt_path=tmp_path / "part.ckpt")
    assert len(full.losses) == 6 and resumed.losses == full.losses[3:]  # bit-identical after the resume
    assert resumed_plugin.precision.steps == 6  # the scaler state came back with the checkpoint:
    assert resumed_plugin.precision.scaler.scale == full_plugin.precision.scaler.scale == 2.0**11
    assert all(torch.equal(a, b) for a, b in zip(full.net.parameters(), resumed.net.parameters()))
