"""``mixprec benchmark key=value ...``: size, mAP and CPU latency per deployment format."""

from __future__ import annotations

from typing import Any

from mixprec.keys import Key

SUMMARY = ("Compare deployment formats of one checkpoint: file size, mAP50-95 (segment3d: Dice) and "
           "median CPU latency per image, e.g. mixprec benchmark model=best.pt data=shapes.yaml "
           "formats=pt,onnx,onnx-half,onnx-int8")
KEYS: dict[str, Key] = {
    "model": Key("runs/detect/train/weights/best.pt", "a trained .pt checkpoint"),
    "data": Key(None, "data YAML: mAP (segment3d: Dice) on its val split, INT8 calibration, latency images"),
    "formats": Key(["pt", "onnx", "onnx-half", "onnx-int8"], "comma-separated formats", kind="list"),
    "imgsz": Key(None, "image size (segment3d: the patch, x or x,y,z); None: the checkpoint's training size"),
    "fraction": Key(0.25, "fraction of the val images that calibrate INT8"),
    "keep_float": Key(None, "INT8: what stays FP32; None: the task's default (detect: dfl, box, none; "
                            "segment3d: norm, none)"),
    "images": Key(50, "val images timed per round (batch 1)"),
    "warmup": Key(5, "untimed calls per format before timing"),
    "rounds": Key(3, "timing rounds (formats interleaved)"),
    "threads": Key(0, "CPU threads for PyTorch and onnxruntime (0: their defaults)"),
    "datasets_dir": Key("datasets", "where built-in datasets are generated"),
    "project": Key("runs/benchmark", "output folder"),
    "name": Key("benchmark", "run name (incremented: benchmark, benchmark2, ...)"),
    "exist_ok": Key(False, "reuse project/name instead of incrementing"),
}


def run(config: dict[str, Any]) -> int:
    from mixprec.cli.timing_env import print_timing_warning
    from mixprec.export.benchmark import BenchmarkConfig, benchmark, to_markdown
    from mixprec.io import increment_path

    c = dict(config)
    if not c["data"]:
        raise ValueError("give data=... (e.g. data=shapes.yaml)")
    print_timing_warning(int(c["threads"] or 0))
    save_dir = increment_path(c.pop("project"), c.pop("name"), bool(c.pop("exist_ok")))
    cfg = BenchmarkConfig(**{**c, "model": str(c["model"]), "data": str(c["data"]),
                             "formats": tuple(str(f) for f in c["formats"])})
    result = benchmark(cfg, save_dir)
    print(to_markdown(result))
    print(f"wrote {save_dir / 'benchmark.json'} and {save_dir / 'benchmark.md'}")
    return 0
