"""``mixprec predict key=value ...``: detect objects in images with a checkpoint."""

from __future__ import annotations

from typing import Any

from mixprec.cli.args import model_arg
from mixprec.vision.cfg import PREDICT_KEYS

SUMMARY = "Detect objects in an image or a folder with a checkpoint; saves annotated images"
KEYS = PREDICT_KEYS


def keys_for(argv: list[str]) -> dict[str, Any]:
    """The predict keys of the checkpoint's task (a task may declare its own ``predict_keys``)."""
    model = model_arg(argv)
    if model is None:
        return KEYS
    from mixprec.vision.task import task_for_model

    return getattr(task_for_model(model), "predict_keys", None) or KEYS


def run(config: dict[str, Any]) -> int:
    from mixprec.vision.model import Model
    from mixprec.vision.precision_choice import select_device

    if not config["source"]:
        raise SystemExit("mixprec predict: give source=path/to/image.jpg or a folder")
    model = Model(config["model"])
    model.model.to(select_device(config["device"]))
    if getattr(model.task, "predict_keys", None):  # a task with its own keys runs its own predict
        return model.task.predict_command(model.model, config)
    results = model.predict(config["source"], config["imgsz"], config["conf"], config["iou"],
                            config["max_det"], config["save"], config["project"], config["name"],
                            config["exist_ok"])
    for r in results:
        found = ", ".join(f"{r.names[int(c)]} {s:.2f}" for c, s in zip(r.classes, r.scores,
                                                                         strict=True))
        print(f"{r.path}: {len(r)} objects{': ' + found if found else ''}")
    return 0
