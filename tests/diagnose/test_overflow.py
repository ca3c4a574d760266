"""The planted overflow: the doctor names the module and its advice (keep it in FP32) works."""

import torch
import torch.nn.functional as F
from torch import nn

import mixprec as mp
from conftest import Amplify, fp32_island


def test_real_fp16_names_planted_module_and_fp32_fixes_it(planted):
    net, batches = planted
    r = mp.diagnose(net, batches, F.cross_entropy, precision="16-mixed", steps=2)
    assert r.overflow_sources == ["amp"]
    assert [k["module"] for k in r.recommendations["keep_fp32"]] == ["amp"]
    amp = r.module("amp")
    assert amp.forward.max_abs > 0 and amp.forward.counts["overflow_s"] > 0
    assert r.module("inp").source_calls == 0 and r.module("inp").forward.counts["overflow_s"] == 0
    # Downstream modules receive inf/NaN but are not sources.
    assert r.module("norm").source_calls == 0 and r.module("norm").forward.counts["nan"] > 0
    assert all(s.cause == "forward" for s in r.skips) and len(r.skips) == 2
    assert r.recommendations["bf16"]["better"] is True
    # Follow the advice: the same run with the module in FP32 is clean.
    fp32_island(net.amp)
    fixed = mp.diagnose(net, batches, F.cross_entropy, precision="16-mixed", steps=2)
    assert fixed.overflow_sources == [] and not fixed.skips
    assert fixed.recommendations["keep_fp32"] == []


def test_fp32_what_if_run_names_the_same_module(planted):
    net, batches = planted
    r = mp.diagnose(net, batches, F.cross_entropy, precision="32", fmt="fp16", steps=2)
    assert r.overflow_sources == ["amp"]
    assert not r.skips                      # FP32 itself is fine
    amp = r.module("amp").forward
    assert amp.max_abs > 65504              # the FP32 value that FP16 could not hold
    assert 0 < amp.share("overflow_s") < 1


def test_overflow_source_is_first_in_forward_order(planted):
    net, batches = planted
    r = mp.diagnose(net, batches, F.cross_entropy, precision="32", fmt="fp16", steps=1)
    amp = r.module("amp")
    assert amp.first_source == 2            # inp, act, then amp complete in this order



def test_container_is_explained_by_its_child():
    seq = nn.Sequential(nn.Linear(8, 8), Amplify(8, 8))
    x = torch.randn(4, 8)
    r = mp.diagnose(seq, [(x, torch.randn(4, 8))], F.mse_loss, precision="32", fmt="fp16",
                    steps=1)
    assert r.module("(model)").source_calls == 1    # its output overflows too ...
    assert r.overflow_sources == ["1"]             # ... but the child is the source


def test_emulated_fp16_agrees_with_real_fp16(planted):
    net, batches = planted
    real = mp.diagnose(net, batches, F.cross_entropy, precision="16-mixed", steps=2)
    emu = mp.diagnose(net, batches, F.cross_entropy, precision="16-mixed", steps=2, emulate=True)
    assert emu.context["emulate"] is True
    assert emu.overflow_sources == real.overflow_sources == ["amp"]
    assert [s.cause for s in emu.skips] == [s.cause for s in real.skips]
    assert emu.nan_locator.origin.module == "amp"
