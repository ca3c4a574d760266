"""doctor.json / doctor.md / PNG, the terminal summary, loss-scale health and advice."""

import json

import pytest
import torch
import torch.nn.functional as F

import mixprec as mp
from mixprec.cli import main
from mixprec.diagnose import SCHEMA
from mixprec.diagnose.advice import loss_scale_health, recommend_scale
from mixprec.diagnose.skips import SkipRecord
from mixprec.diagnose.stats import RangeAccumulator
from mixprec.formats import FORMATS


def test_save_writes_json_md_png(tmp_path, planted):
    net, batches = planted
    r = mp.diagnose(net, batches, F.cross_entropy, precision="16-mixed", steps=2)
    paths = r.save(tmp_path / "doc")
    d = json.loads(paths["json"].read_text())
    assert d["schema"] == SCHEMA and d["precision"] == "16-mixed"
    assert d["format"]["name"] == "fp16" and d["format"]["max"] == 65504.0
    assert d["steps"] == 2 and d["skipped_steps"] == 2
    assert d["overflow_sources"] == ["amp"]
    assert d["recommendations"]["keep_fp32"][0]["module"] == "amp"
    assert [s["cause"] for s in d["skips"]] == ["forward", "forward"]
    assert d["nan_locator"]["origin"]["module"] == "amp"
    names = [m["name"] for m in d["modules"]]
    assert names[0] == "(model)" and "amp" in names
    amp = d["modules"][names.index("amp")]
    assert set(amp["forward"]) >= {"max_abs", "in_format", "headroom_bits", "histogram_unscaled"}
    assert set(amp["act_grad"]) >= {"at_scale", "unscaled"}
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = paths["md"].read_text()
    assert "grad_hist.png" in md and "| amp |" in md
    text = r.summary()
    assert "amp (Amplify)" in text and "SOURCE" in text and "keep in FP32: amp" in text


def test_health_flags_collapse_with_cause():
    fmt = FORMATS["fp16"]
    skips = [SkipRecord(i, "loss", "", "nan", True, True, 2.0**-i, 2.0**(-i - 1))
             for i in range(6)]
    h = loss_scale_health([2.0**(-i - 1) for i in range(6)], [False] * 6, skips, fmt)
    kinds = {f["kind"] for f in h["flags"]}
    assert not h["ok"] and kinds == {"scale_below_1", "skip_streak"}
    assert all("targets/labels" in f["message"] for f in h["flags"])
    ok = loss_scale_health([65536.0] * 30, [True] * 30, [], fmt)
    assert ok["ok"] and ok["longest_skip_streak"] == 0


def test_health_skip_rate_flag():
    fmt = FORMATS["fp16"]
    stepped = [i % 5 != 0 for i in range(40)]                # 20% skipped, never in a row
    skips = [SkipRecord(i, "grad_overflow", "", 1.0, True, True, 4.0, 2.0, modules=["fc"])
             for i in range(0, 40, 5)]
    h = loss_scale_health([4.0] * 40, stepped, skips, fmt)
    assert [f["kind"] for f in h["flags"]] == ["skip_rate"]
    assert "fc" in h["flags"][0]["message"]


@pytest.mark.parametrize(("big", "hi", "log2", "conflict"), [(2.0**4, 8, 8, False),
                                                          (2.0**8, 4, 4, True)])
def test_recommend_scale_bounds(big, hi, log2, conflict):
    acc = RangeAccumulator("fp16")
    acc.add(torch.full((100,), 1.5 * 2.0**-30))  # every one of these flushes unscaled
    acc.add(torch.full((1,), big))               # and one large gradient
    s = recommend_scale(acc.summary(), None, FORMATS["fp16"], margin_bits=3)
    # overflow bound: floor(log2(65504 / big)) - 3; underflow bound: 1.5 * 2**-30 * 2**5 rounds
    # to the smallest subnormal 2**-24 instead of to zero (checked against a real cast)
    assert (torch.tensor(1.5 * 2.0**-25).half() != 0) and (torch.tensor(1.5 * 2.0**-26).half() == 0)
    assert s["overflow_bound_log2"] == hi and s["underflow_bound_log2"] == 5
    assert s["log2"] == log2 and s["conflict"] is conflict
    assert s["act_grad_underflow_share_unscaled"] == pytest.approx(100 / 101)
    assert s["act_grad_underflow_share_at_scale"] == (100 / 101 if conflict else 0.0)


def test_cli_help_and_bad_key(capsys):
    assert main(["doctor", "--help"]) == 0
    out = capsys.readouterr().out
    assert "precision" in out and "fmt" in out and "steps" in out
    assert main(["doctor", "stepz=3"]) == 2
    assert "did you mean 'steps'" in capsys.readouterr().err
    assert main(["doctor", "precision=fp17"]) == 2
    assert "valid presets" in capsys.readouterr().err
    assert main(["doctor", "fmt=fp12"]) == 2
    assert "known formats" in capsys.readouterr().err
    assert main(["doctor", "steps=0"]) == 2
    assert "steps=0" in capsys.readouterr().err


def test_cli_runs_det_n_on_shapes8(tmp_path, capsys):
    rc = main(["doctor", "model=det-n.yaml", "data=shapes8.yaml", "precision=32", "fmt=fp16",
               "steps=1", "imgsz=64", "batch=2", f"project={tmp_path}",
               f"datasets_dir={tmp_path / 'ds'}"])
    assert rc == 0
    d = json.loads((tmp_path / "doctor" / "doctor.json").read_text())
    assert d["steps"] == 1 and d["totals"]["act_grad"]["elements"] > 0
    assert "Recommendations" in capsys.readouterr().out
