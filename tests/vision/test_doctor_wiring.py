"""The trainer records the numerics doctor's findings in its run folder: skipped-step attribution
(``skipped_steps.jsonl``) and the NaN locator (``nan_locator.json``). The record keeps no hook on
the model between steps (its finiteness flags come from the trainer's own tensors), and the
locator's hooks are gone after its re-run."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from torch import nn
from vision_helpers import TINY_MODEL

import mixprec.vision.data as vdata
import mixprec.vision.trainer as trainer_mod
from mixprec.precision import Precision
from mixprec.scaler import DynamicScaler
from mixprec.vision.models import DetectionModel, load_model_yaml
from mixprec.vision.numerics_record import NumericsRecord
from mixprec.vision.trainer import train

# nbs=batch: one optimizer step per batch (shapes8, batch 4: 2 steps per epoch)
FAST = dict(model=TINY_MODEL, data="shapes8.yaml", imgsz=64, batch=4, nbs=4, workers=0,
            verbose=False, val=False, plots=False)


def _hooks(model: nn.Module) -> tuple[int, int]:
    """(all hooks on every module and parameter, those whose function lives in mixprec.diagnose)."""
    fns = []
    for m in model.modules():
        for d in (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, m._backward_pre_hooks):
            fns += list(d.values())
    for p in model.parameters():
        for d in (getattr(p, "_post_accumulate_grad_hooks", None), p._backward_hooks):
            fns += list((d or {}).values())
    glob = nn.modules.module
    for d in (glob._global_forward_hooks, glob._global_forward_pre_hooks,
              glob._global_backward_hooks, glob._global_backward_pre_hooks):
        fns += list(d.values())
    ours = [f for f in fns if str(getattr(f, "__module__", "")).startswith("mixprec.diagnose")]
    return len(fns), len(ours)


def _watch_hooks(seen: dict):
    def on_batch_end(st, batch):
        seen["model"] = st.model
        seen.setdefault("during", _hooks(st.model))
    return on_batch_end


def test_overflowing_first_step_is_attributed_in_the_run_folder(tmp_path, monkeypatch, capsys):
    """16-mixed with an initial loss scale of 2**40: the FP16 backward overflows, the step is
    skipped, and the run folder names the step, the cause and the scale."""

    def big_scale(policy, **kwargs):  # the run's Precision, built by the trainer from the policy
        assert str(policy) == "16-mixed"
        scaler = DynamicScaler(init_scale=2.0**40, max_scale=None)
        return Precision(policy, scaler=scaler, **kwargs)

    monkeypatch.setattr(trainer_mod, "Precision", big_scale)
    seen: dict = {}
    res = train(amp="16-mixed", epochs=1, datasets_dir=str(tmp_path / "datasets"),
                project=str(tmp_path / "runs"), callbacks={"on_batch_end": _watch_hooks(seen)},
                **FAST)
    lines = (res.save_dir / "skipped_steps.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    with open(res.save_dir / "results.csv") as f:
        skipped = int(float(next(csv.DictReader(f))["amp/skipped_steps"]))
    assert skipped >= 1 and len(recs) == skipped  # one record per skip the Precision counted
    first = recs[0]
    assert first["step"] == 0 and first["cause"] == "grad_overflow"
    assert first["scale"] == 2.0**40 and first["scale_after"] == 2.0**39
    assert isinstance(first["loss"], float) and first["inputs_finite"] and first["outputs_finite"]
    assert first["params"] and all(p["inf"] + p["nan"] > 0 for p in first["params"])
    # (the FP16 infs turn into NaN further down the backward: NaN under a scale > 1 is overflow)
    assert [r["step"] for r in recs] == sorted({r["step"] for r in recs})
    assert not (res.save_dir / "nan_locator.json").exists()  # the loss stayed finite
    assert f"{skipped} skipped step(s) attributed in" in capsys.readouterr().out
    # no hook of the doctor's during training (no per-step cost) nor after it
    assert seen["during"][1] == 0 and _hooks(seen["model"]) == seen["during"]


class _PlantNaN:
    """The trainer's train loader with one NaN pixel planted in its first batch."""

    def __init__(self, loader):
        self.loader, self.planted = loader, False

    def __len__(self):
        return len(self.loader)

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def __iter__(self):
        for batch in self.loader:
            if not self.planted:
                batch["images"] = batch["images"].float()  # the trainer divides by 255
                batch["images"][1, 0, 5, 5] = float("nan")
                self.planted = True
            yield batch


