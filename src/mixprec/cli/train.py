"""``mixprec train key=value ...``: train a detector (same keys as ``Model.train``)."""

from __future__ import annotations

from typing import Any

from mixprec.cli.args import model_arg
from mixprec.vision.cfg import TRAIN_KEYS

SUMMARY = ("Train a YOLO-style detector with mixed precision (amp=True picks the policy for "
           "the device), e.g. mixprec train model=det-n.yaml data=shapes.yaml epochs=20 imgsz=256")
KEYS = TRAIN_KEYS


def keys_for(argv: list[str]) -> dict[str, Any]:
    """The train keys of the task of ``model=`` (e.g. ``unet3d-n.yaml`` -> segment3d's keys)."""
    model = model_arg(argv)
    if model is None:
        return KEYS
    from mixprec.vision.task import task_for_model

    return task_for_model(model).train_keys()



def run(config: dict[str, Any]) -> int:
    from mixprec.distributed import launch as dp

    if dp.needs_launch(config["device"]):  # device=0,1: one process per device under torchrun
        return dp.relaunch("train", config)
    from mixprec.vision.trainer import train

    ctx = dp.init_from_launcher(config["device"])  # under torchrun: join the process group
    if ctx is not None and ctx.rank != 0:
        config = {**config, "verbose": False}  # no progress bars from the other ranks
    try:
        with dp.quiet_unless_main():  # rank 0 logs
            result = train(config, dist=ctx)
    finally:
        if ctx is not None:
            import torch.distributed as dist

            dist.destroy_process_group()
    if result.metrics is not None:
        from mixprec.vision.task import task_for_model

        print(f"final: {task_for_model(result.best).summary(result.metrics)} ({result.best})")
    return 0
