"""The batch-size search: the pure search against a known threshold, and the accounted
measurement against the hand-computed bytes of a tiny MLP."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mixprec.bench.autobatch import BatchDoesNotFitError, largest_batch, search_largest


@settings(max_examples=200, deadline=None)
@given(limit=st.integers(1, 5000), max_batch=st.integers(1, 5000))
def test_search_finds_the_threshold_in_few_probes(limit, max_batch):
    calls = []

    def fits(b):
        calls.append(b)
        return b <= limit

    assert search_largest(fits, max_batch=max_batch) == min(limit, max_batch)
    assert all(1 <= b <= max_batch for b in calls)
    assert len(calls) <= 2 * math.ceil(math.log2(max_batch)) + 2


def test_search_raises_when_the_first_batch_does_not_fit():
    with pytest.raises(BatchDoesNotFitError, match="batch 1 does not fit"):
        search_largest(lambda b: False)
    with pytest.raises(ValueError, match="start <= max_batch"):
        search_largest(lambda b: True, start=4, max_batch=2)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def batch_fn(b):
    return torch.randn(b, 3) * 1e-3, torch.randn(b, 2) * 1e-3


# FP32 + AdamW, by hand (see test_memory): params 104 + grads 104 + AdamW state 224 = 432 static;
# per sample: ReLU output 16 + output 8 (saved) + batch x 12 + t 8 = 44 bytes.
STATIC, PER_SAMPLE = 432, 44


@pytest.mark.parametrize("batch", [1, 37, 100])
def test_largest_batch_accounted_is_exact(batch):
    budget = STATIC + PER_SAMPLE * batch
    found = largest_batch(mlp(), batch_fn, nn.functional.mse_loss, precision="32", device="cpu",
                          budget_bytes=budget)
    assert found.batch == batch
    assert found.bytes_at(batch) == budget
    assert found.measure == "accounted" and found.budget_source == "given"
    assert f"batch {batch} for 32 on cpu" in found.reason and "(given)" in found.reason
    if batch > 1:  # one byte less: one sample less (a function returning the model works too)
        found = largest_batch(mlp, batch_fn, nn.functional.mse_loss, precision="32",
                              device="cpu", budget_bytes=budget - 1)
        assert found.batch == batch - 1


def test_largest_batch_half_activations_fit_more():
    budget = 32 * 1024
    b32 = largest_batch(mlp(), batch_fn, nn.functional.mse_loss, precision="32", device="cpu",
                        budget_bytes=budget).batch
    b16 = largest_batch(mlp(), batch_fn, nn.functional.mse_loss, precision="bf16-mixed",
                        device="cpu", budget_bytes=budget).batch
    # bf16-mixed: per sample 6 (x cast) + 8 (ReLU out) + 8 (FP32 output) + 20 (batch) = 42 B,
    # plus a 16 B weight cast in the static part
    assert b32 == (budget - STATIC) // PER_SAMPLE
    assert b16 == (budget - STATIC - 16) // 42


def test_largest_batch_does_not_modify_the_model_and_caps():
    model = mlp()
    before = [p.detach().clone() for p in model.parameters()]
    found = largest_batch(model, batch_fn, nn.functional.mse_loss, device="cpu",
                          budget_bytes=10**9, max_batch=8)
    assert found.batch == 8 and found.capped and "capped" in found.reason
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_largest_batch_errors_are_clear():
    with pytest.raises(BatchDoesNotFitError, match="batch 1 under 32 on cpu needs"):
        largest_batch(mlp(), batch_fn, nn.functional.mse_loss, device="cpu", budget_bytes=100)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        largest_batch(mlp(), batch_fn, nn.functional.mse_loss, device="cpu", measure="allocator",
                      budget_bytes=10**6)
    with pytest.raises(ValueError, match="fraction must be in"):
        largest_batch(mlp(), batch_fn, nn.functional.mse_loss, device="cpu", fraction=1.5)


def test_largest_batch_cpu_fraction_uses_available_ram():
    found = largest_batch(mlp(), batch_fn, nn.functional.mse_loss, device="cpu", fraction=0.01,
                          max_batch=4)
    assert "available RAM" in found.budget_source and found.batch == 4


@pytest.mark.cuda
def test_largest_batch_cuda_allocator():
    found = largest_batch(mlp(), batch_fn, nn.functional.mse_loss, device="cuda",
                          precision="16-mixed", fraction=0.001, max_batch=1 << 20)
    assert found.measure == "allocator" and found.batch >= 1
    assert found.bytes_at(found.batch) <= found.budget_bytes


def test_linear_measure_matches_the_exact_search():
    for precision in ("32", "bf16-mixed"):
        kwargs = {"precision": precision, "device": "cpu", "budget_bytes": 20_000}
        exact = largest_batch(mlp(), batch_fn, nn.functional.mse_loss, **kwargs)
        linear = largest_batch(mlp(), batch_fn, nn.functional.mse_loss, measure="linear", **kwargs)
        assert linear.batch == exact.batch and linear.measure == "linear"
        assert linear.bytes_at(linear.batch) == exact.bytes_at(exact.batch)