@pytest.mark.parametrize("nbs", [4, 8])  # 8: the NaN batch is the first of 2 accumulated
def test_nan_input_batch_writes_the_locator_finding(tmp_path, monkeypatch, capsys, nbs):
    real = vdata.build_dataloader

    def planting(data, split, *a, **k):
        loader = real(data, split, *a, **k)
        return _PlantNaN(loader) if split == "train" else loader

    monkeypatch.setattr(vdata, "build_dataloader", planting)  # the detection task's loaders
    seen: dict = {}
    res = train(amp=False, epochs=1, datasets_dir=str(tmp_path / "datasets"),
                project=str(tmp_path / "runs"), callbacks={"on_batch_end": _watch_hooks(seen)},
                **{**FAST, "nbs": nbs})
    d = res.save_dir
    loc = json.loads((d / "nan_locator.json").read_text())
    assert loc["epoch"] == 1 and loc["batch"] == 0 and loc["loss"] == "nan"
    first = loc["first"]
    assert first["phase"] == "forward" and first["module"] == "layers.0.conv"
    assert first["op"].startswith("aten.convolution") and first["index"] == 0
    assert first["from_finite_inputs"] is False and first["inputs"][0]["nan"] == 1
    assert loc["origin"] is None and "inputs already held inf/NaN" in loc["summary"]
    out = capsys.readouterr().out
    said = [x for x in out.splitlines() if "NaN locator written to" in x]
    assert len(said) == 1 and "epoch 1, batch 0" in said[0] and "layers.0.conv" in said[0]
    # FP32 with skip_nonfinite: the NaN step is skipped and attributed to the data (with nbs=8
    # the step comes one finite batch later: the flags of the NaN batch still reach it)
    recs = [json.loads(x) for x in (d / "skipped_steps.jsonl").read_text().splitlines()]
    assert [(r["step"], r["cause"], r["loss"]) for r in recs] == [(0, "data", "nan")]
    assert recs[0]["inputs_finite"] is False
    assert _hooks(seen["model"]) == (seen["during"][0], 0)  # the locator's hooks are gone too


def test_forward_overflow_is_located_at_the_module_that_created_it(tmp_path, capsys):
    """16-mixed, first conv weights of 3e4 (representable in FP16): its FP16 output overflows."""
    model = DetectionModel(load_model_yaml(TINY_MODEL), nc=6)  # shapes8 has 6 classes
    with torch.no_grad():
        model.layers[0].conv.weight.fill_(3e4)
    res = train(amp="16-mixed", epochs=1, datasets_dir=str(tmp_path / "datasets"),
                project=str(tmp_path / "runs"), weights=model, **FAST)
    loc = json.loads((res.save_dir / "nan_locator.json").read_text())
    origin = loc["origin"]
    assert origin["phase"] == "forward" and origin["module"] == "layers.0.conv"
    assert origin["op"].startswith("aten.convolution") and origin["from_finite_inputs"] is True
    assert origin["output"]["dtype"] == "float16" and origin["output"]["inf"] > 0
    assert "created in forward layers.0.conv / aten.convolution" in capsys.readouterr().out
    recs = [json.loads(x) for x in (res.save_dir / "skipped_steps.jsonl").read_text().splitlines()]
    assert recs[0]["step"] == 0 and recs[0]["cause"] == "forward"
    assert recs[0]["inputs_finite"] is True and recs[0]["outputs_finite"] is False


def test_a_failing_locator_is_written_down_and_leaves_no_hooks(tmp_path, capsys):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    prec = Precision("32")
    model, opt = prec.setup(model, opt)
    before = _hooks(model)
    rec = NumericsRecord(model, prec, opt, tmp_path)

    def broken_loss(out, targets):
        raise RuntimeError("loss exploded")

    x = torch.randn(2, 3)
    x[0, 0] = float("nan")
    assert rec.on_nonfinite_loss(torch.tensor(float("nan")), x, model(x), None, broken_loss,
                                epoch=3, batch=7) is None
    assert _hooks(model) == before
    loc = json.loads((tmp_path / "nan_locator.json").read_text())
    assert loc["epoch"] == 3 and loc["batch"] == 7 and "loss exploded" in loc["error"]
    assert "the NaN locator failed" in capsys.readouterr().out
    # the flags noted for the batch reach the step's record: the data held the NaN
    loss = model(x).sum()
    prec.backward(loss)
    stepped = prec.step(opt)
    r = rec.on_step(stepped, loss, x, model(x))
    assert not stepped and (r.cause, r.inputs_finite, r.outputs_finite) == ("data", False, False)


def test_record_resets_a_fresh_run_and_continues_a_resumed_one(tmp_path):
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    prec = Precision("32")
    model, opt = prec.setup(model, opt)
    old = [{"step": s, "cause": "loss", "explanation": "x", "loss": "nan", "inputs_finite": True,
            "outputs_finite": True, "scale": 1.0, "scale_after": 1.0, "params": [], "modules": []}
           for s in (0, 3, 5)]
    path = tmp_path / "skipped_steps.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in old))
    (tmp_path / "nan_locator.json").write_text("{}")

    NumericsRecord(model, prec, opt, tmp_path)  # a fresh run in a reused folder
    assert path.read_text() == "" and not (tmp_path / "nan_locator.json").exists()

    path.write_text("".join(json.dumps(r) + "\n" for r in old))
    prec.steps = 4  # resumed from a checkpoint taken after 4 steps: step 5 is re-run
    rec = NumericsRecord(model, prec, opt, tmp_path, resume=True)
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [0, 3]
    x = torch.randn(2, 3)
    out = model(x)
    loss = out.sum() * float("nan")  # finite inputs and outputs, NaN loss: the loss's fault
    prec.backward(loss)
    stepped = prec.step(opt)
    r = rec.on_step(stepped, loss, x, out)
    assert not stepped and r is not None and r.step == 4 and r.cause == "loss"
    assert (r.inputs_finite, r.outputs_finite) == (True, True)
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [0, 3, 4]
