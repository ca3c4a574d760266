"""``mixprec bench`` from the command line: files written, schema valid, clear errors."""

from __future__ import annotations

import json

from mixprec.bench.result import validate
from mixprec.cli import main

FAST = ["model=convnet", "imgsz=8", "batch=2", "steps=2", "repeats=2", "warmup=1",
        "precisions=32,bf16-mixed", "budget=256K", "max_batch=16"]


def test_cli_writes_json_markdown_and_plots(tmp_path, capsys):
    assert main(["bench", *FAST, f"project={tmp_path}", "name=run"]) == 0
    out = capsys.readouterr().out
    assert "bf16-mixed" in out and "results saved to" in out
    run = tmp_path / "run"
    data = json.loads((run / "bench.json").read_text())
    validate(data)
    assert [r["precision"] for r in data["rows"]] == ["32", "bf16-mixed"]
    assert data["config"]["model"].startswith("convnet")
    md = (run / "bench.md").read_text()
    assert "## Environment" in md and data["environment"]["torch"] in md and "| cores |" in md
    for png in ("bench_speed_memory.png", "bench_loss.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_increments_run_dirs_and_takes_module_function(tmp_path):
    args = ["bench", *FAST, "precisions=32", "plots=False", f"project={tmp_path}"]
    assert main([*args, "model=mixprec.bench.tasks:convnet"]) == 0
    assert main(args) == 0
    assert (tmp_path / "bench" / "bench.json").exists()
    assert (tmp_path / "bench2" / "bench.json").exists()
    assert not (tmp_path / "bench2" / "bench_loss.png").exists()


def test_cli_errors_name_the_problem(tmp_path, capsys):
    assert main(["bench", "model=resnet", f"project={tmp_path}"]) == 2
    assert "not a detector YAML" in capsys.readouterr().err  # errors: one line on stderr
    assert main(["bench", "modle=convnet"]) == 2
    assert "did you mean 'model'" in capsys.readouterr().err
    assert main(["bench", *FAST, "steps=1", f"project={tmp_path}"]) == 2
    assert "repeats <= steps" in capsys.readouterr().err
    assert main(["bench", "model=det-n.yaml", "imgsz=100", f"project={tmp_path}"]) == 2
    assert "multiple of 32" in capsys.readouterr().err


def test_cli_help_lists_keys(capsys):
    assert main(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    assert "precisions" in out and "budget" in out
