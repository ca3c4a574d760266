"""Data-parallel launches from the command line: ``mixprec train ... device=0,1`` re-runs itself
under torchrun, one process per listed device; each rank then joins the process group and hands
its ``DistContext`` to the library (``train(..., dist=ctx)``).

    mixprec train ... device=0,1   # runs: torchrun --standalone --nproc_per_node=2 -m mixprec.cli train ...
    torchrun --nproc_per_node=2 -m mixprec train ... device=cpu    # the same, started by hand
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from mixprec.distributed.launch import device_list, launched_by_torchrun

__all__ = ["needs_launch", "relaunch"]


def needs_launch(device: Any) -> bool:
    """True when ``device`` lists several devices and this process is not a torchrun rank yet."""
    return device_list(device) is not None and not launched_by_torchrun()


def relaunch(command: str, config: dict[str, Any]) -> int:
    """Run ``mixprec <command>`` with ``config`` on one process per listed device, under torchrun
    (``--standalone``: rendezvous on a free localhost port). Returns torchrun's exit code."""
    devices = device_list(config.get("device"))
    if devices is None:
        raise ValueError("relaunch needs a device list such as device=0,1")
    args = [f"{k}={v}" for k, v in config.items() if v is not None]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={len(devices)}", "-m", "mixprec.cli", command, *args]
    print(f"data-parallel on {len(devices)} processes: {' '.join(cmd)}", flush=True)
    return subprocess.call(cmd)
