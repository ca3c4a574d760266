"""``mixprec check``: the device's low-precision capabilities, what ``auto`` picks, and a self-test."""

from __future__ import annotations

from typing import Any

from mixprec.keys import Key

SUMMARY = ("Print this device's low-precision capabilities, the policy 'auto' chooses and why, "
           "and the result of the offline check_amp self-test.")
KEYS = {
    "device": Key(None, "device to check: cpu, cuda, cuda:1 (default: cuda if available, else cpu)"),
    "precision": Key("auto", "precision to self-test: a preset (16-mixed, bf16-mixed, ...) or auto "
                             "(old spelling: policy=)"),
    "emulate": Key(False, "self-test with emulated numerics (mixprec.emulate) instead of real dtypes"),
}


def run(config: dict[str, Any]) -> int:
    from mixprec.check import check_amp
    from mixprec.hardware import auto_policy, describe_device

    info = describe_device(config["device"])
    print(f"device      {info['device']}  ({info['name']})")
    print(f"torch       {info['torch']}  python {info['python']}  cores {info['cores']}")
    if "compute_capability" in info:
        print(f"capability  {info['compute_capability']}  CUDA {info['cuda']}  "
              f"memory {info['memory_bytes'] / 2**30:.1f} GiB")
    if "cpu_flags" in info:
        print(f"cpu flags   {' '.join(info['cpu_flags']) or '(none relevant)'}  "
              f"(torch kernels: {info['cpu_capability']})")
    print(f"native      bf16={info['bf16']}  fp16={info['fp16']}  fp8={info['fp8']}")
    policy, reason = auto_policy(info["device"])
    print(f"auto        {policy}: {reason}")
    result = check_amp(info["device"], config["precision"], emulate=bool(config["emulate"]))
    print(result)
    return 0 if result.ok else 1
