"""What a device can do in low precision, and the ``auto`` policy that follows from it.

Reads ``/proc/cpuinfo`` and torch's device properties; queries CUDA only when asked about a
CUDA device (no CUDA context is created at import).
"""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from typing import Any

import torch

from mixprec.policy import PRESETS, Policy

__all__ = ["auto_policy", "cpu_flags", "cpu_model", "describe_device", "select_device"]

# CPU flags that matter for low precision (as Linux names them in /proc/cpuinfo).
_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "avx_vnni", "amx_tile",
              "amx_bf16", "amx_fp16", "amx_int8", "fma", "f16c", "asimd", "bf16", "fphp", "asimdhp", "i8mm")
_CPU_BF16 = ("avx512_bf16", "amx_bf16")
_CPU_FP16 = ("avx512_fp16", "amx_fp16")


@lru_cache(maxsize=1)
def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return f.read()
    except OSError:
        return ""


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (``AMD EPYC ...``), else ``platform``'s guess."""
    for line in _cpuinfo().splitlines():
        if line.startswith(("model name", "Model")) and ":" in line:
            name = line.split(":", 1)[1].strip()
            if name:
                return name
    return platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def cpu_flags() -> tuple[str, ...]:
    """Low-precision-relevant CPU flags of this machine (empty where /proc/cpuinfo is absent):
    BF16/FP16 arithmetic, the INT8 dot products (VNNI, AMX-INT8, i8mm) INT8 inference uses."""
    present: set[str] = set()
    for line in _cpuinfo().splitlines():
        if line.startswith(("flags", "Features")):
            present.update(line.split(":", 1)[1].split())
    return tuple(flag for flag in _CPU_FLAGS if flag in present)


def select_device(device: str | int | torch.device | None) -> torch.device:
    """The one default-device rule. ``None``/``""``: cuda:0 when available, else cpu;
    ``0``/``"7"`` -> cuda:N; ``"cpu"``, ``"cuda"``, ``"cuda:1"``... A CUDA device that is not
    there, or a name torch does not know, raises one ``ValueError`` line with the fix (never
    torch's driver traceback). Creates no CUDA context."""
    if device is None or device == "":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if isinstance(device, int) or str(device).strip().isdigit():
        device = f"cuda:{int(device)}"
    try:
        dev = torch.device(str(device).strip() if not isinstance(device, torch.device) else device)
    except (RuntimeError, ValueError):
        raise ValueError(f"device={device!r} is not a device: use cpu, cuda, cuda:0 or 0") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device} requested but no CUDA device is available; use device=cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device={device} requested but only {count} CUDA device(s) exist "
                             f"(0..{count - 1}); use device=0 or device=cpu")
    return dev


def describe_device(device: str | torch.device | None = None) -> dict[str, Any]:
    """Capabilities of ``device`` as a plain dict (JSON-serialisable), for reports and ``auto``."""
    dev = select_device(device)
    info: dict[str, Any] = {"device": str(dev), "torch": torch.__version__,
                            "python": platform.python_version(), "cores": os.cpu_count(),
                            "cpu": cpu_model()}
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        info.update(
            name=torch.cuda.get_device_name(index), compute_capability=f"{major}.{minor}",
            cuda=torch.version.cuda, tensor_cores_fp16=major >= 7,
            bf16=bool(torch.cuda.is_bf16_supported()), bf16_tensor_cores=major >= 8,
            fp16=True, fp8=(major, minor) >= (8, 9),
            memory_bytes=torch.cuda.get_device_properties(index).total_memory)
    elif dev.type == "cpu":
        flags = cpu_flags()
        info.update(
            name=info["cpu"], cpu_flags=list(flags),
            cpu_capability=torch.backends.cpu.get_cpu_capability(),
            bf16=any(f in flags for f in _CPU_BF16), fp16=any(f in flags for f in _CPU_FP16),
            fp8=False)
    else:
        info.update(name=dev.type, bf16=None, fp16=None, fp8=False)
    return info


def auto_policy(device: str | torch.device | None = None) -> tuple[Policy, str]:
    """The preset ``auto`` picks for ``device``, and why (a sentence for logs and reports)."""
    info = describe_device(device)
    dev = torch.device(info["device"])
    if dev.type == "cuda":
        cc = info["compute_capability"]
        if info["bf16_tensor_cores"] and info["bf16"]:
            return PRESETS["bf16-mixed"], (
                f"{info['name']} (compute capability {cc}) has BF16 tensor cores: bf16-mixed "
                "needs no loss scaling and keeps FP32's range")
        if info["tensor_cores_fp16"]:
            return PRESETS["16-mixed"], (
                f"{info['name']} (compute capability {cc}) has FP16 tensor cores but no BF16 ones: "
                "16-mixed with dynamic loss scaling")
        return PRESETS["16-mixed"], (
            f"{info['name']} (compute capability {cc}) has no tensor cores: 16-mixed saves memory, "
            "but expect little speedup")
    if dev.type == "mps":
        return PRESETS["16-mixed"], "Apple MPS computes FP16 natively: 16-mixed"
    if dev.type == "cpu":
        if info["bf16"]:
            native = [f for f in info["cpu_flags"] if f in _CPU_BF16]
            return PRESETS["bf16-mixed"], (
                f"this CPU has native BF16 ({', '.join(native)}): bf16-mixed")
        return PRESETS["32"], (
            "this CPU has no native BF16/FP16 units (no avx512_bf16/amx_bf16/avx512_fp16): low "
            "precision is emulated in software and slower than FP32 (a BF16 autocast CNN step is "
            "about 7.5x slower on such a CPU), so FP32; use mixprec.emulate to study FP16/BF16 "
            "numerics at FP32 speed")
    return PRESETS["32"], f"no low-precision rule for device type {dev.type!r}: FP32"
