"""Turn the trainer's ``amp`` key into a ``mixprec.Precision`` and a sentence saying why."""

from __future__ import annotations

import torch

from mixprec.precision import Precision

__all__ = ["choose_precision", "select_device"]


def select_device(device: str | int | None) -> torch.device:
    """``None``/``""``: cuda:0 when available, else cpu; ``0`` -> cuda:0; ``"cpu"``...; a CUDA
    device that is not there raises ValueError with the fix (``mixprec.hardware.resolve_device``)."""
    from mixprec.hardware import resolve_device

    return resolve_device(device)


def choose_precision(amp: bool | str | int, device: torch.device,
                     emulate: bool = False) -> tuple[Precision, str]:
    """``amp=True``/``"auto"``: the ``auto`` policy for ``device``, confirmed by ``check_amp``
    on CUDA (FP32 if it fails); ``False``: ``32``; a preset name: that preset."""
    if amp is True or (isinstance(amp, str) and amp.lower() == "auto"):
        prec = Precision("auto", device=device, emulate=emulate)
        reason = f"amp=True -> auto: {prec.reason}"
        if device.type == "cuda" and str(prec.policy) != "32":
            from mixprec.check import check_amp

            result = check_amp(device, prec.policy, emulate=emulate)
            if not result.ok:
                return Precision("32", device=device), (
                    f"amp=True -> auto chose {prec.policy} but check_amp failed "
                    f"({result.reason}): FP32")
            reason += f"; check_amp passed (max abs diff {result.max_abs_diff:.3g})"
        return prec, reason
    if amp is False or amp is None or str(amp).lower() in ("32", "fp32", "32-true", "false"):
        return Precision("32", device=device, emulate=emulate), "amp=False: FP32"
    prec = Precision(str(amp), device=device, emulate=emulate)
    return prec, f"amp={amp}: preset requested" + (" (emulated numerics)" if emulate else "")
