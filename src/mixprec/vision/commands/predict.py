"""``mixprec predict key=value ...``: detect objects in images with a checkpoint."""

from __future__ import annotations

from typing import Any

from mixprec.vision.cfg import PREDICT_KEYS

SUMMARY = "Detect objects in an image or a folder with a checkpoint; saves annotated images"
KEYS = PREDICT_KEYS


def run(config: dict[str, Any]) -> int:
    from mixprec.vision.model import Model
    from mixprec.vision.precision_choice import select_device

    if not config["source"]:
        raise SystemExit("mixprec predict: give source=path/to/image.jpg or a folder")
    model = Model(config["model"])
    device = select_device(config["device"])
    if model.model is not None:
        model.model.to(device)
    elif device.type != "cpu":  # an .onnx runs through onnxruntime: its CUDA provider
        from mixprec.export import OnnxBackend

        model.backend = OnnxBackend(config["model"], str(device))
    results = model.predict(config["source"], config["imgsz"], config["conf"], config["iou"],
                            config["max_det"], config["save"], config["project"], config["name"],
                            config["exist_ok"])
    for r in results:
        found = ", ".join(f"{r.names[int(c)]} {s:.2f}" for c, s in zip(r.classes, r.scores,
                                                                         strict=True))
        print(f"{r.path}: {len(r)} objects{': ' + found if found else ''}")
    return 0
