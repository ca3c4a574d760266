"""``mixprec predict key=value ...``: detect objects in images with a checkpoint."""

from __future__ import annotations

from typing import Any

from mixprec.keys import Key
from mixprec.vision.cfg import PREDICT_KEYS

SUMMARY = "Detect objects in an image or a folder with a checkpoint; saves annotated images"
KEYS = PREDICT_KEYS  # detection's; keys() picks the checkpoint's task's own predict_keys if it has them


def keys(argv: list[str]) -> dict[str, Key]:
    from mixprec.cli.args import given_value
    from mixprec.vision.task import task_for_model

    task = task_for_model(str(given_value(argv, "model", KEYS["model"].default)))
    return getattr(task, "predict_keys", None) or KEYS


def run(config: dict[str, Any]) -> int:
    from mixprec.hardware import select_device
    from mixprec.vision.model import Model

    if not config["source"]:
        raise ValueError("give source=path/to/image.jpg or a folder")
    model = Model(config["model"])
    device = select_device(config["device"])
    if model.model is not None:
        model.model.to(device)
    elif device.type != "cpu":  # an .onnx runs through onnxruntime: its CUDA provider
        from mixprec.export import OnnxBackend

        model.backend = OnnxBackend(config["model"], str(device))
    if getattr(model.task, "predict_keys", None):  # a task with its own keys runs its own predict
        return model.task.predict_command(model.model if model.model is not None else model.backend, config)
    results = model.predict(config["source"], config["imgsz"], config["conf"], config["iou"],
                            config["max_det"], config["save"], config["project"], config["name"],
                            config["exist_ok"])
    for r in results:
        found = ", ".join(f"{r.names[int(c)]} {s:.2f}" for c, s in zip(r.classes, r.scores,
                                                                         strict=True))
        print(f"{r.path}: {len(r)} objects{': ' + found if found else ''}")
    return 0
