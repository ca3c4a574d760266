"""Checkpoints of a distributed run: one call for DDP/single process and for FSDP2.

- DDP or one process: rank 0 writes one file (``mixprec.io.save_checkpoint``, atomic) holding
  the unwrapped model's, the optimizer's and the ``Precision``'s state; every rank reads it back
  (``weights_only=True``). All ranks hold identical state under DDP, so rank 0's is everyone's.
- FSDP2: ``torch.distributed.checkpoint`` writes a folder in which every rank saves its own
  shards (model and optimizer state from ``get_state_dict``); rank 0 adds ``mixprec.pt`` with the
  ``Precision`` state and ``extra``. The folder is written beside the target and renamed into
  place by rank 0 after all ranks finished, so a crash never leaves a half-written checkpoint.
  Loading (``set_state_dict``) works for the same world size; DCP also reshards to another.

Both are collective: every rank must call them, with the same path, on a filesystem that all
ranks share (one machine, or a shared mount across nodes).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mixprec import io
from mixprec.distributed.ranks import barrier, is_main_process, rank, unwrap

__all__ = ["load_checkpoint", "save_checkpoint"]

_PRECISION_FILE = "mixprec.pt"


def _is_sharded(model: nn.Module) -> bool:
    from mixprec.storage import is_fsdp2 as _is_fsdp2

    return _is_fsdp2(unwrap(model))


def save_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    precision: Any = None, extra: dict[str, Any] | None = None) -> Path:
    """Save model, optimizer, ``precision`` and ``extra`` (tensors, numbers, strings, containers).

    DDP/one process: ``path`` is a file written by rank 0. FSDP2: ``path`` is a folder written
    by all ranks (``torch.distributed.checkpoint``). Collective; ends with a barrier."""
    path = Path(path)
    prec_state = {"precision": precision.state_dict() if precision is not None else None,
                  "extra": extra or {}}
    if not _is_sharded(model):
        if is_main_process():
            state = {"model": unwrap(model).state_dict(), **prec_state}
            if optimizer is not None:
                state["optimizer"] = optimizer.state_dict()
            io.save_checkpoint(state, path)
        barrier()
        return path

    import torch.distributed.checkpoint as dcp

    tmp = path.with_name(f".{path.name}.tmp")
    if is_main_process():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    dcp.save(_sharded_state(model, optimizer), checkpoint_id=tmp)
    if is_main_process():
        io.save_checkpoint(prec_state, tmp / _PRECISION_FILE)
    barrier()
    if is_main_process():
        old = path.with_name(f".{path.name}.old")
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    barrier()
    return path


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    precision: Any = None) -> dict[str, Any]:
    """Restore what ``save_checkpoint`` wrote into ``model``, ``optimizer`` and ``precision``
    (built the same way as when saving); returns ``extra``. Collective for FSDP2."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path} (rank {rank()})")
    sharded = _is_sharded(model)
    if sharded != path.is_dir():
        kind = "an FSDP2 (sharded) model" if sharded else "a DDP or single-process model"
        raise ValueError(f"{path} is a {'folder (FSDP2 checkpoint)' if path.is_dir() else 'file'}, "
                         f"but the model is {kind}: load it into a model wrapped the same way as "
                         "when it was saved")
    if sharded:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

        state = _sharded_state(model, optimizer)
        dcp.load(state, checkpoint_id=path)
        if optimizer is not None:
            set_state_dict(model, optimizer, model_state_dict=state["model"],
                           optim_state_dict=state["optimizer"])
        else:
            set_model_state_dict(model, state["model"])
        rest = io.load_checkpoint(path / _PRECISION_FILE)
    else:
        rest = io.load_checkpoint(path)
        unwrap(model).load_state_dict(rest["model"])
        if optimizer is not None:
            if "optimizer" not in rest:
                raise ValueError(f"{path} holds no optimizer state: it was saved without an optimizer")
            optimizer.load_state_dict(rest["optimizer"])
    if precision is not None:
        if rest.get("precision") is None:
            raise ValueError(f"{path} holds no Precision state: it was saved without precision=")
        precision.load_state_dict(rest["precision"])
    barrier()
    return rest.get("extra", {})


def _sharded_state(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """The FSDP2 state dict ``dcp`` saves into and loads into: ``{"model", ["optimizer"]}``."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    if optimizer is None:
        return {"model": get_model_state_dict(model)}
    model_sd, optim_sd = get_state_dict(model, optimizer)
    return {"model": model_sd, "optimizer": optim_sd}
