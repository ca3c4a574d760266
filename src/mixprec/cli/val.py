"""``mixprec val key=value ...``: COCO mAP of a checkpoint on a data YAML."""

from __future__ import annotations

from typing import Any

from mixprec.vision.cfg import VAL_KEYS

SUMMARY = "Validate a detector checkpoint: COCO mAP50 and mAP50-95 (pycocotools), P and R"
KEYS = VAL_KEYS


def run(config: dict[str, Any]) -> int:
    from mixprec.vision.model import Model

    config = dict(config)
    model = Model(config.pop("model"))
    # keys left at their default fall back to the checkpoint's training args inside val()
    given = {k: v for k, v in config.items() if v != VAL_KEYS[k].default}
    model.val(**given)
    return 0
