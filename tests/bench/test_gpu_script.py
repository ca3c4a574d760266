"""benchmarks/gpu.sh --dry-run: the GPU check's steps run on CPU at tiny sizes and leave the
result files the GPU run will leave, with finite numbers for every precision. The fast test
benches one model and skips ``pytest -m cuda``; the ``slow`` one runs every step."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
PRECISIONS = ["32", "bf16-mixed", "16-mixed", "16-master"]


def _dry_run(out: Path, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--dry-run"], cwd=out.parent,
                          env=full, capture_output=True, text=True, timeout=600)


def _check(out: Path, models: list[str]) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    steps = summary["steps"]
    assert steps["gemm"]["status"] == "ok" and steps["models"]["status"] == "ok", steps
    gemm = json.loads((out / "gemm.json").read_text())
    assert [r["dtype"] for r in gemm["rows"]] == ["fp32", "tf32", "bf16", "fp16"]
    for r in gemm["rows"]:  # CPU: no datasheet peak
        assert math.isfinite(r["tflops"]) and r["tflops"] > 0 and r["peak_tflops"] is None
    for model in models:
        assert steps[f"bench-{model}"]["status"] == "ok", steps
        bench = json.loads((out / "bench" / model / "bench.json").read_text())
        assert bench["config"]["device"] == "cpu"
        assert [r["precision"] for r in bench["rows"]] == PRECISIONS
        for prec in PRECISIONS:
            row = summary["bench"][model][prec]
            assert row["status"] == "ok", (model, prec, row)
            assert math.isfinite(row["step_ms"]) and row["step_ms"] > 0
            assert math.isfinite(row["speedup"]) and row["speedup"] > 0
            # energy: a number, or n/a with the reason (no RAPL/NVML here)
            assert (row["joules_per_step"] is not None and math.isfinite(row["joules_per_step"])) \
                or row["energy_reason"]
        assert summary["bench"][model]["32"]["speedup"] == pytest.approx(1.0)
    md = (out / "summary.md").read_text()
    assert all(f"| {m} | {p} | ok |" in md for m in models for p in PRECISIONS)
    return summary


def test_dry_run_of_one_model(tmp_path):
    out = tmp_path / "gpu-results"
    proc = _dry_run(out, MODELS="det-n", CUDA_TESTS="0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = _check(out, ["det-n"])
    assert "pytest_cuda" not in summary
    assert "summary.md" in proc.stdout


def test_unknown_argument_is_one_line(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--fast"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "gpu.sh: unknown argument '--fast' (use --dry-run, or --help)"


@pytest.mark.slow
def test_full_dry_run(tmp_path):
    out = tmp_path / "gpu-results"
    proc = _dry_run(out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = _check(out, ["det-s", "det-n", "unet3d-n", "unet3d-s"])
    assert summary["steps"]["pytest-cuda"]["status"] == "ok"
    # no CUDA here: every cuda-marked test is collected and skipped
    assert "skipped" in summary["pytest_cuda"] and "failed" not in summary["pytest_cuda"]
