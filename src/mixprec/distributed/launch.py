"""Data-parallel runs of the trainer: each rank joins the process group torchrun set up, gets
its device (``init_from_launcher`` -> ``DistContext``, called by the CLI or by a user script and
passed to ``train(..., dist=ctx)``), and shards the training data. Relaunching under torchrun
for ``device=0,1`` is the CLI's job (``mixprec.cli.launch``).

``device=cpu,cpu`` asks for 2 CPU processes (gloo); it exists for tests and for trying the
distributed path without GPUs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from mixprec.distributed.ranks import barrier, is_initialized, is_main_process

__all__ = ["DistContext", "broadcast_object", "device_list", "init_from_launcher", "launched_by_torchrun",
           "main_process_first", "quiet_unless_main", "shard_loader"]


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def device_list(device: Any) -> list[str] | None:
    """``"0,1"`` -> ``["0", "1"]``; ``"cpu,cpu"`` -> ``["cpu", "cpu"]``; one device -> None."""
    if device is None or isinstance(device, int):
        return None
    items = [d.strip() for d in str(device).split(",") if d.strip()]
    if len(items) < 2:
        return None
    if len({"cpu" if d == "cpu" else "cuda" for d in items}) > 1 or \
            any(d != "cpu" and not d.isdigit() for d in items):
        raise ValueError(f"device={device!r}: give CUDA indices such as device=0,1 (or cpu,cpu for "
                         "CPU processes), not a mix")
    if items[0] != "cpu" and len(set(items)) != len(items):
        raise ValueError(f"device={device!r} lists a GPU twice: one process per GPU")
    return items


def launched_by_torchrun() -> bool:
    """Whether this process is a torchrun rank (torch reads the launcher's variables)."""
    return dist.is_torchelastic_launched()


def init_from_launcher(device: Any) -> DistContext | None:
    """Join torchrun's process group (NCCL for CUDA, gloo for CPU) and pick this rank's device;
    None when not started by torchrun. Collective."""
    if not dist.is_torchelastic_launched():
        return None
    devices = device_list(device)
    cpu = (devices or [str(device or "")])[0] == "cpu" or not torch.cuda.is_available()
    if not is_initialized():
        dist.init_process_group("gloo" if cpu else "nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    local = dist.get_node_local_rank(fallback_rank=rank)
    if cpu:
        dev = torch.device("cpu")
    else:
        dev = torch.device(f"cuda:{int(devices[local]) if devices else local}")
        torch.cuda.set_device(dev)
    return DistContext(rank, world, local, dev)


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. generating a dataset or writing a cache), the others
    after it finished; a plain block in one process."""
    if not is_main_process():
        barrier()
    yield
    if is_main_process():
        barrier()


def shard_loader(loader: DataLoader, seed: int = 0) -> DataLoader:
    """The same loader with a shuffling ``DistributedSampler`` (seeded; call ``set_epoch``):
    every rank sees a disjoint 1/world share of each epoch (padded by repeating samples to equal
    length), in batches of the loader's batch size."""
    sampler = DistributedSampler(loader.dataset, shuffle=True, seed=seed, drop_last=False)
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler,
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn, drop_last=False,
                      persistent_workers=False)


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (pickled; small objects only); ``obj`` in one process."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def quiet_unless_main() -> Iterator[None]:
    """Silence stdout on ranks other than 0 for the block (restored after): logs come from rank 0."""
    if is_main_process():
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield
