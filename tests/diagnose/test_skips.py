"""Skipped-step attribution, checked against torch.amp.GradScaler's own skip decisions."""

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

import mixprec as mp
from mixprec.diagnose import SkipRecorder


def _batches():
    g = torch.Generator().manual_seed(0)
    out = [(torch.randn(8, 8, generator=g), torch.randn(8, 4, generator=g)) for _ in range(3)]
    bad_y = out[1][1].clone()
    bad_y[3, 2] = math.nan                                  # one NaN label
    out[1] = (out[1][0], bad_y)
    return out


def _gradscaler_reference(net, batches, steps, init_scale):
    """The same loop with torch.amp.GradScaler: (stepped, scale after update) per step."""
    net = copy.deepcopy(net)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    stepped, scales = [], []
    for i in range(steps):
        x, y = batches[i % len(batches)]
        with torch.autocast("cpu", dtype=torch.float16):
            loss = F.mse_loss(net(x), y)
        scaler.scale(loss).backward()
        before = scaler.get_scale()
        scaler.step(opt)
        scaler.update()
        stepped.append(scaler.get_scale() >= before)        # a skip backs the scale off
        scales.append(scaler.get_scale())
        opt.zero_grad(set_to_none=True)
    return stepped, scales


def test_skips_match_gradscaler_and_are_attributed(small):
    batches = _batches()
    init = 2.0**24                      # high enough that the first steps overflow in backward
    steps = 10
    prec = mp.Precision("16-mixed", scaler=mp.DynamicScaler(init_scale=init), device="cpu")
    r = mp.diagnose(small, batches, F.mse_loss, precision=prec, steps=steps, lr=1e-3)
    ref_stepped, ref_scales = _gradscaler_reference(small, batches, steps, init)
    assert r.stepped == ref_stepped
    assert r.scales == ref_scales
    causes = {s.step: s for s in r.skips}
    assert set(causes) == {i for i, ok in enumerate(ref_stepped) if not ok}
    # The NaN label: the loss is NaN, inputs and outputs finite -> loss/data, not overflow.
    nan_steps = [i for i in range(steps) if i % 3 == 1 and not ref_stepped[i]]
    assert nan_steps
    for i in nan_steps:
        s = causes[i]
        assert s.cause == "loss" and s.loss == "nan"
        assert s.inputs_finite is True and s.outputs_finite is True
    # The other skips: finite loss, gradients overflowed at the scale in use.
    for i, s in causes.items():
        if i % 3 != 1:
            assert s.cause == "grad_overflow" and isinstance(s.loss, float)
            assert s.params and all(p["inf"] > 0 or p["nan"] > 0 for p in s.params)
            assert s.scale * 65504 > 0 and s.scale_after == s.scale / 2
    assert r.skips[0].scale == init
    # The locator ran at the first skip (an overflow in backward).
    assert r.nan_locator is not None and r.nan_locator.first.phase == "backward"


def test_nan_label_locator_points_at_the_loss(small):
    batches = _batches()
    r = mp.diagnose(small, batches[1:2], F.mse_loss, precision="16-mixed", steps=1)
    (s,) = r.skips
    assert s.cause == "loss"
    loc = r.nan_locator
    assert loc.first.phase == "forward" and loc.first.module.startswith("(outside modules")
    assert loc.origin is None                          # nothing *created* the NaN: the label had it
    assert any(inp.get("nan") for inp in loc.first.inputs)
    assert "loss" in r.health["causes"]


def test_bad_input_batch_is_data():
    net = torch.nn.Linear(4, 2)
    x = torch.randn(3, 4)
    x[0, 0] = math.nan
    r = mp.diagnose(net, [(x, torch.randn(3, 2))], F.mse_loss, precision="16-mixed", steps=1)
    assert r.skips[0].cause == "data" and r.skips[0].inputs_finite is False


def test_recorder_standalone_writes_jsonl(tmp_path, small):
    prec = mp.Precision("16-mixed", device="cpu")
    opt = torch.optim.SGD(small.parameters(), lr=0.0)
    model, opt = prec.setup(small, opt)
    path = tmp_path / "run" / "skipped_steps.jsonl"
    x, y = _batches()[1]
    hooks_before = dict(model._forward_hooks)
    with SkipRecorder(model, path=path, precision=prec) as rec:
        for _ in range(2):
            with prec.autocast():
                loss = F.mse_loss(model(x), y)
            prec.backward(loss)
            stepped = prec.step(opt)
            rec.on_step(prec, model, stepped, loss=loss)
            opt.zero_grad(set_to_none=True)
    assert rec.hook_count == 0 and dict(model._forward_hooks) == hooks_before
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [d["step"] for d in lines] == [0, 1]
    assert lines[0]["cause"] == "loss" and lines[0]["scale"] == 2.0**16
    assert lines[1]["scale"] == 2.0**15


def test_on_step_without_hooks_still_classifies(small):
    rec = SkipRecorder()
    small(torch.randn(2, 8)).sum().backward()
    small.fc1.weight.grad[0, 0] = math.inf
    r = rec.on_step(None, small, False, loss=torch.tensor(1.0))
    assert r.cause == "grad_overflow" and r.modules == ["fc1"] and r.scale is None
    assert rec.on_step(None, small, True) is None


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nonfinite_loss_without_hooks(small, bad):
    r = SkipRecorder().on_step(None, small, False, loss=torch.tensor(bad))
    assert r.cause == "loss" and "attach" in r.explanation


def test_master_weights_skip_names_the_parameters(small):
    """16-master moves half gradients to FP32 masters during backward: the attribution must
    read them there."""
    prec = mp.Precision("16-master", scaler=mp.DynamicScaler(init_scale=2.0**24), device="cpu")
    batches = _batches()[:1]
    r = mp.diagnose(small, batches, F.mse_loss, precision=prec, steps=1)
    (s,) = r.skips
    assert s.cause == "grad_overflow" and s.params
    assert {p["module"] for p in s.params} <= {"fc1", "fc2"}
    assert r.module("fc2").weight_grad.counts["inf"] > 0        # seen before the move
