import pytest
import torch
from torch import nn

import mixprec as mp
from mixprec import check as check_module
from mixprec import hardware
from mixprec.cli import main


def test_auto_on_a_cpu_without_native_low_precision_is_fp32_with_reason(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: ("avx2", "fma"))
    policy, reason = mp.auto_policy("cpu")
    assert str(policy) == "32"
    assert "no native BF16" in reason and "slower than FP32" in reason


def test_auto_on_a_bf16_cpu_is_bf16_mixed(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: ("avx512f", "avx512_bf16", "amx_bf16"))
    policy, reason = mp.auto_policy("cpu")
    assert str(policy) == "bf16-mixed"
    assert "avx512_bf16" in reason


def test_precision_auto_records_the_reason(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: ())
    prec = mp.Precision("auto", device="cpu")
    assert str(prec.policy) == "32" and "no native" in prec.reason


def test_cuda_device_without_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same on every machine
    with pytest.raises(ValueError, match="device=cuda requested but no CUDA device is available; "
                                         "use device=cpu"):
        mp.auto_policy("cuda")


def test_describe_device_cpu_fields():
    info = hardware.describe_device("cpu")
    assert info["device"] == "cpu" and info["cores"] >= 1
    assert isinstance(info["cpu_flags"], list) and info["torch"] == torch.__version__


_ZEN4_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu sse avx2 fma f16c avx512f avx512_bf16 avx512_vnni avx512vl sha_ni
"""


def test_cpu_model_and_flags_come_from_cpuinfo(monkeypatch):
    monkeypatch.setattr(hardware, "_cpuinfo", lambda: _ZEN4_CPUINFO)
    assert hardware.cpu_model() == "AMD EPYC 9R14 96-Core Processor"
    # the INT8 dot-product flag is reported, flags torch does not use for low precision are not
    expected = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "fma", "f16c")
    assert hardware.cpu_flags.__wrapped__() == expected
    monkeypatch.setattr(hardware, "_cpuinfo", lambda: "")
    assert hardware.cpu_model() and hardware.cpu_flags.__wrapped__() == ()


@pytest.mark.parametrize("policy", ["16-mixed", "bf16-mixed", "16-master"])
def test_check_amp_passes_real_policies(policy):
    result = mp.check_amp("cpu", policy)
    assert result.ok, result
    assert 0 < result.max_abs_diff <= result.tolerance


def test_check_amp_of_fp32_is_exact():
    result = mp.check_amp("cpu", "32")
    assert result.ok and result.max_abs_diff == 0.0


def test_check_amp_fails_when_fp16_overflows(monkeypatch):
    class Huge(nn.Module):
        def forward(self, x):
            return x * 1e5

    def overflowing():
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(768, 10), Huge(), nn.Linear(10, 10))

    monkeypatch.setattr(check_module, "_tiny_cnn", overflowing)
    result = mp.check_amp("cpu", "16-mixed")
    assert not result.ok
    assert "inf/NaN" in result.reason


def test_cli_check_prints_capabilities_auto_and_result(capsys):
    assert main(["check", "device=cpu", "policy=bf16-mixed"]) == 0
    out = capsys.readouterr().out
    assert "auto" in out and "check_amp OK: policy bf16-mixed on cpu" in out
    assert "cpu flags" in out


def test_cli_unknown_key_suggests_the_nearest(capsys):
    assert main(["check", "polcy=16-mixed"]) == 2
    assert "did you mean 'policy'" in capsys.readouterr().err


def test_cli_help_lists_every_key(capsys):
    assert main(["check", "--help"]) == 0
    out = capsys.readouterr().out
    assert all(k in out for k in ("device", "policy", "emulate"))


def test_cli_unknown_command(capsys):
    assert main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err
