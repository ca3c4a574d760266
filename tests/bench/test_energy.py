"""Energy readers: RAPL from a fake powercap tree (wrap-around, sub-zones, permissions) and the
n/a fallbacks with their reasons."""

from __future__ import annotations

import builtins
import sys

import pytest
import torch

from mixprec.bench import energy as energy_mod
from mixprec.bench.energy import open_energy_meter


def make_rapl(root, packages=((1000, 2**20),), subzone=True):
    for i, (value, wrap) in enumerate(packages):
        d = root / f"intel-rapl:{i}"
        d.mkdir(parents=True)
        (d / "energy_uj").write_text(f"{value}\n")
        (d / "max_energy_range_uj").write_text(f"{wrap}\n")
        (d / "name").write_text(f"package-{i}\n")
        if subzone:
            s = root / f"intel-rapl:{i}:0"
            s.mkdir()
            (s / "energy_uj").write_text("999999\n")
    return root


def test_rapl_sums_packages_and_ignores_subzones(tmp_path):
    root = make_rapl(tmp_path, packages=((1000, 2**20), (5000, 2**20)))
    meter, reason = open_energy_meter("cpu", powercap_root=str(root))
    assert reason is None and "package-0" in meter.source and "package-1" in meter.source
    start = meter.sample()
    assert start == (1000, 5000)
    (root / "intel-rapl:0" / "energy_uj").write_text("3000\n")
    (root / "intel-rapl:1" / "energy_uj").write_text("6000\n")
    assert meter.joules(start, meter.sample()) == pytest.approx((2000 + 1000) / 1e6)


def test_rapl_wraparound(tmp_path):
    root = make_rapl(tmp_path, packages=((2**20 - 100, 2**20),))
    meter, _ = open_energy_meter("cpu", powercap_root=str(root))
    start = meter.sample()
    (root / "intel-rapl:0" / "energy_uj").write_text("50\n")  # wrapped past max_energy_range_uj
    assert meter.joules(start, meter.sample()) == pytest.approx(150 / 1e6)


def test_rapl_missing_root_and_no_domains(tmp_path):
    meter, reason = open_energy_meter("cpu", powercap_root=str(tmp_path / "absent"))
    assert meter is None and "does not exist" in reason
    meter, reason = open_energy_meter("cpu", powercap_root=str(tmp_path))
    assert meter is None and "no RAPL package domain" in reason


def test_rapl_permission_denied_gives_the_fix(tmp_path, monkeypatch):
    root = make_rapl(tmp_path)

    def deny(path, *args, **kwargs):
        if str(path).endswith("energy_uj"):
            raise PermissionError(13, "Permission denied", str(path))
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(energy_mod, "open", deny, raising=False)
    meter, reason = open_energy_meter("cpu", powercap_root=str(root))
    assert meter is None and "permission denied" in reason and "chmod o+r" in reason


@pytest.mark.skipif(torch.cuda.is_available(), reason="NVML may work on a GPU machine")
def test_nvml_fallback_without_driver():
    meter, reason = open_energy_meter("cuda")
    assert meter is None and "NVML unavailable" in reason


def test_nvml_fallback_without_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    meter, reason = open_energy_meter("cuda")
    assert meter is None and "pip install nvidia-ml-py" in reason


def test_other_devices_are_na():
    meter, reason = open_energy_meter("meta")
    assert meter is None and "no energy counter known for device type 'meta'" in reason
