"""``seeded(seed, device)``: seed torch's global RNG for a block and restore it afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["seeded"]


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Run the block with the CPU RNG (and ``device``'s, on CUDA) seeded with ``seed``, under
    ``torch.random.fork_rng``: the caller's RNG state is unchanged afterwards."""
    devices = [device.index or 0] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield
