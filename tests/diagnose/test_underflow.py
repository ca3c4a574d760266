"""Gradients of about 1e-9: nearly all flush to zero in FP16 unscaled, none at the recommended
scale; the prediction is checked against real FP16 runs at both scales."""

import math

import pytest
import torch

import mixprec as mp


def tiny_loss(out, y):
    return (out.float() * y).sum() * 1e-9      # dL/d(out) = 1e-9 * y: gradients ~ 1e-9


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 8, generator=g), torch.rand(4, 4, generator=g) + 0.5)]


def test_underflow_share_unscaled_and_at_recommended_scale(small, data):
    r = mp.diagnose(small, data, tiny_loss, precision="32", fmt="fp16", steps=2, lr=0.0)
    ag = r.totals["act_grad"]
    assert 5e-10 < ag.max_abs_unscaled < 1e-8
    assert r.act_grad_underflow_share > 0.99                    # about 1 without scaling
    rec = r.recommendations["init_scale"]
    assert rec["act_grad_underflow_share_unscaled"] > 0.99
    assert rec["act_grad_underflow_share_at_scale"] < 1e-3      # about 0 at the recommendation
    assert rec["headroom_bits_at_scale"] >= rec["margin_bits"]
    assert 2**8 <= rec["value"] <= 2**24 and not rec["conflict"]
    d = r.to_dict()["totals"]["act_grad"]
    assert d["unscaled"]["underflow_share"] == pytest.approx(r.act_grad_underflow_share)


@pytest.mark.parametrize("emulate", [False, True])
@pytest.mark.parametrize("which", ["none", "recommended"])
def test_prediction_matches_real_fp16(small, data, which, emulate):
    """Real FP16 (autocast) run with a static scale: the share of activation gradients that are
    exactly zero is what the what-if run predicted (underflowed values are zeros in real FP16).
    Emulated FP16 (FP32 storage, values rounded to FP16) must show the same."""
    what_if = mp.diagnose(small, data, tiny_loss, precision="32", fmt="fp16", steps=1, lr=0.0)
    rec = what_if.recommendations["init_scale"]
    scale = 1.0 if which == "none" else rec["value"]
    predicted = (rec["act_grad_underflow_share_unscaled"] if which == "none"
                 else rec["act_grad_underflow_share_at_scale"])
    prec = mp.Precision("16-mixed", scaler=mp.StaticScaler(scale), device="cpu", emulate=emulate)
    real = mp.diagnose(small, data, tiny_loss, precision=prec, steps=1, lr=0.0)
    ag = real.totals["act_grad"]
    assert ag.share("zeros") == pytest.approx(predicted, abs=0.02)
    assert math.isclose(real.scales[0], scale)
