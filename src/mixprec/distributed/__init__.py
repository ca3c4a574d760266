"""Mixed precision under PyTorch's own distributed engine: DDP and FSDP2, launched by torchrun.

mixprec does not bring a distributed engine of its own. ``Precision`` runs unchanged inside a
``DistributedDataParallel`` or ``fully_shard`` model (its inf/NaN verdict is all-reduced, so all
ranks skip or step together); this package adds the pieces around it:

- ``ddp(model, optimizer, precision, reduce_dtype=None)``: wrap a model prepared by
  ``Precision.setup`` in DDP with FP32 gradient reduction (or BF16/FP16 compression through
  torch's ``bf16_compress_hook``/``fp16_compress_hook``), and make ``*-master`` correct under DDP.
- ``mixed_precision_policy(policy)`` / ``fully_shard_model(model, policy)``: FSDP2 with a mixprec
  policy (sharded FP32 parameters are the master copy; normalisation layers stay FP32).
- ``save_checkpoint``/``load_checkpoint``: one call for DDP (rank 0 writes a file) and FSDP2
  (``torch.distributed.checkpoint`` writes a folder, every rank its shard); exact resume.
- ``rank()``, ``world_size()``, ``is_main_process()``, ``barrier()``, ``unwrap(model)``.
- ``mixprec.distributed.launch``: what the trainer uses for ``device=0,1`` (relaunch under
  torchrun, join the process group, shard the training loader).

See docs/distributed.md for the recipes.
"""

from mixprec.distributed.checkpoint import load_checkpoint, save_checkpoint
from mixprec.distributed.ddp import ddp, fp32_reduce_hook
from mixprec.distributed.fsdp import fully_shard_model, mixed_precision_policy
from mixprec.distributed.ranks import barrier, is_main_process, rank, unwrap, world_size

__all__ = [
    "barrier", "ddp", "fp32_reduce_hook", "fully_shard_model", "is_main_process", "load_checkpoint",
    "mixed_precision_policy", "rank", "save_checkpoint", "unwrap", "world_size",
]
