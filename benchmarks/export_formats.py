"""Deployment formats of det-n on ``shapes``: file size, mAP50-95 and median CPU latency per
image for the PyTorch FP32 model and its ONNX FP32 / FP16 / INT8 exports, in one run.

    PYTHONPATH=src python3 benchmarks/export_formats.py                      # trains det-n first
    PYTHONPATH=src python3 benchmarks/export_formats.py --model runs/detect/train/weights/best.pt

Without ``--model`` it trains det-n (6 epochs at 160 px, FP32, as in docs/export.md) into
``--project``. The latency figures mean something only on a quiet machine; accuracy does
anywhere. Writes benchmark.json and benchmark.md (see ``mixprec benchmark --help``) and prints
the table plus the two goals: INT8 mAP50-95 within 0.01 of FP32, INT8 latency <= 0.5x FP32 ONNX.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mixprec.export.benchmark import BenchmarkConfig, benchmark, to_markdown
from mixprec.io import increment_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="a trained .pt (default: train det-n first)")
    ap.add_argument("--data", default="shapes.yaml")
    ap.add_argument("--datasets-dir", default="datasets")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--fraction", type=float, default=0.25)
    ap.add_argument("--keep-float", default="dfl")
    ap.add_argument("--images", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="0: the libraries' defaults")
    ap.add_argument("--project", default="runs/benchmark")
    a = ap.parse_args()
    model = a.model
    if model is None:
        from mixprec import Model

        det = Model("det-n.yaml")
        det.train(data=a.data, epochs=a.epochs, imgsz=160, batch=16, nbs=16, warmup_epochs=1,
                  close_mosaic=2, workers=1, amp=False, project=a.project, name="det-n",
                  datasets_dir=a.datasets_dir)
        model = det.source
    cfg = BenchmarkConfig(model=str(model), data=a.data, fraction=a.fraction,
                          keep_float=a.keep_float, images=a.images, rounds=a.rounds,
                          threads=a.threads, datasets_dir=a.datasets_dir)
    save_dir = increment_path(a.project, "export_formats")
    result = benchmark(cfg, Path(save_dir))
    print(to_markdown(result))
    rows = {r["format"]: r for r in result["rows"] if r["status"] == "ok"}
    if "onnx" in rows and "onnx-int8" in rows:
        f32, i8 = rows["onnx"], rows["onnx-int8"]
        drop = f32["map"] - i8["map"]
        ratio = i8["latency_ms"]["median"] / f32["latency_ms"]["median"]
        print(f"INT8 vs FP32 ONNX: mAP50-95 {i8['map']:.4f} vs {f32['map']:.4f} (drop {drop:+.4f}, "
              f"goal <= 0.01: {'met' if drop <= 0.01 else 'NOT met'}); latency {ratio:.2f}x "
              f"(goal <= 0.5x: {'met' if ratio <= 0.5 else 'NOT met'})")
    print(f"wrote {save_dir}/benchmark.json and benchmark.md")


if __name__ == "__main__":
    main()
