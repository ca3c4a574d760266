"""Plain-language notes for a benchmark row: why a precision is slower than FP32 on this device,
why its memory did not drop, what emulation means for the figures. Pure functions of the row's
policy, the device description (``mixprec.hardware.describe_device``) and the measured ratios.
"""

from __future__ import annotations

from typing import Any

import torch

from mixprec.policy import Policy

__all__ = ["memory_notes", "slowdown_reason"]


def _half_name(dtype: torch.dtype) -> str:
    return {torch.float16: "FP16", torch.bfloat16: "BF16"}.get(dtype, str(dtype))


def slowdown_reason(policy: Policy, env: dict[str, Any], emulated: bool) -> str:
    """Why ``policy`` runs slower than FP32 on the device ``env`` describes (one sentence)."""
    if emulated:
        return ("emulated numerics: FP32 arithmetic plus rounding after every op, so this measures "
                "the emulator, not the hardware; run with emulate=False for real speed")
    half = policy.compute_dtype
    name = _half_name(half)
    device = str(env.get("device", "cpu"))
    if device.startswith("cpu"):
        flags = ", ".join(env.get("cpu_flags") or []) or "none"
        native = env.get("bf16") if half == torch.bfloat16 else env.get("fp16")
        if not native:
            wanted = "avx512_bf16/amx_bf16" if half == torch.bfloat16 else "avx512_fp16/amx_fp16"
            return (f"no native {name} on this CPU (it lacks {wanted}; flags: {flags}): PyTorch "
                    f"converts {name} to FP32 and back around every op in software")
        return (f"this CPU has native {name}, but the model is too small for the casts around "
                "each op to pay off")
    if device.startswith("cuda"):
        cc = env.get("compute_capability", "?")
        if half == torch.bfloat16 and not env.get("bf16_tensor_cores"):
            return f"no BF16 tensor cores on {env.get('name')} (compute capability {cc} < 8.0)"
        if half == torch.float16 and not env.get("tensor_cores_fp16"):
            return f"no FP16 tensor cores on {env.get('name')} (compute capability {cc} < 7.0)"
        extra = (" and the master copy adds an FP32 optimizer step and a write-back cast"
                 if policy.master_dtype is not None else "")
        return (f"{env.get('name')} has {name} tensor cores, but this step is latency- or "
                "memory-bound (small batch or channels, or sizes not multiples of 8), so the "
                f"casts cost more than the faster math saves{extra}; try a larger batch")
    return f"{name} is not faster than FP32 on {device}"


def memory_notes(policy: Policy, total_ratio: float | None, activation_ratio: float | None,
                 emulated: bool) -> list[str]:
    """Remarks on a row's memory ratios against FP32."""
    notes = []
    if emulated:
        notes.append("emulated: tensors are stored in FP32 (plus the emulator's rounded copies), "
                     "so the memory figures are not those of the real dtypes; run with "
                     "emulate=False to measure the saving")
        return notes
    if policy.master_dtype is not None and total_ratio is not None and total_ratio > 1.0:
        notes.append("uses more memory than FP32: the FP32 master copy and FP32 gradients add "
                     "to half parameters, and activations are too small here to outweigh it")
    if policy.is_mixed and activation_ratio is not None and activation_ratio > 0.75:
        notes.append("activations barely shrink: autocast keeps many ops (normalisation, "
                     "losses, reductions) in FP32 and saves FP32 inputs for them")
    return notes
