"""Energy counters: the GPU's cumulative energy (NVML) or the CPU package's (RAPL), or ``n/a``
with the reason.

``open_energy_meter(device)`` returns ``(meter, None)`` or ``(None, reason)``. A meter's
``sample()`` reads the raw counters (cheap, no device synchronisation: synchronise before
sampling so the work you measure is done) and ``joules(start, end)`` turns two samples into
joules, handling RAPL's wrap-around. RAPL measures the whole CPU package, so anything else
running on the machine is in the number; NVML measures the whole GPU.
"""

from __future__ import annotations

import glob
import os
from typing import Any

import torch

__all__ = ["NvmlEnergy", "RaplEnergy", "open_energy_meter"]

POWERCAP = "/sys/class/powercap"


class NvmlEnergy:
    """Total energy of one NVIDIA GPU since driver load (``nvmlDeviceGetTotalEnergyConsumption``,
    millijoules; Volta or newer)."""

    def __init__(self, nvml: Any, handle: Any, name: str) -> None:
        self._nvml = nvml
        self._handle = handle
        self.source = f"NVML total energy counter ({name})"

    def sample(self) -> int:
        return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))

    @staticmethod
    def joules(start: int, end: int) -> float:
        return (end - start) / 1000.0


class RaplEnergy:
    """Sum of the top-level RAPL package domains (``<root>/*-rapl:N/energy_uj``, microjoules)."""

    def __init__(self, domains: list[tuple[str, int]], names: list[str]) -> None:
        self._domains = domains  # (energy_uj path, max_energy_range_uj)
        self.source = "RAPL " + ", ".join(names) + " (whole CPU package)"

    def sample(self) -> tuple[int, ...]:
        values = []
        for path, _ in self._domains:
            with open(path, encoding="ascii") as f:
                values.append(int(f.read().strip()))
        return tuple(values)

    def joules(self, start: tuple[int, ...], end: tuple[int, ...]) -> float:
        total = 0
        for (_, wrap), a, b in zip(self._domains, start, end, strict=True):
            total += b - a if b >= a else b + wrap - a  # the counter wrapped once
        return total / 1e6


def _open_nvml(device: torch.device) -> tuple[NvmlEnergy | None, str | None]:
    try:
        import pynvml
    except ImportError:
        return None, "nvidia-ml-py (pynvml) is not installed: pip install nvidia-ml-py"
    try:
        pynvml.nvmlInit()
    except Exception as err:  # NVMLError subclasses, e.g. library or driver not found
        return None, f"NVML unavailable ({type(err).__name__}: {err})"
    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    try:
        uuid = getattr(props, "uuid", None)
        if uuid is not None:
            handle = pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
        else:  # older torch: assume CUDA and NVML agree on the order
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        meter = NvmlEnergy(pynvml, handle, props.name)
        meter.sample()
    except Exception as err:
        return None, (f"{props.name} has no readable NVML energy counter (needs Volta or newer): "
                      f"{type(err).__name__}: {err}")
    return meter, None


def _open_rapl(root: str) -> tuple[RaplEnergy | None, str | None]:
    if not os.path.isdir(root):
        return None, (f"no RAPL energy counters: {root} does not exist (not Linux, or a "
                      "container/VM without powercap)")
    dirs = sorted(d for d in glob.glob(os.path.join(root, "*-rapl:*"))
                  if os.path.basename(d).count(":") == 1)  # packages only, not sub-zones
    if not dirs:
        return None, f"no RAPL package domain under {root} (this CPU or kernel exposes none)"
    domains, names = [], []
    for d in dirs:
        path = os.path.join(d, "energy_uj")
        try:
            with open(path, encoding="ascii") as f:
                int(f.read().strip())
        except PermissionError:
            return None, (f"RAPL counters are not readable ({path}: permission denied; root-only "
                          f"since Linux 5.10, CVE-2020-8694): run as root or "
                          f"'sudo chmod o+r {root}/*/energy_uj'")
        except (OSError, ValueError) as err:
            return None, f"RAPL counter {path} unreadable: {err}"
        try:
            with open(os.path.join(d, "max_energy_range_uj"), encoding="ascii") as f:
                wrap = int(f.read().strip())
        except (OSError, ValueError):
            wrap = 2**32  # documented default range of the 32-bit MSR in microjoules
        try:
            with open(os.path.join(d, "name"), encoding="ascii") as f:
                names.append(f.read().strip())
        except OSError:
            names.append(os.path.basename(d))
        domains.append((path, wrap))
    return RaplEnergy(domains, names), None


def open_energy_meter(device: str | torch.device,
                      powercap_root: str = POWERCAP) -> tuple[Any | None, str | None]:
    """An energy meter for ``device``, or (None, reason). CUDA: NVML; CPU: RAPL under
    ``powercap_root``; anything else: n/a."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return _open_nvml(dev)
    if dev.type == "cpu":
        return _open_rapl(powercap_root)
    return None, f"no energy counter known for device type {dev.type!r}"
