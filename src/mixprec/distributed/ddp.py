"""``DistributedDataParallel`` with a mixprec ``Precision``: reduction dtype and master weights.

Order: ``model, opt = prec.setup(model, opt)`` first (it may cast parameters, which must happen
before DDP builds its buckets), then ``model = ddp(model, opt, prec)``.

Gradient reduction dtype. DDP all-reduces gradients in the dtype of the parameters: FP32 for
``32``/``*-mixed``, half for ``*-master``. ``ddp`` makes the reduction FP32 by default in every
case: half gradient buckets go through ``fp32_reduce_hook`` (upcast, average in FP32, round once
back). ``reduce_dtype=torch.bfloat16``/``torch.float16`` instead registers torch's own
``bf16_compress_hook``/``fp16_compress_hook``: half the bytes on the wire, at the cost of one
rounding of every averaged gradient to 8 (BF16) or 11 (FP16) significant bits, and for FP16 of
overflow to inf when a loss-scaled gradient averaged over ranks exceeds 65504 (the dynamic scaler
then skips the step and backs off, on every rank).

Master weights. ``MasterWeights`` normally moves each half gradient to its FP32 master in a
post-accumulate-grad hook. Under DDP that hook fires before DDP's all-reduce has written the
averaged gradient (verified with gloo on CPU: the masters received the local gradient and DDP's
result landed on ``param.grad`` afterwards), so ``ddp`` switches the optimizer to collecting
gradients at step time (``MasterWeights.defer_grads``) and broadcasts rank 0's masters, as DDP
broadcasts rank 0's parameters.
"""

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

from mixprec.master import MasterWeights
from mixprec.policy import parse_dtype

__all__ = ["ddp", "fp32_reduce_hook"]

_HALF = (torch.float16, torch.bfloat16)


def fp32_reduce_hook(process_group: Any, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: average a (half) gradient bucket in FP32.

    The bucket is upcast to FP32, divided by the world size, all-reduced (sum), and written back
    to the bucket rounded once to its dtype. Twice the bytes of a half all-reduce; no
    accumulation error and no FP16 overflow in the sum. Asynchronous (returns a future)."""
    group = process_group if process_group is not None else dist.group.WORLD
    buffer = bucket.buffer()
    wide = buffer.to(torch.float32).div_(group.size())

    def write_back(fut: torch.futures.Future) -> torch.Tensor:
        buffer.copy_(fut.value()[0])
        return buffer

    return dist.all_reduce(wide, group=group, async_op=True).get_future().then(write_back)


def ddp(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    precision: Any = None,
    *,
    reduce_dtype: str | torch.dtype | None = None,
    process_group: Any = None,
    **ddp_kwargs: Any,
) -> DistributedDataParallel:
    """Wrap ``model`` (already prepared by ``precision.setup``) in ``DistributedDataParallel``.

    ``reduce_dtype``: ``None``/``float32`` (default) averages gradients in FP32; ``bfloat16`` or
    ``float16`` compresses them with torch's ``bf16_compress_hook``/``fp16_compress_hook``.
    ``optimizer``: the optimizer ``setup`` returned; a ``MasterWeights`` is switched to step-time
    gradient collection and its masters are broadcast from rank 0. ``ddp_kwargs`` go to DDP
    (e.g. ``device_ids=[local_rank]`` on CUDA). ``process_group``: DDP's group, also handed to
    ``precision`` so that its inf/NaN verdict is all-reduced over the same ranks. Collective at
    construction (broadcasts)."""
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("torch.distributed is not initialised: launch with torchrun (or call "
                           "torch.distributed.init_process_group) before mixprec.distributed.ddp")
    if isinstance(model, DistributedDataParallel):
        raise ValueError("model is already wrapped in DistributedDataParallel: pass the plain "
                         "model returned by prec.setup(model, optimizer)")
    if precision is not None and getattr(precision, "model", None) is None:
        raise ValueError("call prec.setup(model, optimizer) before mixprec.distributed.ddp: setup "
                         "may cast parameters, which must happen before DDP builds its buckets")
    dtype = parse_dtype(reduce_dtype) if reduce_dtype is not None else torch.float32
    if dtype not in (torch.float32, *_HALF):
        raise ValueError(f"reduce_dtype={reduce_dtype!r}: use float32, bfloat16 or float16")
    wrapped = DistributedDataParallel(model, process_group=process_group, **ddp_kwargs)
    if precision is not None:
        precision.process_group = process_group  # found-inf is all-reduced over DDP's ranks only
    has_half_grads = any(p.requires_grad and p.dtype in _HALF for p in model.parameters())
    if dtype == torch.bfloat16:
        wrapped.register_comm_hook(process_group, default_hooks.bf16_compress_hook)
    elif dtype == torch.float16:
        wrapped.register_comm_hook(process_group, default_hooks.fp16_compress_hook)
    elif has_half_grads:
        wrapped.register_comm_hook(process_group, fp32_reduce_hook)
    if isinstance(optimizer, MasterWeights):
        optimizer.defer_grads()
        with torch.no_grad():
            for master in optimizer.masters:
                dist.broadcast(master, src=dist.get_global_rank(process_group, 0)
                               if process_group is not None else 0, group=process_group)
    return wrapped
