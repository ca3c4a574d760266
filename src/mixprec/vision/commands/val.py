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
    given = {k: v for k, v in config.items() if v != VAL_KEYS[k].default or k == "data"}
    if given.get("data") == VAL_KEYS["data"].default and model.ckpt is not None:
        given["data"] = model.ckpt["args"]["data"]
    model.val(**given)
    return 0
