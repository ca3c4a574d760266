"""Turn the trainer's ``amp``/``precision`` key into a ``Policy`` and a sentence saying why.

The caller builds the run's one ``Precision`` from the policy (``check_amp``'s own test objects
stay inside ``check_amp``)."""

from __future__ import annotations

import torch

from mixprec.hardware import auto_policy, select_device
from mixprec.policy import Policy

__all__ = ["choose_precision", "select_device"]


def choose_precision(amp: bool | str | int | None, device: torch.device,
                     emulate: bool = False, key: str = "amp") -> tuple[Policy, str]:
    """``amp=True``/``"auto"``: the ``auto`` policy for ``device``, confirmed by ``check_amp``
    on CUDA (FP32 if it fails); ``False``: ``32``; a preset name: that preset. Raises
    ValueError for a name that is no preset (the message lists them). ``key``: the key the
    value was given as (``amp`` or ``precision``), for the reason."""
    if amp is True or (isinstance(amp, str) and amp.lower() == "auto"):
        policy, why = auto_policy(device)
        reason = f"{key}={amp} -> auto: {why}"
        if device.type == "cuda" and str(policy) != "32":
            from mixprec.check import check_amp

            result = check_amp(device, policy, emulate=emulate)
            if not result.ok:
                return Policy.parse("32"), (f"{key}={amp} -> auto chose {policy} but check_amp failed "
                                            f"({result.reason}): FP32")
            reason += f"; check_amp passed (max abs diff {result.max_abs_diff:.3g})"
        return policy, reason
    if amp is False or amp is None or str(amp).lower() in ("32", "fp32", "32-true", "false"):
        return Policy.parse("32"), f"{key}={amp}: FP32"
    policy = Policy.parse(str(amp))
    return policy, f"{key}={amp}: preset requested" + (" (emulated numerics)" if emulate else "")
