"""The command layer: one registry, one key schema, deprecated spellings, one error channel,
and the library below it never reads argv or the environment."""

from __future__ import annotations

import ast
import importlib
import pathlib
import subprocess
import sys

import pytest

from mixprec.cli import COMMANDS, main
from mixprec.keys import Key, check_keys

SRC = pathlib.Path(__file__).resolve().parents[2] / "src" / "mixprec"


def test_every_command_is_one_module_of_the_cli_package():
    assert set(COMMANDS) == {"train", "val", "predict", "bench", "doctor", "check", "export", "benchmark"}
    for name, module in COMMANDS.items():
        assert module == f"mixprec.cli.{name}"
        m = importlib.import_module(module)
        assert callable(m.run) and isinstance(m.SUMMARY, str)
        assert all(isinstance(k, Key) for k in m.KEYS.values())


def test_only_the_cli_reads_argv_or_the_environment():
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.relative_to(SRC).parts[0] == "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                    (node.value.id, node.attr) in (("sys", "argv"), ("os", "environ")):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr == "getenv":
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert offenders == []


def test_deprecated_spellings_still_work_and_name_the_new_key(capsys):
    keys = {"precision": Key("auto", "-"), "device": Key(None, "-")}
    assert check_keys({"policy": "16-mixed"}, keys, "check")["precision"] == "16-mixed"
    assert "'policy=' is deprecated" in capsys.readouterr().err
    assert main(["check", "device=cpu", "policy=32"]) == 0
    captured = capsys.readouterr()
    assert "use 'precision='" in captured.err and "check_amp OK: policy 32" in captured.out
    with pytest.raises(ValueError, match="did you mean 'precision'"):
        check_keys({"precison": "32"}, keys, "check")


def test_command_errors_are_one_line_on_stderr(capsys):
    assert main(["predict", "model=nothing.pt"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mixprec predict: give source=") and err.count("\n") == 1
    assert main(["doctor", "precision=fp17"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_python_dash_m_and_the_cli_package_both_run():
    for entry in (["-m", "mixprec"], ["-m", "mixprec.cli"]):
        done = subprocess.run([sys.executable, *entry, "check", "--help"], capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0 and "usage: mixprec check" in done.stdout, done.stderr
