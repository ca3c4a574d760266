"""examples/train_timm.py on tiny timm models with random weights (nothing downloads)."""

import importlib.util
from pathlib import Path

import pytest
import torch

import mixprec as mp

timm = pytest.importorskip("timm")

_spec = importlib.util.spec_from_file_location(
    "train_timm", Path(__file__).resolve().parents[2] / "examples" / "train_timm.py")
train_timm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_timm)


# FP16 convolutions are slow on CPU: the convnet runs BF16, the ViT FP16 (with loss scaling)
@pytest.mark.parametrize(("model_name", "precision"), [("test_resnet", "bf16-master"),
                                                       ("test_vit", "16-master")])
def test_timm_model_trains_with_fp32_masters_and_tracks_fp32(model_name, precision):
    kw = dict(steps=25, batch=8, size=32, lr=3e-3)
    ref = train_timm.train(model_name, "32", **kw)
    out = train_timm.train(model_name, precision, **kw)
    half = mp.Policy.parse(precision).param_dtype
    model, opt = out["model"], out["optimizer"]
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linear and all(m.weight.dtype == half for m in linear)  # half module
    assert all(m.dtype == torch.float32 for m in opt.masters)              # FP32 masters
    assert all(torch.equal(m.to(half), q) for m, q in zip(opt.masters, opt.model_params))
    assert out["steps"] == 25 and out["skipped"] <= 1  # at most the usual first-step overflow
    # same initial weights and data: the first loss agrees with FP32 to half compute accuracy
    assert abs(out["losses"][0] - ref["losses"][0]) < 2e-2 * ref["losses"][0]
    late, ref_late = sum(out["losses"][-5:]) / 5, sum(ref["losses"][-5:]) / 5
    assert late < 0.5 * out["losses"][0] and ref_late < 0.5 * ref["losses"][0]  # both learn the task


def test_planted_inf_in_a_timm_model_skips_and_halves_the_scale():
    out = train_timm.train("test_vit", "16-master", steps=2, batch=4, size=32)
    model, opt, prec = out["model"], out["optimizer"], out["precision"]
    before = [m.detach().clone() for m in opt.masters]
    scale, skipped = prec.scaler.scale, prec.skipped_steps
    x, y = next(train_timm.batches(1, 4, 32, seed=5))
    handle = model.register_forward_hook(lambda _m, _i, o: o * float("inf"))
    with prec.autocast():
        loss = torch.nn.functional.cross_entropy(model(x), y)
    handle.remove()
    prec.backward(loss)
    assert not prec.step(opt) and prec.scaler.scale == scale / 2
    assert prec.skipped_steps == skipped + 1
    assert all(torch.equal(a, b) for a, b in zip(before, opt.masters))
