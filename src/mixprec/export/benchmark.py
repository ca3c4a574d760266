"""``benchmark``: one checkpoint in several deployment formats, side by side -- file size,
accuracy (the task's score on the val split, through the same validation code for every format:
detection mAP50-95 and mAP50, segment3d the mean foreground Dice of whole volumes by sliding
window) and median latency per image on the CPU (segment3d: per patch), measured in one run.

Formats: ``pt`` (the PyTorch model in FP32), ``onnx`` (FP32), ``onnx-half`` (FP16),
``onnx-int8`` (INT8 QDQ). Latency: batch 1, images already preprocessed (the network only, as
the backend seam runs it), ``warmup`` untimed calls per format, then ``rounds`` rounds in which
every format runs the same ``images`` images in turn (formats interleaved, so machine load
drifts alike); the median and min over all timed calls. PyTorch and onnxruntime get the same
thread count. Writes ``benchmark.json`` (schema ``mixprec.export-benchmark/1``) and
``benchmark.md``.
"""

from __future__ import annotations

import contextlib
import io
import json
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from mixprec.io import atomic_write_text

__all__ = ["BENCH_FORMATS", "SCHEMA", "benchmark", "to_markdown"]

SCHEMA = "mixprec.export-benchmark/1"
BENCH_FORMATS: dict[str, dict[str, Any]] = {
    "pt": {}, "onnx": {}, "onnx-half": {"half": True}, "onnx-int8": {"int8": True}}
_SUFFIX = {"onnx": "", "onnx-half": "_fp16", "onnx-int8": "_int8"}


