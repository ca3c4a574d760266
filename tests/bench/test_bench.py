"""bench() end to end on a tiny MLP: rows, identical data, FP32 parity with a hand-written loop,
failures, the JSON schema, and the plain-language notes."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from mixprec.bench import BenchResult, bench
from mixprec.bench.explain import slowdown_reason
from mixprec.bench.result import BenchRow, validate
from mixprec.bench.runner import _finish_rows, parse_bytes
from mixprec.policy import PRESETS


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


class Batches:
    """Counts calls, so the test can tell batches are drawn once and shared."""

    def __init__(self):
        self.calls = 0

    def __call__(self, b):
        self.calls += 1
        return torch.randn(b, 8), torch.randn(b, 4)


WARMUP, STEPS, REPEATS, BS = 2, 4, 2, 6


@pytest.fixture(scope="module")
def result():
    torch.manual_seed(0)
    batches = Batches()
    res = bench(mlp, batches, nn.functional.mse_loss, precisions=["bf16-mixed", "16-mixed"],
                batch_size=BS, steps=STEPS, warmup=WARMUP, repeats=REPEATS, device="cpu",
                budget="16K", max_batch=256)
    res.batch_calls = batches.calls
    return res


def test_rows_and_baseline(result):
    assert [r.precision for r in result] == ["32", "bf16-mixed", "16-mixed"]
    assert "added '32' as the baseline" in result.config["notes"][0]
    for row in result:
        assert row.status == "ok" and row.numerics == "real"
        assert row.step_time["steps_timed"] == STEPS
        assert len(row.step_time["per_repeat"]) == REPEATS
        assert row.step_time["min"] <= row.step_time["median"] <= row.step_time["max"]
        assert row.throughput == pytest.approx(BS / row.step_time["median"])
        assert len(row.convergence["losses"]) == WARMUP + STEPS
    assert result["32"].speedup == 1.0
    assert result["bf16-mixed"].speedup == pytest.approx(
        result["32"].step_time["median"] / result["bf16-mixed"].step_time["median"])


def test_batches_drawn_once_and_shared(result):
    # warm-up + timed steps once each (not once per precision); the largest-batch search
    # draws its own probe batches (1 + number of probes, per precision) on top
    searches = sum(len(r.largest_batch["probes"]) + 1 for r in result)
    assert result.batch_calls == WARMUP + STEPS + searches


def test_fp32_loss_curve_equals_a_plain_loop(result):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for i in range(WARMUP + STEPS):
        with torch.random.fork_rng():
            torch.manual_seed(0 + 1 + i)
            x, t = torch.randn(BS, 8), torch.randn(BS, 4)
        loss = nn.functional.mse_loss(model(x), t)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert result["32"].convergence["losses"] == losses  # bitwise on CPU
    conv = result["bf16-mixed"].convergence
    assert conv["final_ratio"] == pytest.approx(conv["final_loss"] / losses[-1])
    assert conv["final_ratio"] == pytest.approx(1.0, abs=0.05)  # BF16 has ~3 significant digits


def test_memory_ratios_and_largest_batch(result):
    m32, mb = result["32"].memory, result["bf16-mixed"].memory
    assert m32["total"] == sum(m32[k] for k in ("params", "buffers", "grads", "master",
                                                "optimizer_state", "activations", "casts", "batch"))
    # FP32 by hand: ReLU output 6x16x4 = 384 + output 6x4x4 = 96
    assert m32["activations"] == 384 + 96
    # bf16: x cast 6x8x2 = 96, ReLU output 6x16x2 = 192, FP32 output 96
    assert mb["activations"] == 96 + 192 + 96
    assert mb["activation_ratio"] == pytest.approx(384 / 480)
    assert m32["peak_rss"] > 0 and m32["cuda_peak"] is None
    lb = result["bf16-mixed"].largest_batch
    assert lb["budget_bytes"] == 16 * 1024
    assert lb["ratio"] == lb["batch"] / result["32"].largest_batch["batch"]
    assert lb["ratio"] > 1.0


def test_energy_is_na_with_a_reason_here(result):
    for row in result:
        e = row.energy
        assert (e["joules_per_step"] is None) == (e["reason"] is not None)


def test_json_round_trip_and_schema(result, tmp_path):
    path = tmp_path / "bench.json"
    result.save_json(path)
    data = json.loads(path.read_text())
    validate(data)
    assert data["schema"] == "mixprec.bench/1" and data["environment"]["torch"] == torch.__version__
    again = BenchResult.load(path)
    assert again.to_dict() == result.to_dict()


@pytest.mark.parametrize("breakage, message", [
    (lambda d: d.pop("rows"), "missing keys"),
    (lambda d: d["rows"][0].__setitem__("numerics", "fake"), "numerics"),
    (lambda d: d["rows"][0]["memory"].__setitem__("total", 1), "sum of its parts"),
    (lambda d: d["rows"][1].update(status="failed", error=None), "needs an error"),
    (lambda d: d["rows"][0]["energy"].update(joules_per_step=None, reason=None), "needs a reason"),
    (lambda d: d["rows"][0]["step_time"].__setitem__("median", "fast"), "step_time.median"),
    (lambda d: d.__setitem__("baseline", "64"), "baseline"),
])
def test_schema_rejects_broken_files(result, breakage, message):
    data = json.loads(result.to_json())
    breakage(data)
    with pytest.raises(ValueError, match=message):
        validate(data)


def test_nonfinite_losses_become_null(result):
    data = result.to_dict()
    row = BenchRow(**data["rows"][1])
    row.convergence = {**row.convergence, "losses": [1.0, float("nan")], "final_loss": float("inf")}
    res = BenchResult([BenchRow(**data["rows"][0]), row], result.environment, result.config,
                      result.created)
    out = json.loads(res.to_json())
    assert out["rows"][1]["convergence"]["losses"] == [1.0, None]
    assert out["rows"][1]["convergence"]["final_loss"] is None


def test_failed_precision_is_a_row_and_failed_baseline_raises():
    batches = Batches()
    res = bench(mlp, batches, nn.functional.mse_loss, precisions=["32", "fp8-mixed"],
                batch_size=2, steps=1, warmup=1, repeats=1, device="cpu")
    row = res["fp8-mixed"]
    assert row.status == "failed" and "emulation" in row.error
    validate(json.loads(res.to_json()))

    def broken_loss(out, t):
        raise RuntimeError("bad loss")

    with pytest.raises(RuntimeError, match="bad loss"):
        bench(mlp, batches, broken_loss, precisions=["32"], batch_size=2, steps=1, warmup=1,
              repeats=1, device="cpu")


@pytest.mark.parametrize("kwargs, message", [
    ({"steps": 2, "repeats": 3}, "repeats <= steps"),
    ({"warmup": 0}, "warmup must be >= 1"),
    ({"precisions": ["32", "fp32"]}, "listed twice"),
    ({"precisions": ["16-mixd"]}, "valid presets"),
    ({"budget": "lots"}, "memory size"),
    ({"batch_size": 0}, "batch_size"),
])
def test_bad_input_is_named(kwargs, message):
    args = {"precisions": ["32"], "steps": 2, "warmup": 1, "repeats": 1, "device": "cpu", **kwargs}
    with pytest.raises(ValueError, match=message):
        bench(mlp, Batches(), nn.functional.mse_loss, **args)


def test_parse_bytes():
    assert parse_bytes("2G") == 2 * 2**30 and parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("1000") == 1000 and parse_bytes("0.6") == 0.6


def test_slower_than_fp32_is_said_plainly_with_the_reason():
    cpu = {"device": "cpu", "cpu_flags": ["avx2"], "bf16": False, "fp16": False}
    rows = {n: BenchRow(precision=n, numerics="real") for n in ("32", "bf16-mixed")}
    for r in rows.values():
        r.memory = {"total": 100, "activations": 50}
        r.convergence = {"final_loss": 1.0, "tail_mean": 1.0, "skipped_steps": 0}
    _finish_rows(rows, {"32": PRESETS["32"], "bf16-mixed": PRESETS["bf16-mixed"]}, cpu,
                 "no counter", None, {"32": 0.0, "bf16-mixed": 0.0},
                 {"32": [1.0, 1.0], "bf16-mixed": [4.0, 4.0]}, {"32": 2, "bf16-mixed": 2}, 8,
                 False)
    assert rows["bf16-mixed"].speedup == 0.25
    assert "slower than FP32 (0.25x): no native BF16 on this CPU" in rows["bf16-mixed"].notes[0]
    assert rows["32"].energy["reason"] == "no counter"
    gpu = {"device": "cuda:0", "name": "Tesla V100", "compute_capability": "7.0",
           "bf16_tensor_cores": False, "tensor_cores_fp16": True}
    assert "no BF16 tensor cores" in slowdown_reason(PRESETS["bf16-mixed"], gpu, False)
    assert "latency- or memory-bound" in slowdown_reason(PRESETS["16-mixed"], gpu, False)
    assert "emulator" in slowdown_reason(PRESETS["16-mixed"], cpu, True)


class CountingMeter:
    """A fake energy counter that advances 0.5 J per sample."""

    source = "fake counter"

    def __init__(self):
        self.value = 0.0

    def sample(self):
        self.value += 0.5
        return self.value

    @staticmethod
    def joules(a, b):
        return b - a


def test_energy_per_step_bookkeeping(monkeypatch):
    import mixprec.bench.runner as runner

    monkeypatch.setattr(runner, "open_energy_meter", lambda dev: (CountingMeter(), None))
    res = bench(mlp, Batches(), nn.functional.mse_loss, precisions=["32"], batch_size=2,
                steps=4, warmup=1, repeats=2, device="cpu")
    # two rounds of 2 steps; each round reads the counter twice (0.5 J apart): 1 J over 4 steps
    assert res["32"].energy == {"joules_per_step": 0.25, "source": "fake counter", "reason": None}


def test_emulated_rows_are_marked_and_explained():
    res = bench(mlp, Batches(), nn.functional.mse_loss, precisions=["32", "bf16-mixed"],
                batch_size=4, steps=1, warmup=1, repeats=1, device="cpu", emulate=True)
    assert res["32"].numerics == "real" and res["bf16-mixed"].numerics == "emulated"
    assert any("emulated: tensors are stored in FP32" in n for n in res["bf16-mixed"].notes)
    assert res["bf16-mixed"].convergence["final_ratio"] == pytest.approx(1.0, abs=0.05)
