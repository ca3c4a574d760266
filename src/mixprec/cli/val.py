"""``mixprec val key=value ...``: COCO mAP of a checkpoint on a data YAML."""

from __future__ import annotations

from typing import Any

from mixprec.cli.args import model_arg
from mixprec.vision.cfg import VAL_KEYS

SUMMARY = "Validate a detector checkpoint: COCO mAP50 and mAP50-95 (pycocotools), P and R"
KEYS = VAL_KEYS


def keys_for(argv: list[str]) -> dict[str, Any]:
    """The val keys of the checkpoint's task (``model=`` names it)."""
    model = model_arg(argv)
    if model is None:
        return KEYS
    from mixprec.vision.task import task_for_model

    return task_for_model(model).val_keys


def run(config: dict[str, Any]) -> int:
    from mixprec.vision.model import Model

    config = dict(config)
    model = Model(config.pop("model"))
    # keys left at their default fall back to the checkpoint's training args inside val()
    keys = model.task.val_keys
    given = {k: v for k, v in config.items() if v != keys[k].default}
    model.val(**given)
    return 0
