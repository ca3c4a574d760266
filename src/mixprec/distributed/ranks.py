"""Rank helpers that also work when ``torch.distributed`` is not initialised (one process)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["barrier", "is_initialized", "is_main_process", "rank", "unwrap", "world_size"]


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank(group: Any = None) -> int:
    """This process's rank in ``group`` (0 when not distributed)."""
    return dist.get_rank(group) if is_initialized() else 0


def world_size(group: Any = None) -> int:
    """Number of processes in ``group`` (1 when not distributed)."""
    return dist.get_world_size(group) if is_initialized() else 1


def is_main_process() -> bool:
    """True on global rank 0 (and in a single process): the one that logs and writes files."""
    return rank() == 0


def barrier(group: Any = None) -> None:
    """``dist.barrier`` when distributed, else nothing."""
    if is_initialized() and world_size(group) > 1:
        dist.barrier(group)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (FSDP2 modules are returned as they
    are: ``fully_shard`` changes the module in place)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