@dataclass(frozen=True)
class BenchmarkConfig:
    model: str
    data: str
    formats: tuple[str, ...] = ("pt", "onnx", "onnx-half", "onnx-int8")
    imgsz: Any = None  # int, "h,w" or (segment3d) "x,y,z"; None: the training size
    fraction: float = 0.25
    keep_float: str | None = None  # None: the task's default
    images: int = 50
    warmup: int = 5
    rounds: int = 3
    threads: int = 0
    datasets_dir: str = "datasets"

    def __post_init__(self) -> None:
        bad = [f for f in self.formats if f not in BENCH_FORMATS]
        if bad or not self.formats:
            raise ValueError(f"formats={','.join(self.formats)}: unknown {bad or 'none given'}; "
                             f"use some of {','.join(BENCH_FORMATS)}")
        if not str(self.model).endswith(".pt"):
            raise ValueError(f"model={self.model}: benchmark a trained .pt checkpoint")
        for k in ("images", "rounds"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k}={getattr(self, k)}: use 1 or more")
        if self.warmup < 0 or self.threads < 0:
            raise ValueError("warmup and threads must be >= 0")


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _weights_bytes(model: torch.nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def benchmark(cfg: BenchmarkConfig, save_dir: Path, verbose: bool = True) -> dict[str, Any]:
    """Run the benchmark and write ``benchmark.json``/``benchmark.md`` into ``save_dir``;
    returns the JSON dict. A format that fails (e.g. an INT8 model that misses its accuracy
    check) gets a row with ``status: failed`` and the reason; the others still run."""
    from mixprec.export.backend import OnnxBackend
    from mixprec.export.config import _imgsz
    from mixprec.export.tasks import task_for_model
    from mixprec.hardware import describe_device
    from mixprec.vision.backend import TorchBackend
    from mixprec.vision.model import Model

    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    src = Model(cfg.model)
    task = task_for_model(src.model)
    size = task.input_size(_imgsz(cfg.imgsz), src.model, src.ckpt.get("args", {}))
    key = task.score_columns[0][0]  # the main score: map (detection), dice (segment3d)
    rows: dict[str, dict[str, Any]] = {}
    runners: dict[str, Any] = {}
    for fmt in cfg.formats:
        row: dict[str, Any] = {"format": fmt, "status": "ok", "error": None}
        try:
            if fmt == "pt":
                row.update(file=str(cfg.model), precision="fp32", file_bytes=Path(cfg.model).stat().st_size,
                           size_bytes=_weights_bytes(src.model))
                runners[fmt] = TorchBackend(src.model.float().eval().cpu())
            else:
                stem = Path(cfg.model).stem
                path = src.export(format="onnx", imgsz=size, data=cfg.data, fraction=cfg.fraction,
                                  keep_float=cfg.keep_float, datasets_dir=cfg.datasets_dir,
                                  file=str(save_dir / f"{stem}{_SUFFIX[fmt]}.onnx"),
                                  **BENCH_FORMATS[fmt])
                runners[fmt] = OnnxBackend(path, "cpu", threads=cfg.threads)
                row.update(file=str(path), precision=runners[fmt].precision,
                           file_bytes=path.stat().st_size, size_bytes=path.stat().st_size)
            with _torch_threads(cfg.threads):
                score = task.score(runners[fmt], cfg.data, size, None, cfg.datasets_dir)
            row.update({k: score[k] for k, _ in task.score_columns}, score=score["score"])
        except Exception as err:  # one failed format must not lose the others' figures
            row.update(status="failed", error=f"{type(err).__name__}: {err}")
            runners.pop(fmt, None)
        rows[fmt] = row
        if verbose:
            print(f"{fmt}: {row.get('score', float('nan')):.4f} {task.score_name}"
                  if row["status"] == "ok" else f"{fmt}: failed -- {row['error']}")
    _latency(runners, rows, task, cfg, size, task.metadata(src.model, src.ckpt))
    base = next((f for f in ("onnx", "pt") if rows.get(f, {}).get("status") == "ok"), None)
    for row in rows.values():
        if row["status"] == "ok" and base is not None:
            ref = rows[base]
            row[f"{key}_delta"] = row[key] - rows["pt"][key] if "pt" in runners else None
            row["latency_ratio"] = row["latency_ms"]["median"] / ref["latency_ms"]["median"]
            row["size_ratio"] = row["size_bytes"] / ref["size_bytes"]
    result = {"schema": SCHEMA, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "environment": {**describe_device("cpu"), "onnxruntime": _ort_version(),
                              "threads": cfg.threads or "default"},
              "config": {**cfg.__dict__, "formats": list(cfg.formats), "imgsz": list(size),
                         "keep_float": cfg.keep_float or task.keep_float[0]},
              "task": task.name, "score_columns": [list(c) for c in task.score_columns],
              "baseline": base, "rows": list(rows.values())}
    atomic_write_text(save_dir / "benchmark.json", json.dumps(result, indent=2))
    atomic_write_text(save_dir / "benchmark.md", to_markdown(result))
    return result


def _latency(runners: dict[str, Any], rows: dict[str, dict[str, Any]], task: Any,
             cfg: BenchmarkConfig, size: tuple[int, ...], meta: dict[str, Any]) -> None:
    """Median per-image (segment3d: per-patch) latency of each runner, formats interleaved
    round by round."""
    if not runners:
        return
    images = task.images(cfg.data, size, cfg.datasets_dir, meta)
    n = min(cfg.images, len(images))
    xs = [images.get(i)[None] for i in range(n)]
    times: dict[str, list[float]] = {f: [] for f in runners}
    with _torch_threads(cfg.threads), contextlib.ExitStack() as stack:
        runs = {f: stack.enter_context(r.running()) for f, r in runners.items()}
        for run in runs.values():
            for x in xs[:cfg.warmup]:
                run(x)
        for _ in range(cfg.rounds):
            for f, run in runs.items():
                for x in xs:
                    t0 = time.perf_counter()
                    run(x)
                    times[f].append(time.perf_counter() - t0)
    for f, t in times.items():
        rows[f]["latency_ms"] = {"median": 1e3 * statistics.median(t), "min": 1e3 * min(t),
                                 "calls": len(t)}


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def to_markdown(result: dict[str, Any]) -> str:
    """The benchmark as a Markdown table with the environment and config."""
    env, cfg = result["environment"], result["config"]
    base = result["baseline"]
    cols = result.get("score_columns", [["map", "mAP50-95"], ["map50", "mAP50"]])
    key, title = cols[0]
    seg = result.get("task") == "segment3d"
    unit = "patch" if seg else "img"
    md = ["# mixprec benchmark", "",
          f"{cfg['model']} on {cfg['data']} at {'patch' if seg else 'imgsz'} "
          f"{'x'.join(map(str, cfg['imgsz']))}; {env.get('name')}, "
          f"{env.get('cores')} cores, threads {env.get('threads')}, torch {env.get('torch')}, "
          f"onnxruntime {env.get('onnxruntime')}; created {result['created']}.", "",
          f"| format | precision | size (MB) | {' | '.join(t for _, t in cols)} | Δ {title} vs pt | "
          f"latency ms/{unit} (median) | latency vs {base} |",
          "|---|---|---|" + "---|" * len(cols) + "---|---|---|"]
    for r in result["rows"]:
        if r["status"] != "ok":
            md.append(f"| {r['format']} | failed: {r['error']} |" + "  |" * (len(cols) + 4))
            continue
        delta = "" if r.get(f"{key}_delta") is None else f"{r[f'{key}_delta']:+.4f}"
        scores = " | ".join(f"{r[k]:.4f}" for k, _ in cols)
        md.append(f"| {r['format']} | {r['precision']} | {r['size_bytes'] / 1e6:.2f} | {scores} | "
                  f"{delta} | {r['latency_ms']['median']:.2f} | "
                  f"{r.get('latency_ratio', float('nan')):.2f}x |")
    what = ("Dice: mean foreground Dice of the whole val volumes, Gaussian sliding window at "
            "overlap 0.5" if seg else "mAP: COCO (pycocotools) on the whole val split")
    md += ["", "Size: the ONNX file; for pt the FP32 weights (state_dict) alone, not the training "
           f"state the .pt also holds. {what}, same pre/post-processing for every format. "
           f"Latency: batch 1, network only, formats interleaved over {cfg['rounds']} rounds of "
           f"{cfg['images']} {'val patches' if seg else 'images'} after {cfg['warmup']} warm-up "
           f"calls. INT8 calibrated on fraction {cfg['fraction']} of the val "
           f"{'patches' if seg else 'images'}, keep_float={cfg['keep_float']}.", ""]
    return "\n".join(md)
