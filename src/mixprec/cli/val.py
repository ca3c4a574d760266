"""``mixprec val key=value ...``: the validation metric of a checkpoint (detection: COCO mAP)."""

from __future__ import annotations

from typing import Any

from mixprec.keys import Key
from mixprec.vision.cfg import VAL_KEYS

SUMMARY = "Validate a checkpoint (detector: COCO mAP50 and mAP50-95 with pycocotools, P and R)"
KEYS = VAL_KEYS  # detection's; keys() picks the keys of the checkpoint's task


def keys(argv: list[str]) -> dict[str, Key]:
    from mixprec.cli.args import given_value
    from mixprec.vision.task import task_for_model

    return task_for_model(str(given_value(argv, "model", KEYS["model"].default))).val_keys


def run(config: dict[str, Any]) -> int:
    from mixprec.vision.model import Model

    config = dict(config)
    model = Model(config.pop("model"))
    # keys left at their default fall back to the checkpoint's training args inside val()
    given = {k: v for k, v in config.items() if v != model.task.val_keys[k].default}
    model.val(**given)
    return 0
