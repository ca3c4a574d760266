"""BenchConfig: the frozen, validated knobs of one bench run."""

import dataclasses

import pytest
import torch

from mixprec.bench.runner import BenchConfig


def test_bench_config_is_frozen_and_repeats_bad_values():
    cfg = BenchConfig(precisions=("32", "bf16-mixed"), steps=4, repeats=2, budget="2G")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.steps = 5  # type: ignore[misc]
    record = cfg.record(torch.device("cpu"), ["note"])
    assert record["steps"] == 4 and record["budget"] == "2G" and record["notes"] == ["note"]
    assert record["optimizer"] == "AdamW(lr=1e-3)" and record["device"] == "cpu"
    with pytest.raises(ValueError, match="steps=2, repeats=3"):
        BenchConfig(steps=2, repeats=3)
    with pytest.raises(ValueError, match="warmup must be >= 1.*got 0"):
        BenchConfig(warmup=0)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        BenchConfig(batch_size=0)
