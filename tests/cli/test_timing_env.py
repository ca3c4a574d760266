"""The timing warning for environments that distort latency (OMP_WAIT_POLICY=PASSIVE)."""

import pytest

from mixprec.cli.main import main
from mixprec.cli.timing_env import timing_warning


@pytest.mark.parametrize("value", ["PASSIVE", "passive", " Passive "])
@pytest.mark.parametrize("threads", [0, 2, 8])
def test_passive_wait_policy_warns_when_threads_can_sleep(value, threads):
    line = timing_warning({"OMP_WAIT_POLICY": value}, threads)
    assert line is not None and "OMP_WAIT_POLICY=PASSIVE" in line and "threads=1" in line
    assert "\n" not in line


@pytest.mark.parametrize("environ,threads", [({}, 0), ({"OMP_WAIT_POLICY": "ACTIVE"}, 2),
                                             ({"OMP_WAIT_POLICY": "PASSIVE"}, 1), ({"OTHER": "PASSIVE"}, 2)])
def test_no_warning_when_timing_is_not_distorted(environ, threads):
    assert timing_warning(environ, threads) is None


def test_bench_cli_prints_the_warning_before_timing(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setattr("torch.get_num_threads", lambda: 2)
    rc = main(["bench", "model=convnet", "imgsz=16", "batch=2", "steps=1", "warmup=1", "precision=32",
               "device=cpu", "plots=False", f"project={tmp_path}"])
    out = capsys.readouterr().out
    assert rc == 0 and out.index("OMP_WAIT_POLICY=PASSIVE") < out.index("bench: ")
