"""``mixprec train key=value ...``: train a detector (same keys as ``Model.train``)."""

from __future__ import annotations

from typing import Any

from mixprec.vision.cfg import TRAIN_KEYS

SUMMARY = ("Train a YOLO-style detector with mixed precision (amp=True picks the policy for "
           "the device), e.g. mixprec train model=det-n.yaml data=shapes.yaml epochs=20 imgsz=256")
KEYS = TRAIN_KEYS


def run(config: dict[str, Any]) -> int:
    from mixprec.vision.trainer import train

    result = train(config)
    if result.metrics is not None:
        m = result.metrics.box
        print(f"final: mAP50={m.map50:.4f} mAP50-95={m.map:.4f} ({result.best})")
    return 0
