"""Every key the detection commands accept, with its default and meaning (``mixprec train
--help`` prints this table; ``Model.train(**kwargs)`` takes the same keys). The keys of the
shared loop (epochs, optimizer, amp, ...) are ``mixprec.vision.task.LOOP_KEYS``."""

from __future__ import annotations

from mixprec.keys import Key, check_keys
from mixprec.vision.task import train_keys

__all__ = ["DETECT_KEYS", "PREDICT_KEYS", "TRAIN_KEYS", "VAL_KEYS", "check_keys"]

#: detection's own train keys (the loop adds LOOP_KEYS)
DETECT_KEYS: dict[str, Key] = {
    "model": Key("det-n.yaml", "model YAML (det-n/det-s/det-v8n.yaml, a path) or a .pt checkpoint"),
    "data": Key("shapes8.yaml", "data YAML (YOLO format); shapes8.yaml/shapes.yaml are built in"),
    "imgsz": Key(640, "train/val image size (square, multiple of 32)"),
    "batch": Key(16, "images per batch; -1 picks the largest batch that fits (mixprec.bench)"),
    "patience": Key(100, "stop after this many epochs without mAP50-95 improvement"),
    "close_mosaic": Key(10, "switch mosaic off for the last N epochs"),
    "save_json": Key(False, "write predictions.json (COCO results) and ground_truth.json"),
    "plots": Key(True, "write results.png and annotated val images"),
    "box": Key(7.5, "box (CIoU) loss gain"),
    "cls": Key(0.5, "classification (BCE) loss gain"),
    "dfl": Key(1.5, "distribution focal loss gain"),
    "mosaic": Key(1.0, "mosaic probability"),
    "degrees": Key(0.0, "random rotation (+/- degrees)"),
    "translate": Key(0.1, "random translation (+/- fraction)"),
    "scale": Key(0.5, "random scale gain (+/- fraction)"),
    "hsv_h": Key(0.015, "hue augmentation: rotation about the grey axis, up to this fraction of a turn"),
    "hsv_s": Key(0.7, "saturation augmentation: gain in 1 +- this"),
    "hsv_v": Key(0.4, "value (brightness) augmentation: gain in 1 +- this"),
    "fliplr": Key(0.5, "horizontal flip probability"),
    "conf": Key(0.001, "validation confidence threshold"),
    "iou": Key(0.7, "NMS IoU threshold"),
    "max_det": Key(300, "maximum detections per image"),
    "project": Key("runs/detect", "folder that holds the runs"),
}

TRAIN_KEYS: dict[str, Key] = train_keys("detect", DETECT_KEYS)

VAL_KEYS: dict[str, Key] = {k: TRAIN_KEYS[k] for k in (
    "model", "data", "imgsz", "batch", "device", "workers", "amp", "precision", "emulate", "conf",
    "iou", "max_det", "save_json", "plots", "project", "name", "exist_ok", "datasets_dir", "verbose")}
VAL_KEYS = {**VAL_KEYS, "model": Key("runs/detect/train/weights/best.pt",
                                      "a .pt checkpoint or an exported .onnx"),
            "data": Key(None, "data YAML; None: the data the checkpoint was trained on"),
            "imgsz": Key(None, "image size; None: the checkpoint's training size"),
            "split": Key("val", "split to evaluate: val or test"),
            "name": Key("val", "run name; val, val2, ... unless exist_ok")}

PREDICT_KEYS: dict[str, Key] = {
    "model": Key("runs/detect/train/weights/best.pt", "a .pt checkpoint or an exported .onnx"),
    "source": Key(None, "an image path or a folder of images"),
    "imgsz": Key(None, "image size; None: an .onnx model's export size, else 640"),
    "conf": Key(0.25, "confidence threshold"),
    "iou": TRAIN_KEYS["iou"],
    "max_det": TRAIN_KEYS["max_det"],
    "device": TRAIN_KEYS["device"],
    "save": Key(True, "save annotated images to the run folder"),
    "project": Key("runs/detect", "folder that holds the runs"),
    "name": Key("predict", "run name; predict, predict2, ... unless exist_ok"),
    "exist_ok": TRAIN_KEYS["exist_ok"],
}
