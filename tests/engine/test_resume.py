"""Exact resume for every preset, and state_dict round trips (claims 5 and 7)."""

import subprocess
import sys

import pytest
import torch
from torch import nn

import mixprec as mp
from mixprec.io import load_checkpoint, save_checkpoint

CASES = [("32", {}), ("16-mixed", {}), ("bf16-mixed", {}), ("16-master", {}), ("bf16-master", {}),
         ("16-true", {}), ("bf16-true", {}), ("bf16-master", {"stochastic_rounding": True}),
         ("bf16-true", {"stochastic_rounding": True})]


def _build(precision, kwargs):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.SiLU(), nn.Linear(16, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scaler = mp.DynamicScaler(init_scale=2.0**10, growth_interval=2) \
        if mp.Policy.parse(precision).default_scaler == "dynamic" else None
    prec = mp.Precision(precision, device="cpu", scaler=scaler, **kwargs)
    model, opt = prec.setup(model, opt)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    return model, opt, sched, prec


def _run(model, opt, sched, prec, steps):
    for _ in range(steps):
        g = torch.Generator().manual_seed(100 + prec.steps)  # the data depends on the step only
        x, y = torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g)
        with prec.autocast():
            loss = nn.functional.mse_loss(model(x), y) * (1e6 if prec.steps == 6 else 1.0)
        prec.backward(loss)
        prec.step(opt, max_norm=5.0, scheduler=sched)
        opt.zero_grad(set_to_none=True)


def _state(model, opt, sched, prec):
    return {"model": model.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "precision": prec.state_dict()}


@pytest.mark.filterwarnings("ignore:.*pure half")
@pytest.mark.parametrize(("precision", "kwargs"), CASES, ids=[f"{p}{'-sr' if k else ''}" for p, k in CASES])
def test_resume_is_bit_exact(precision, kwargs, tmp_path):
    straight = _build(precision, kwargs)
    _run(*straight, 10)

    first = _build(precision, kwargs)
    _run(*first, 5)
    save_checkpoint(_state(*first), tmp_path / "last.pt")
    del first
    resumed = _build(precision, kwargs)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    model, opt, sched, prec = resumed
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])
    prec.load_state_dict(ckpt["precision"])
    _run(*resumed, 5)

    for (name, a), b in zip(straight[0].state_dict().items(), resumed[0].state_dict().values()):
        assert a.dtype == b.dtype, name
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=name)  # bit-exact
    assert straight[3].state_dict() == resumed[3].state_dict()
    assert straight[3].steps == 10


def test_precision_state_round_trips_every_field():
    model, opt, sched, prec = _build("16-master", {})
    _run(model, opt, sched, prec, 7)  # includes the overflowing step 6
    state = prec.state_dict()
    assert state["skipped_steps"] >= 1
    fresh = _build("16-master", {})[3]
    fresh.load_state_dict(state)
    assert fresh.state_dict() == state


def test_master_weights_state_round_trips_every_field():
    model, opt, sched, prec = _build("bf16-master", {"stochastic_rounding": True})
    _run(model, opt, sched, prec, 3)
    state = opt.state_dict()
    other = _build("bf16-master", {"stochastic_rounding": True})[1]
    other.load_state_dict(state)
    again = other.state_dict()
    assert again.keys() == state.keys() == {"optimizer", "masters", "generator"}
    assert all(torch.equal(a, b) for a, b in zip(state["masters"], again["masters"]))
    assert torch.equal(state["generator"], again["generator"])
    assert repr(state["optimizer"]) == repr(again["optimizer"])


def test_resuming_with_another_policy_is_refused():
    prec = mp.Precision("16-mixed", device="cpu")
    with pytest.raises(ValueError, match="build Precision\\('bf16-mixed'\\)"):
        prec.load_state_dict(mp.Precision("bf16-mixed", device="cpu").state_dict())


def test_import_touches_no_cuda_and_no_environment():
    code = """
import os, torch
reads = []
class Spy(type(os.environ)):
    def __getitem__(self, key):
        reads.append(key); return super().__getitem__(key)
    def get(self, key, default=None):
        reads.append(key); return super().get(key, default)
    def __contains__(self, key):
        reads.append(key); return super().__contains__(key)
spy = Spy(os.environ._data, os.environ.encodekey, os.environ.decodekey,
          os.environ.encodevalue, os.environ.decodevalue)
os.environ = spy
def no_cuda(*a, **k):
    raise RuntimeError("CUDA initialised at import")
torch.cuda._lazy_init = no_cuda
import mixprec
from mixprec import scaler, master, precision, hardware, check, cli
assert not torch.cuda.is_initialized()
assert reads == [], reads
print("clean")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "clean"
