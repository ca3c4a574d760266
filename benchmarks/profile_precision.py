"""Where a training step's time goes, per phase and per op class, FP32 against low precision.

Runs the detection trainer's step (data loading, forward under ``prec.autocast()``, the FP32
loss, ``prec.backward``, ``prec.step`` with clipping, the EMA update) for ``--steps`` steps per
precision, alternating precisions step by step so machine noise hits them alike, and prints:

* per phase: median milliseconds per step and its share, for each precision, and the ratio;
* per op class (``torch.profiler``, self CPU time over the profiled steps): convolution/GEMM,
  normalisation, elementwise/activation, dtype casts, layout copies, concat/split, reductions,
  the optimizer's multi-tensor kernels, and everything else -- what share of the step is the
  arithmetic the low-precision units speed up, and what is not.

    python benchmarks/profile_precision.py [--model det-n.yaml] [--data shapes.yaml] [--imgsz 192]
        [--batch 16] [--steps 12] [--precisions 32,bf16-mixed] [--threads 0] [--json out.json]

Timing needs a quiet machine (nothing else using the cores). The op-class shares are read from
one profiled pass per precision after the timed steps. The image cache is filled before timing
(when the dataset caches), so "data" is the steady-state cost of augmentation and collation,
not first-epoch decoding.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from mixprec.hardware import describe_device
from mixprec.io import atomic_write_text
from mixprec.precision import Precision

PHASES = ("data", "forward", "loss", "backward", "step", "ema")

# first match wins; names are aten ops (self time, so a composite op's children count apart)
OP_CLASSES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("data loading", ("dataloader", "enumerate(")),
    ("conv/gemm", ("conv", "mkldnn_convolution", "addmm", "::mm", "bmm", "matmul", "linear",
                   "_convolution")),
    ("norm", ("batch_norm", "native_batch_norm", "layer_norm", "group_norm", "instance_norm")),
    ("cast", ("aten::to", "_to_copy", "to_dtype")),
    ("layout copy", ("copy_", "contiguous", "clone", "empty_like", "as_strided", "_reshape_alias")),
    ("concat/split", ("cat", "split", "chunk", "narrow", "slice", "stack", "unbind", "select")),
    ("optimizer", ("_foreach", "_fused_adam", "_fused_sgd", "lerp")),
    ("activation", ("silu", "sigmoid", "softmax", "log_softmax", "relu", "gelu")),
    ("elementwise", ("add", "mul", "sub", "div", "pow", "exp", "log", "clamp", "where", "neg",
                     "sqrt", "rsqrt", "abs", "maximum", "minimum", "fill_", "zero_", "lt", "gt",
                     "le", "ge", "eq", "ne", "logical", "bitwise")),
    ("reduction", ("sum", "mean", "max", "min", "amax", "norm", "topk", "sort", "argmax", "any",
                   "all", "cumsum")),
    ("pooling/upsample", ("pool", "upsample", "interpolate")),
)


def op_class(name: str) -> str:
    lowered = name.lower()
    for cls, keys in OP_CLASSES:
        if any(k in lowered for k in keys):
            return cls
    return "other"


def build_run(args: argparse.Namespace, precision: str):
    """A fresh detector, loss, optimizer, EMA and ``Precision`` (same seed for every precision)."""
    from mixprec.vision.data import build_dataloader, load_data_config
    from mixprec.vision.loss import DetectionLoss
    from mixprec.vision.models import DetectionModel, load_model_yaml
    from mixprec.vision.optim import ModelEMA, build_optimizer

    data = load_data_config(args.data, args.datasets_dir)
    torch.manual_seed(0)
    model = DetectionModel(load_model_yaml(args.model), nc=data.nc)
    loss_fn = DetectionLoss(model)
    optimizer = build_optimizer(model, "AdamW", 0.001, 0.9, 0.0005)
    prec = Precision(precision, device="cpu")
    model, optimizer = prec.setup(model, optimizer)
    loader = build_dataloader(data, "train", args.imgsz, args.batch, True, args.workers, 0)
    if getattr(loader.dataset, "cache", None) is not None:  # steady state: decode once, up front
        loader.dataset.fill_cache()
    loader.dataset.set_epoch(0)
    loader.sampler.set_epoch(0)
    return {"model": model, "loss_fn": loss_fn, "optimizer": optimizer, "prec": prec,
            "ema": ModelEMA(model), "loader": loader, "it": iter(loader)}


def next_batch(run: dict):
    try:
        return next(run["it"])
    except StopIteration:
        run["it"] = iter(run["loader"])
        return next(run["it"])


def timed_step(run: dict) -> dict[str, float]:
    """One training step; wall milliseconds per phase (CPU: no device sync needed)."""
    t = [time.perf_counter()]
    batch = next_batch(run)
    images = batch["images"].float() / 255
    t.append(time.perf_counter())
    model, prec = run["model"], run["prec"]
    model.train()
    with prec.autocast():
        maps = model(images)
    t.append(time.perf_counter())
    loss, _ = run["loss_fn"](maps, batch["targets"])
    t.append(time.perf_counter())
    prec.backward(loss)
    t.append(time.perf_counter())
    stepped = prec.step(run["optimizer"], max_norm=10.0)
    run["optimizer"].zero_grad(set_to_none=True)
    t.append(time.perf_counter())
    if stepped:
        run["ema"].update(model)
    t.append(time.perf_counter())
    return {p: 1000 * (b - a) for p, a, b in zip(PHASES, t[:-1], t[1:], strict=True)}


def op_times(run: dict, steps: int) -> dict[str, float]:
    """Self CPU milliseconds per op, per step, over ``steps`` profiled steps."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            timed_step(run)
    return {ev.key: ev.self_cpu_time_total / 1000 / steps for ev in prof.key_averages()}


