"""Memory accounting against byte counts computed by hand for a tiny MLP.

Model: Linear(3, 4) -> ReLU -> Linear(4, 2); batch of 5; MSE loss; AdamW.
Parameters: 3*4 + 4 + 4*2 + 2 = 26 values. Every expected figure below is derived in its comment.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from mixprec.bench.memory import (
    SavedTensorMeter,
    peak_rss_bytes,
    reset_peak_rss,
    state_bytes,
    tensor_bytes,
)
from mixprec.bench.step import build_state, train_step

N_PARAMS = 26
B = 5


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def run_one_step(precision: str, optimizer_fn=None, model_fn=mlp, must_apply=True):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # *-true warns that it has no master copy
        state = build_state(model_fn, precision, torch.device("cpu"), optimizer_fn=optimizer_fn)
    x, t = torch.randn(B, 3), torch.randn(B, 2)
    # a small learning signal, so no FP16 overflow under the 2**16 loss scale (step applied)
    x, t = x * 1e-3, t * 1e-3
    meter = SavedTensorMeter(state.model, exclude=[x, t])
    _, applied = train_step(state, x, t, nn.functional.mse_loss, meter=meter)
    assert applied or not must_apply
    return state_bytes(state.model, state.optimizer), meter


def test_fp32_adamw_breakdown_matches_hand_count():
    sb, meter = run_one_step("32")
    assert sb.params == N_PARAMS * 4 == 104
    assert sb.grads == 104
    assert sb.master == 0 and sb.buffers == 0
    # AdamW: exp_avg + exp_avg_sq (FP32, 2 x 104) + one FP32 scalar `step` per parameter tensor (4 x 4)
    assert sb.optimizer_state == 2 * 104 + 4 * 4 == 224
    # Saved for backward: Linear1 saves x (the batch, excluded); ReLU saves its output (5x4 FP32 = 80);
    # Linear2 saves that same output (counted once) and W2^T (a parameter view, excluded);
    # MSE saves its input y (5x2 FP32 = 40) and the target (batch, excluded).
    assert meter.activation_bytes == 80 + 40
    assert meter.cast_bytes == 0


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_mixed_autocast_breakdown_matches_hand_count(precision):
    sb, meter = run_one_step(precision)
    assert (sb.params, sb.grads, sb.master, sb.optimizer_state) == (104, 104, 0, 224)
    # Autocast: x cast to half for Linear1 (5x3x2 = 30); ReLU output half (5x4x2 = 40);
    # MSE runs in FP32 on the FP32 output (5x2x4 = 40). Linear2's half copy of W2 (4x2x2 = 16)
    # is a weight cast, reported apart from activations.
    assert meter.activation_bytes == 30 + 40 + 40
    assert meter.cast_bytes == 16


@pytest.mark.parametrize("precision", ["16-master", "bf16-master"])
def test_master_breakdown_matches_hand_count(precision):
    sb, meter = run_one_step(precision)
    assert sb.params == N_PARAMS * 2 == 52          # half parameters (no norm layers here)
    assert sb.master == N_PARAMS * 4 == 104         # FP32 master copy in the optimizer
    assert sb.grads == 104                          # FP32 master gradients; half grads are freed
    assert sb.optimizer_state == 224                # AdamW state lives on the FP32 masters
    # input cast to half by setup's hook (30), ReLU output half (40), output cast to FP32 (40);
    # Linear2 saves its half weight itself (a parameter: excluded), so no casts.
    assert meter.activation_bytes == 30 + 40 + 40
    assert meter.cast_bytes == 0


def test_sgd_momentum_state_and_plain_sgd():
    sb, _ = run_one_step("32", optimizer_fn=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9))
    assert sb.optimizer_state == 104  # one FP32 momentum buffer per parameter
    sb, _ = run_one_step("32", optimizer_fn=lambda p: torch.optim.SGD(p, lr=0.1))
    assert sb.optimizer_state == 0


def test_buffers_counted_and_norm_layers_stay_fp32_under_master():
    def with_bn() -> nn.Module:
        return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))

    sb, _ = run_one_step("32", model_fn=with_bn)
    # running_mean + running_var (4 FP32 each = 32) + num_batches_tracked (int64, 8)
    assert sb.buffers == 32 + 8
    assert sb.params == (12 + 4 + 4 + 4 + 8 + 2) * 4
    sb, _ = run_one_step("16-master", model_fn=with_bn, must_apply=False)
    # BN weight and bias stay FP32 (8 values x 4 B); the 26 linear values are half
    assert sb.params == 26 * 2 + 8 * 4
    assert sb.buffers == 40


def test_shared_storage_counts_once():
    w = torch.zeros(10, 10)
    assert tensor_bytes([w, w.t(), w[2:5], w.view(-1)]) == 400
    shared = nn.Linear(4, 4, bias=False)
    model = nn.Sequential(shared, nn.ReLU(), shared)  # tied weights
    assert state_bytes(model).params == 16 * 4


def test_meter_sees_nothing_under_no_grad_and_restores_hooks():
    model = mlp()
    meter = SavedTensorMeter(model)
    with torch.no_grad(), meter:
        model(torch.randn(2, 3))
    assert meter.activation_bytes == 0 and meter.saved_tensors == 0
    with meter:
        y = model(torch.randn(2, 3, requires_grad=True))
    assert meter.activation_bytes > 0
    before = meter.activation_bytes
    model(torch.randn(2, 3)).sum().backward()  # outside the context: not counted
    assert meter.activation_bytes == before
    y.sum().backward()


def test_peak_rss_reset_and_read():
    reason = reset_peak_rss()
    peak = peak_rss_bytes()
    assert peak is not None and peak > 0
    if reason is None:  # Linux: the mark follows a new allocation
        x = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        x += 1
        assert peak_rss_bytes() >= peak + 32 * 2**20
        del x
    else:
        assert "cannot reset" in reason
