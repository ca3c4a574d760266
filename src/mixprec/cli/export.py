"""``mixprec export key=value ...``: a checkpoint to a checked ONNX file (FP32, FP16 or INT8)."""

from __future__ import annotations

from typing import Any

from mixprec.export.config import EXPORT_KEYS

SUMMARY = ("Export a checkpoint to ONNX: FP32, half=True (FP16) or int8=True data=... (static "
           "INT8, calibrated on val images), e.g. mixprec export model=best.pt format=onnx")
KEYS = EXPORT_KEYS


def run(config: dict[str, Any]) -> int:
    from mixprec.export import ExportConfig, read_metadata
    from mixprec.vision.model import Model

    config = dict(config)
    # ExportError/MetadataError are ValueErrors: the CLI prints them as one line (exit 2)
    ExportConfig.from_kwargs(**{k: v for k, v in config.items() if k != "model"})  # fail fast
    model = Model(config.pop("model"))
    path = model.export(**config)
    meta = read_metadata(path)
    check = meta.get("check", {})
    key = next((k[:-5] for k in check if k.endswith("_int8")), None)
    if key is not None:
        detail = (f"INT8 {check.get('score', key)} {check[key + '_int8']:.4f} vs FP32 "
                  f"{check[key + '_fp32']:.4f} on {check['images']} val {check.get('unit', 'images')}")
    elif check:
        detail = (f"max relative error vs PyTorch FP32 {check['max_rel_err']:.2g} "
                  f"(allowed {check['tolerance']:g})")
    else:
        detail = "not checked (check=False)"
    print(f"exported {path} ({meta['precision']}, imgsz {meta['imgsz']}, "
          f"{path.stat().st_size / 1e6:.2f} MB): {detail}")
    return 0