def by_class(op_ms: dict[str, float]) -> dict[str, float]:
    per_class: dict[str, float] = defaultdict(float)
    for name, ms in op_ms.items():
        per_class[op_class(name)] += ms
    return dict(per_class)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="det-n.yaml")
    ap.add_argument("--data", default="shapes.yaml")
    ap.add_argument("--datasets-dir", default="datasets")
    ap.add_argument("--imgsz", type=int, default=192)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--profile-steps", type=int, default=3)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--precisions", default="32,bf16-mixed")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--top", type=int, default=12, help="also list the N costliest ops")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [p.strip() for p in args.precisions.split(",") if p.strip()]
    runs = {p: build_run(args, p) for p in names}
    for p in names:
        for _ in range(args.warmup):
            timed_step(runs[p])
    phases: dict[str, list[dict[str, float]]] = {p: [] for p in names}
    for _ in range(args.steps):  # interleaved: noise hits every precision alike
        for p in names:
            phases[p].append(timed_step(runs[p]))
    op_ms = {p: op_times(runs[p], args.profile_steps) for p in names}
    ops = {p: by_class(op_ms[p]) for p in names}

    env = describe_device("cpu")
    print(f"# {args.model}, {args.data}, {args.imgsz} px, batch {args.batch}, {args.steps} steps; "
          f"torch {env['torch']}, {env['cores']} cores, flags {' '.join(env.get('cpu_flags', ()))}")
    base = names[0]
    med = {p: {ph: statistics.median(s[ph] for s in phases[p]) for ph in PHASES} for p in names}
    tot = {p: {"median": statistics.median(sum(s.values()) for s in phases[p]),
               "min": min(sum(s.values()) for s in phases[p])} for p in names}
    print("\n| phase | " + " | ".join(f"{p} ms (share)" for p in names) + " | "
          + " | ".join(f"{base}/{p}" for p in names[1:]) + " |")
    print("|---" * (1 + 2 * len(names) - 1) + "|")
    for ph in PHASES:
        cells = [f"{med[p][ph]:.1f} ({med[p][ph] / sum(med[p].values()):.0%})" for p in names]
        ratios = [f"{med[base][ph] / max(med[p][ph], 1e-9):.2f}x" for p in names[1:]]
        print(f"| {ph} | " + " | ".join(cells + ratios) + " |")
    cells = [f"{tot[p]['median']:.1f} (min {tot[p]['min']:.1f})" for p in names]
    ratios = [f"{tot[base]['median'] / tot[p]['median']:.2f}x" for p in names[1:]]
    print("| step | " + " | ".join(cells + ratios) + " |")

    classes = sorted({c for p in names for c in ops[p]}, key=lambda c: -ops[base].get(c, 0.0))
    print("\n| op class (self CPU) | " + " | ".join(f"{p} ms (share)" for p in names) + " | "
          + " | ".join(f"{base}/{p}" for p in names[1:]) + " |")
    print("|---" * (1 + 2 * len(names) - 1) + "|")
    for c in classes:
        cells = [f"{ops[p].get(c, 0):.1f} ({ops[p].get(c, 0) / sum(ops[p].values()):.0%})"
                 for p in names]
        ratios = [f"{ops[base].get(c, 0) / max(ops[p].get(c, 0), 1e-9):.2f}x" for p in names[1:]]
        print(f"| {c} | " + " | ".join(cells + ratios) + " |")
    for p in names:
        top = sorted(op_ms[p].items(), key=lambda kv: -kv[1])[:args.top]
        print(f"\n{p}: costliest ops (self CPU ms per step): "
              + ", ".join(f"{k} {v:.1f} [{op_class(k)}]" for k, v in top))
    if args.json:
        atomic_write_text(args.json, json.dumps({"args": vars(args) | {"json": str(args.json)},
                                                 "env": env, "phases_ms": med, "step_ms": tot,
                                                 "op_class_ms": ops, "op_ms": op_ms}, indent=1, default=str))


if __name__ == "__main__":
    main()
