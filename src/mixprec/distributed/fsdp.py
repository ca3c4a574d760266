"""FSDP2 (``torch.distributed.fsdp.fully_shard``) with a mixprec policy.

Under FSDP2 each rank keeps a shard of every parameter in the dtype the parameter had when it was
sharded; ``MixedPrecisionPolicy`` all-gathers it in ``param_dtype`` for compute and
reduce-scatters gradients in ``reduce_dtype``. So the FP32 sharded parameters *are* the master
copy (per-rank memory for parameters, gradients and optimizer state falls with the world size),
and ``Precision.setup`` on a sharded model neither casts parameters nor wraps the optimizer.

Mapping (``mixed_precision_policy``): ``param_dtype`` = the policy's compute dtype (None for FP32),
``reduce_dtype`` = FP32 unless asked otherwise, ``output_dtype`` = the policy's output dtype (on
the root module only). ``*-mixed`` and ``*-master`` therefore run the same way under FSDP2:
half compute on all-gathered half parameters, FP32 sharded master, FP32 gradient reduction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from mixprec.policy import Policy, parse_dtype
from mixprec.precision import NORM_LAYERS

__all__ = ["fully_shard_model", "mixed_precision_policy"]

_REDUCE = (torch.float32, torch.bfloat16, torch.float16)


def _reduce(reduce_dtype: str | torch.dtype | None) -> torch.dtype:
    dtype = parse_dtype(reduce_dtype) if reduce_dtype is not None else torch.float32
    if dtype not in _REDUCE:
        raise ValueError(f"reduce_dtype={reduce_dtype!r}: use float32, bfloat16 or float16")
    return dtype


def mixed_precision_policy(policy: str | Policy, reduce_dtype: str | torch.dtype | None = None,
                           *, root: bool = True) -> MixedPrecisionPolicy:
    """FSDP2 ``MixedPrecisionPolicy`` for a mixprec policy.

    ``param_dtype`` = compute dtype (None when FP32: no cast), ``reduce_dtype`` = FP32 by default
    (``"bf16"``/``"fp16"`` when asked: half the reduce-scatter bytes, one rounding of every
    averaged gradient), ``output_dtype`` = the policy's output dtype when ``root`` (inner units
    keep the compute dtype between them)."""
    p = Policy.parse(policy)
    if p.is_fp8:
        raise ValueError(f"{p} computes in FP8, which mixprec runs only under emulation on one "
                         "process; under FSDP2 use 'bf16-mixed'")
    compute = p.compute_dtype if p.compute_dtype != torch.float32 else None
    if p.casts_params and p.master_dtype is None:
        compute = p.param_dtype  # *-true: shards are already half; this casts the inputs to match
    output = p.output_dtype if root and p != Policy() else None
    return MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=_reduce(reduce_dtype),
                                output_dtype=output, cast_forward_inputs=True)


def _norm_policy(p: Policy, reduce_dtype: torch.dtype) -> MixedPrecisionPolicy:
    """Normalisation layers compute in FP32 (inputs cast up) and hand the compute dtype on."""
    return MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=reduce_dtype,
                                output_dtype=p.compute_dtype, cast_forward_inputs=True)


def fully_shard_model(
    model: nn.Module,
    policy: str | Policy,
    *,
    reduce_dtype: str | torch.dtype | None = None,
    units: tuple[type[nn.Module], ...] | Callable[[nn.Module], bool] | None = None,
    mesh: Any = None,
    reshard_after_forward: bool = True,
) -> FSDPModule:
    """Shard ``model`` in place with FSDP2 under ``policy``; returns it (now an ``FSDPModule``).

    ``units``: which submodules become their own FSDP unit (one all-gather each): module types or
    a predicate; default: the root's direct children that hold parameters (the members of a
    ``ModuleList``/``ModuleDict`` child each count as one). With half compute,
    every normalisation layer is its own unit kept in FP32 (FSDP2 has one dtype per unit).
    ``*-true`` presets cast non-normalisation parameters to the half dtype before sharding.
    Call once per model, after ``torch.distributed`` is initialised and before building the
    optimizer (the optimizer must see the sharded parameters); then ``prec.setup(model, opt)``.
    """
    p = Policy.parse(policy)
    if isinstance(model, FSDPModule):
        raise ValueError("model is already sharded with fully_shard: shard it once")
    reduce = _reduce(reduce_dtype)
    inner = mixed_precision_policy(p, reduce, root=False)
    if p.casts_params and p.master_dtype is None:
        with torch.no_grad():
            for m in model.modules():
                if not isinstance(m, NORM_LAYERS):
                    for q in m.parameters(recurse=False):
                        if q.is_floating_point():
                            q.data = q.data.to(p.param_dtype)
    if units is None:
        chosen = [m for child in model.children()
                  for m in (child.children() if isinstance(child, (nn.ModuleList, nn.ModuleDict))
                            else (child,))
                  if any(True for _ in m.parameters())]
    elif isinstance(units, tuple):
        chosen = [m for m in model.modules() if m is not model and isinstance(m, units)]
    else:
        chosen = [m for m in model.modules() if m is not model and units(m)]
    sharded: set[int] = set()
    kwargs = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
    if p.compute_dtype != torch.float32:
        for m in model.modules():  # norm layers first: fully_shard goes bottom-up
            if isinstance(m, NORM_LAYERS) and any(True for _ in m.parameters()) and m is not model:
                fully_shard(m, mp_policy=_norm_policy(p, reduce), **kwargs)
                sharded.add(id(m))
    for m in reversed(chosen):  # children before their parents
        if id(m) not in sharded:
            fully_shard(m, mp_policy=inner, **kwargs)
            sharded.add(id(m))
    fully_shard(model, mp_policy=mixed_precision_policy(p, reduce, root=True), **kwargs)
    return model  # type: ignore[return-value]

