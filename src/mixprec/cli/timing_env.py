"""Environment settings that distort what ``mixprec bench`` and ``mixprec benchmark`` time."""

from __future__ import annotations

import os
from collections.abc import Mapping

__all__ = ["print_timing_warning", "timing_warning"]


def timing_warning(environ: Mapping[str, str], threads: int) -> str | None:
    """One warning line when ``environ`` distorts timings with ``threads`` worker threads (0: the
    libraries' default, more than one on a multi-core machine), else ``None``.

    ``OMP_WAIT_POLICY=PASSIVE`` makes OpenMP worker threads sleep between parallel regions: a
    batch-1 forward (many small ops) then pays a wake-up per op. Measured on 2 cores: det-n at
    160 px in PyTorch 9.1 -> 28.8 ms, onnxruntime FP32 at 640 px 37.5 -> 52.6 ms (INT8 barely
    moved, so its ratio looked better than it is)."""
    if threads == 1 or environ.get("OMP_WAIT_POLICY", "").strip().upper() != "PASSIVE":
        return None
    return ("warning: OMP_WAIT_POLICY=PASSIVE is set: worker threads sleep between small ops and "
            "latencies are inflated (batch-1 det-n 3x here); unset it for timing, or use threads=1")


def print_timing_warning(threads: int) -> None:
    """Print ``timing_warning`` for this process's environment, if there is one."""
    warning = timing_warning(os.environ, threads)
    if warning:
        print(warning, flush=True)
