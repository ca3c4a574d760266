"""The keys of the ``segment3d`` task (the shared loop adds ``LOOP_KEYS``; defaults here override
the loop's where 3D segmentation differs: batch 2, AdamW, poly decay, nominal batch 2)."""

from __future__ import annotations

from mixprec.keys import Key
from mixprec.vision.task import train_keys

__all__ = ["PREDICT_KEYS", "SEG_KEYS", "TRAIN_KEYS", "VAL_KEYS"]

SEG_KEYS: dict[str, Key] = {
    "model": Key("unet3d-n.yaml", "model YAML (unet3d-n.yaml, unet3d-fullres.yaml, unet3d-s.yaml, a "
                                  "path) or a .pt checkpoint"),
    "data": Key("organs3d.yaml", "dataset.json / Decathlon folder / data YAML; organs3d.yaml and "
                                 "lesions3d.yaml are built in"),
    "patch": Key(64, "training patch and sliding-window size: one side (cubic) or x,y,z; multiples "
                     "of the model's divisor (16 for the built-in models)", kind="str"),
    "epochs": Key(50, "number of epochs"),
    "batch": Key(2, "patches per batch; -1 picks the largest batch that fits (mixprec.bench)"),
    "iterations": Key(100, "batches per epoch (patches are drawn at random, so an epoch is a budget)"),
    "optimizer": Key("AdamW", "SGD, AdamW, Adam or auto"),
    "lr0": Key(0.001, "initial learning rate"),
    "lrf": Key(0.0, "unused: the LR decays by poly (1 - t)^0.9 to 0, as nnU-Net"),
    "momentum": Key(0.9, "SGD momentum / Adam beta1"),
    "weight_decay": Key(3e-5, "weight decay"),
    "warmup_epochs": Key(1.0, "linear LR warmup length in epochs (at most epochs - 1)"),
    "warmup_momentum": Key(0.9, "momentum at the start of warmup"),
    "warmup_bias_lr": Key(0.0, "bias LR at the start of warmup (0: biases warm up like the rest)"),
    "nbs": Key(2, "nominal batch size: gradients accumulate over round(nbs / batch) batches"),
    "max_norm": Key(12.0, "gradient clipping max norm after unscaling (nnU-Net: 12)"),
    "workers": Key(0, "dataloader worker processes (patches are cut from volumes held in RAM)"),
    "augment": Key(True, "flips, rot90 in x-y, intensity gain/offset/noise"),
    "val_fraction": Key(0.2, "share of a dataset.json's training list held out when it has no "
                             "validation list"),
    "spacing": Key("auto", "resample every volume to one voxel spacing: auto (median of the training "
                           "cases), none (keep the voxels) or x,y,z in mm; stored in the checkpoint, "
                           "predict resamples back to each input's grid", kind="str"),
    "overlap": Key(0.5, "sliding-window overlap (validation and prediction)"),
    "hd95": Key(True, "also compute HD95 (mm) in the final validation (MONAI)"),
    "ce": Key(1.0, "cross-entropy loss gain"),
    "dice": Key(1.0, "soft-Dice loss gain"),
    "deep_supervision": Key(None, "None: as the model YAML says; True/False to override"),
}

TRAIN_KEYS: dict[str, Key] = train_keys("segment3d", SEG_KEYS)

VAL_KEYS: dict[str, Key] = {k: TRAIN_KEYS[k] for k in (
    "model", "data", "patch", "device", "workers", "amp", "precision", "emulate", "overlap", "hd95",
    "val_fraction", "seed", "plots", "project", "name", "exist_ok", "datasets_dir", "verbose")}
VAL_KEYS = {**VAL_KEYS, "model": Key("runs/segment3d/train/weights/best.pt", "a .pt checkpoint"),
            "data": Key(None, "data; None: the data the checkpoint was trained on"),
            "patch": Key(None, "sliding-window size; None: the checkpoint's training patch", kind="str"),
            "plots": Key(False, "unused by segment3d"),
            "split": Key("val", "split to evaluate: val or test"),
            "name": Key("val", "run name; val, val2, ... unless exist_ok")}

PREDICT_KEYS: dict[str, Key] = {
    "model": Key("runs/segment3d/train/weights/best.pt", "a .pt checkpoint"),
    "source": Key(None, "a .nii/.nii.gz volume or a folder of them"),
    "patch": Key(None, "sliding-window size; None: the checkpoint's training patch", kind="str"),
    "overlap": TRAIN_KEYS["overlap"],
    "probabilities": Key(False, "also write <name>_probs.nii.gz (float32, channel last)"),
    "device": TRAIN_KEYS["device"],
    "save": Key(True, "write the label maps (NIfTI) to the run folder"),
    "project": Key("runs/segment3d", "folder that holds the runs"),
    "name": Key("predict", "run name; predict, predict2, ... unless exist_ok"),
    "exist_ok": TRAIN_KEYS["exist_ok"],
}
