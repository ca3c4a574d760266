"""``mixprec train key=value ...``: train a model of a vision task (same keys as ``Model.train``);
under torchrun this command joins the process group and passes the context to ``train``."""

from __future__ import annotations

from typing import Any

from mixprec.keys import Key
from mixprec.vision.cfg import TRAIN_KEYS

SUMMARY = ("Train a model with mixed precision (amp=True picks the policy for the device), e.g. "
           "mixprec train model=det-n.yaml data=shapes.yaml epochs=20 imgsz=256")
KEYS = TRAIN_KEYS  # detection's; keys() picks the keys of the task model=... belongs to


def keys(argv: list[str]) -> dict[str, Key]:
    from mixprec.cli.args import given_value
    from mixprec.vision.task import task_for_model

    return task_for_model(str(given_value(argv, "model", KEYS["model"].default))).train_keys()


def run(config: dict[str, Any]) -> int:
    from mixprec.cli.launch import needs_launch, relaunch
    from mixprec.distributed import launch as dp

    if needs_launch(config["device"]):  # device=0,1: one process per device under torchrun
        return relaunch("train", config)
    from mixprec.vision.trainer import train

    ctx = dp.init_from_launcher(config["device"]) if dp.launched_by_torchrun() else None
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
