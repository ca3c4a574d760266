"""Every key the detection commands accept, with its default and meaning (``mixprec train
--help`` prints this table; ``Model.train(**kwargs)`` takes the same keys)."""

from __future__ import annotations

import difflib
from typing import Any

from mixprec.cliargs import Key

__all__ = ["PREDICT_KEYS", "TRAIN_KEYS", "VAL_KEYS", "check_keys"]

TRAIN_KEYS: dict[str, Key] = {
    "model": Key("det-n.yaml", "model YAML (det-n/det-s/det-v8n.yaml, a path) or a .pt checkpoint"),
    "data": Key("shapes8.yaml", "data YAML (YOLO format); shapes8.yaml/shapes.yaml are built in"),
    "epochs": Key(100, "number of epochs"),
    "imgsz": Key(640, "train/val image size (square, multiple of 32)"),
    "batch": Key(16, "images per batch; -1 picks the largest batch that fits (mixprec.bench)"),
    "device": Key(None, "cpu, 0, cuda:0 ...; None picks cuda:0 when available, else cpu"),
    "workers": Key(2, "dataloader worker processes"),
    "optimizer": Key("auto", "SGD, AdamW, Adam or auto (AdamW for <= 10k steps, else SGD)"),
    "lr0": Key(0.01, "initial learning rate (ignored with optimizer=auto)"),
    "lrf": Key(0.01, "final learning rate as a fraction of lr0"),
    "momentum": Key(0.937, "SGD momentum / Adam beta1 (ignored with optimizer=auto)"),
    "weight_decay": Key(0.0005, "weight decay, scaled by batch * accumulate / nbs"),
    "warmup_epochs": Key(3.0, "warmup length in epochs (at most epochs - 1)"),
    "warmup_momentum": Key(0.8, "momentum at the start of warmup"),
    "warmup_bias_lr": Key(0.1, "bias LR at the start of warmup (Ultralytics forces 0 with auto)"),
    "cos_lr": Key(False, "cosine learning-rate decay (else linear)"),
    "nbs": Key(64, "nominal batch size: gradients accumulate over round(nbs / batch) batches"),
    "max_norm": Key(10.0, "gradient clipping max norm (after unscaling)"),
    "amp": Key(True, "True: auto policy (check_amp on CUDA); False: FP32; or a preset such as "
                     "bf16-mixed, 16-mixed, bf16-master"),
    "emulate": Key(False, "emulate the policy's numerics in FP32 (mixprec.emulate)"),
    "val": Key(True, "validate every epoch (False: only after the last epoch)"),
    "resume": Key(False, "True (latest run, or model=.../last.pt) or a path to last.pt"),
    "patience": Key(100, "stop after this many epochs without mAP50-95 improvement"),
    "close_mosaic": Key(10, "switch mosaic off for the last N epochs"),
    "seed": Key(0, "random seed (shuffling, augmentation, initialisation)"),
    "project": Key("runs/detect", "folder that holds the runs"),
    "name": Key("train", "run name; train, train2, ... unless exist_ok"),
    "exist_ok": Key(False, "reuse the run folder if it exists"),
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
    "datasets_dir": Key("datasets", "where built-in datasets are generated"),
    "verbose": Key(True, "print progress bars and tables"),
}

VAL_KEYS: dict[str, Key] = {k: TRAIN_KEYS[k] for k in (
    "model", "data", "imgsz", "batch", "device", "workers", "amp", "emulate", "conf", "iou",
    "max_det", "save_json", "plots", "project", "name", "exist_ok", "datasets_dir", "verbose")}
VAL_KEYS = {**VAL_KEYS, "model": Key("runs/detect/train/weights/best.pt", "a .pt checkpoint"),
            "data": Key(None, "data YAML; None: the data the checkpoint was trained on"),
            "imgsz": Key(None, "image size; None: the checkpoint's training size"),
            "split": Key("val", "split to evaluate: val or test"),
            "name": Key("val", "run name; val, val2, ... unless exist_ok")}

PREDICT_KEYS: dict[str, Key] = {
    "model": Key("runs/detect/train/weights/best.pt", "a .pt checkpoint"),
    "source": Key(None, "an image path or a folder of images"),
    "imgsz": TRAIN_KEYS["imgsz"],
    "conf": Key(0.25, "confidence threshold"),
    "iou": TRAIN_KEYS["iou"],
    "max_det": TRAIN_KEYS["max_det"],
    "device": TRAIN_KEYS["device"],
    "save": Key(True, "save annotated images to the run folder"),
    "project": Key("runs/detect", "folder that holds the runs"),
    "name": Key("predict", "run name; predict, predict2, ... unless exist_ok"),
    "exist_ok": TRAIN_KEYS["exist_ok"],
}


def check_keys(given: dict[str, Any], keys: dict[str, Key], what: str) -> dict[str, Any]:
    """Defaults overlaid with ``given``; an unknown key raises ValueError with the nearest key."""
    for k in given:
        if k not in keys:
            close = difflib.get_close_matches(k, list(keys), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"unknown {what} argument '{k}'{hint}")
    return {**{k: v.default for k, v in keys.items()}, **given}
