"""benchmarks/profile_precision.py at a tiny size: every variant (precision x eager/compiled x
layout) is built by the trainer's ``build`` and profiled, the compiled variant's steps run
through the compiled graph, the forced layouts reach the model, and the JSON/table hold finite
numbers for every phase. No timing conclusions (the figures of a tiny run on a shared machine
mean nothing)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

ROOT = Path(__file__).parents[2]
TINY_DET = str(ROOT / "tests" / "vision" / "det-t.yaml")


def test_variants_cover_precisions_compile_and_layouts(benchmark_script):
    mod = benchmark_script("profile_precision")
    labels = [v.label for v in mod.variants(["32", "bf16-mixed"], True, "both")]
    assert labels == ["32+cl-on", "bf16-mixed+cl-on", "32+cl-off", "bf16-mixed+cl-off",
                      "32+compile+cl-on", "bf16-mixed+compile+cl-on", "32+compile+cl-off",
                      "bf16-mixed+compile+cl-off"]
    assert [v.label for v in mod.variants(["32"], False, "task")] == ["32"]
    assert mod.op_class("cpp_fused_add_mul_silu_0") == "fused (inductor)"
    assert mod.op_class("## Call CompiledFxGraph f4kx ##") == "fused (inductor)"
    assert mod.op_class("aten::mkldnn_convolution") == "conv/gemm"


def test_tiny_detection_profile_eager_and_compiled(benchmark_script, tmp_path, counting_compile, monkeypatch,
                                                   capsys):
    mod = benchmark_script("profile_precision")
    torch.set_num_threads(1)
    seen_layouts = []
    build_run = mod.build_run

    def spy(args, variant, project):
        run = build_run(args, variant, project)
        seen_layouts.append((variant.label, run["st"].model.layers[0].conv.weight.is_contiguous(
            memory_format=torch.channels_last)))
        return run

    monkeypatch.setattr(mod, "build_run", spy)
    out = tmp_path / "p.json"
    mod.main(["--model", TINY_DET, "--data", "shapes8.yaml", "--datasets-dir", str(tmp_path / "ds"),
              "--imgsz", "64", "--batch", "4", "--steps", "2", "--warmup", "1", "--profile-steps", "1",
              "--precisions", "32", "--compile", "--channels-last", "both", "--json", str(out)])
    rec = json.loads(out.read_text())
    names = ["32+cl-on", "32+cl-off", "32+compile+cl-on", "32+compile+cl-off"]
    assert rec["variants"] == names
    assert dict(seen_layouts) == {"32+cl-on": True, "32+cl-off": False, "32+compile+cl-on": True,
                                  "32+compile+cl-off": False}
    for n in names:
        assert set(rec["phases_ms"][n]) == set(mod.PHASES)
        assert all(math.isfinite(v) and v >= 0 for v in rec["phases_ms"][n].values())
        assert rec["step_ms"][n]["median"] > 0 and rec["op_class_ms"][n].get("conv/gemm", 0) > 0
    # two compiled variants (one forward graph each): warm-up + 1 + 2 + 1 steps per graph
    assert len(counting_compile.graphs) == 2 and counting_compile.calls == 2 * (1 + 1 + 2 + 1)
    table = capsys.readouterr().out
    assert "| **whole step** |" in table and "| op class (self CPU time, torch.profiler) |" in table
    assert rec["table"] in table


def test_a_dtype_conversion_is_booked_as_a_cast_not_a_layout_copy(benchmark_script):
    # a conversion's work happens in aten::copy_ (under aten::_to_copy): the table must call it
    # a cast; a contiguous() copy and a .to(memory_format=...) (also an aten::_to_copy) stay
    # layout copies
    mod = benchmark_script("profile_precision")
    x = torch.randn(64, 8, 16, 16)

    def fake_step(_run):
        x.to(torch.bfloat16)
        x.transpose(0, 1).contiguous()
        x.to(memory_format=torch.channels_last)
        return {}

    real = mod.timed_step
    mod.timed_step = fake_step
    try:
        ms = mod.op_times({}, 2)
    finally:
        mod.timed_step = real
    assert ms.get(mod.CAST_COPY, 0) > 0 and ms.get("aten::copy_", 0) > 0
    assert mod.op_class(mod.CAST_COPY) == "cast" and mod.op_class("aten::copy_") == "layout copy"
    classes = mod.by_class(ms)
    assert classes["cast"] >= ms[mod.CAST_COPY] and classes["layout copy"] >= ms["aten::copy_"]


def test_copy_sources_name_the_op_that_copies_and_count_its_elements(benchmark_script):
    mod = benchmark_script("profile_precision")
    x = torch.randn(64, 32)

    def fake_step(_run):
        x.t().contiguous()  # 2048 elements through clone < contiguous
        x.to(torch.bfloat16)  # 2048 through _to_copy < to
        return {}

    real = mod.timed_step
    mod.timed_step = fake_step
    try:
        src = mod.copy_sources({}, depth=2)
    finally:
        mod.timed_step = real
    assert src["aten::clone < aten::contiguous"] == {"calls": 1, "elements": 2048}
    assert src["aten::_to_copy < aten::to [dtype conversion]"] == {"calls": 1, "elements": 2048}
