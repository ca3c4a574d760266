"""Where a training step's time goes, per phase and per op class, FP32 against low precision.

Builds the run the trainer builds (``mixprec.vision.trainer.build``: the task's data, model and
loss, ``Precision``, optimizer, EMA) and times its step (data loading and ``task.inputs``, the
forward under ``prec.autocast()``, the loss, ``prec.backward``, ``prec.step`` with clipping, the
EMA update) for ``--steps`` steps per variant, alternating variants step by step so machine
noise hits them alike, and prints:

* per phase: median milliseconds per step and its share, for each variant, and the ratio to
  the first variant;
* per op class (``torch.profiler``, self CPU time over the profiled steps): convolution/GEMM,
  normalisation, elementwise/activation, dtype casts (every ``copy_`` between two dtypes:
  where a conversion's work is), layout copies, concat/split, reductions,
  the optimizer's multi-tensor kernels, inductor's fused kernels (a compiled graph's self time:
  its fused C++/Triton kernels are not separate events), and everything else -- what
  share of the step is the arithmetic the low-precision units speed up, and what is not.

A variant is a precision, optionally compiled (``--compile``: each precision eager *and*
compiled, ``compile=True``'s ``torch.compile``, compiled before timing) and in a memory layout
(``--channels-last``: ``task`` as the trainer runs it -- detection NHWC, segment3d NCDHW --,
``on``/``off`` to force channels-last (``channels_last_3d`` for 5-D) or the contiguous layout on
the model and its inputs, ``both`` for on and off side by side).

    python benchmarks/profile_precision.py [--task detect] [--model det-n.yaml] [--data shapes.yaml]
        [--imgsz 192] [--batch 16] [--steps 12] [--precisions 32,bf16-mixed] [--compile]
        [--channels-last task|on|off|both] [--copies 12] [--threads 0] [--json out.json]
    python benchmarks/profile_precision.py --task segment3d --model unet3d-n.yaml --patch 64 --batch 2

Timing needs a quiet machine (nothing else using the cores). The op-class shares are read from
one profiled pass per variant after the timed steps. The image cache is filled before timing
(when the dataset caches), so "data" is the steady-state cost of augmentation and collation,
not first-epoch decoding. Batches smaller than ``--batch`` (an epoch's last) are skipped, so
every timed step has the same shape.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from mixprec.hardware import describe_device
from mixprec.io import atomic_write_text

PHASES = ("data", "forward", "loss", "backward", "step", "ema")


@dataclass(frozen=True)
class Variant:
    """One profiled configuration: a precision preset, eager or compiled, a memory layout."""

    precision: str
    compile: bool = False
    layout: str = "task"  # task | on | off

    @property
    def label(self) -> str:
        return (self.precision + ("+compile" if self.compile else "")
                + ("" if self.layout == "task" else f"+cl-{self.layout}"))


def variants(precisions: list[str], compile: bool, channels_last: str) -> list[Variant]:
    """Every precision x (eager[, compiled]) x layout(s); the first is the ratios' base."""
    layouts = ["on", "off"] if channels_last == "both" else [channels_last]
    return [Variant(p, c, lay) for c in ([False, True] if compile else [False]) for lay in layouts
            for p in precisions]

# first match wins; names are aten ops (self time, so a composite op's children count apart)
OP_CLASSES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("data loading", ("dataloader", "enumerate(")),
    ("fused (inductor)", ("cpp_fused", "triton_", "kernel_cpp", "compiledfxgraph", "compiledfunction")),
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


def _layout(x: torch.Tensor, how: str) -> torch.Tensor:
    if how == "task" or x.dim() not in (4, 5):
        return x
    fmt = torch.contiguous_format if how == "off" else \
        (torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    return x.contiguous(memory_format=fmt)


def _set_model_layout(model: torch.nn.Module, how: str, dims: int) -> None:
    if how != "task":
        fmt = torch.contiguous_format if how == "off" else \
            (torch.channels_last if dims == 4 else torch.channels_last_3d)
        model.to(memory_format=fmt)


def build_run(args: argparse.Namespace, variant: Variant, project: Path) -> dict:
    """The trainer's run (``trainer.build``) for ``variant``, same seed for every variant; the
    layout applied to the model (and its EMA) before compiling."""
    from mixprec.keys import check_keys
    from mixprec.vision.compiled import compile_step
    from mixprec.vision.task import get_task
    from mixprec.vision.train_args import check_train_values
    from mixprec.vision.trainer import build

    task = get_task(args.task)
    given = {"model": args.model, "batch": args.batch, "workers": args.workers, "device": "cpu",
             "precision": variant.precision, "optimizer": "AdamW", "lr0": 0.001, "momentum": 0.9,
             "warmup_epochs": 0.0, "epochs": 10, "project": str(project), "name": variant.label,
             "exist_ok": True, "verbose": False, "plots": False, "datasets_dir": args.datasets_dir,
             "seed": 0}
    if args.data:
        given["data"] = args.data
    if args.task == "segment3d":
        given |= {"patch": args.patch, "iterations": max(args.steps, 8)}
    else:
        given["imgsz"] = args.imgsz
    targs = check_keys(given, task.train_keys(), "train")
    check_train_values(targs)
    torch.manual_seed(0)
    st = build(targs, task=task)
    x, _ = task.synthetic_batch(st.args, st.args["batch"], task.num_classes(st.data))
    _set_model_layout(st.model, variant.layout, x.dim())
    _set_model_layout(st.ema.ema, variant.layout, x.dim())
    forward, loss_fn = st.model, st.loss_fn
    if variant.compile:
        warm = [(_layout(x, variant.layout), task.synthetic_batch(st.args, st.args["batch"],
                                                                  task.num_classes(st.data))[1])]
        forward, loss_fn = compile_step(st.model, st.loss_fn, warm, st.prec.autocast, task.compile_loss,
                                        task.compile_loss_note)
    loader = st.train_loader
    if getattr(loader.dataset, "cache", None) is not None:  # steady state: decode once, up front
        loader.dataset.fill_cache()
    loader.dataset.set_epoch(0)
    loader.sampler.set_epoch(0)
    return {"st": st, "task": task, "forward": forward, "loss_fn": loss_fn, "variant": variant,
            "batch": int(st.train_loader.batch_size), "max_norm": float(st.args["max_norm"]),
            "loader": loader, "it": iter(loader)}


def next_batch(run: dict):
    """The next full batch (an epoch's smaller last batch is skipped: one shape throughout; a
    dataset smaller than ``--batch`` gives batches of the whole dataset)."""
    for _ in range(3):
        try:
            batch = next(run["it"])
        except StopIteration:
            run["it"] = iter(run["loader"])
            batch = next(run["it"])
        inputs, _ = run["task"].inputs(batch, torch.device("cpu"))
        if inputs.shape[0] == run["batch"]:
            return batch, inputs
    raise ValueError(f"no batch of {run['batch']} samples: lower --batch")


def timed_step(run: dict) -> dict[str, float]:
    """One training step; wall milliseconds per phase (CPU: no device sync needed)."""
    st, task = run["st"], run["task"]
    t = [time.perf_counter()]
    batch, _ = next_batch(run)
    inputs, targets = task.inputs(batch, st.device)
    inputs = _layout(inputs, run["variant"].layout)
    t.append(time.perf_counter())
    model, prec = st.model, st.prec
    model.train()
    with prec.autocast():
        outputs = run["forward"](inputs)
    t.append(time.perf_counter())
    loss, _ = run["loss_fn"](outputs, targets)
    t.append(time.perf_counter())
    prec.backward(loss)
    t.append(time.perf_counter())
    stepped = prec.step(st.optimizer, max_norm=run["max_norm"])
    st.optimizer.zero_grad(set_to_none=True)
    t.append(time.perf_counter())
    if stepped:
        st.ema.update(model)
    t.append(time.perf_counter())
    return {p: 1000 * (b - a) for p, a, b in zip(PHASES, t[:-1], t[1:], strict=True)}


CAST_COPY = "aten::copy_ between dtypes (to_dtype)"


def is_conversion(ev) -> bool:
    """An ``aten::copy_`` between two dtypes (recorded with ``record_shapes=True``)."""
    dtypes = [d for d in (getattr(ev, "input_dtypes", None) or [])[:2] if d]
    return ev.name == "aten::copy_" and len(dtypes) == 2 and dtypes[0] != dtypes[1]


def op_key(ev) -> str:
    """The name an event's self time is booked under: a dtype conversion does its work in an
    ``aten::copy_`` (inside ``aten::_to_copy``, whose own self time is only the allocation), so a
    copy between two dtypes counts as a cast; a copy within one dtype (``.contiguous()``, a
    ``.to(memory_format=...)``) stays a layout copy."""
    return CAST_COPY if is_conversion(ev) else ev.name


def op_times(run: dict, steps: int) -> dict[str, float]:
    """Self CPU milliseconds per op (``op_key``), per step, over ``steps`` profiled steps
    (shapes recorded: the dtypes tell casts from layout copies)."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            timed_step(run)
    out: dict[str, float] = defaultdict(float)
    for ev in prof.events():
        out[op_key(ev)] += ev.self_cpu_time_total / 1000 / steps
    return dict(out)


def copy_sources(run: dict, depth: int = 3) -> dict[str, dict[str, float]]:
    """What copies data in one step (counted, not timed): per chain of up to ``depth`` parent
    ops of each ``aten::copy_`` (e.g. ``aten::clone < aten::contiguous < aten::_fused_adamw_``),
    the calls and the elements copied (shapes recorded by ``torch.profiler``)."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        timed_step(run)
    out: dict[str, dict[str, float]] = defaultdict(lambda: {"calls": 0, "elements": 0})
    for ev in prof.events():
        if ev.name != "aten::copy_":
            continue
        chain, parent = [], ev.cpu_parent
        while parent is not None and len(chain) < depth:
            chain.append(parent.name)
            parent = parent.cpu_parent
        shape = ev.input_shapes[0] if ev.input_shapes and ev.input_shapes[0] else []
        n = 1
        for d in shape:
            n *= int(d)
        key = (" < ".join(chain) or "(top level)") + (" [dtype conversion]" if is_conversion(ev) else "")
        out[key]["calls"] += 1
        out[key]["elements"] += n
    return dict(out)


def by_class(op_ms: dict[str, float]) -> dict[str, float]:
    per_class: dict[str, float] = defaultdict(float)
    for name, ms in op_ms.items():
        per_class[op_class(name)] += ms
    return dict(per_class)


def tables(names: list[str], phases: dict[str, list[dict[str, float]]],
           ops: dict[str, dict[str, float]]) -> tuple[str, dict, dict]:
    """The phase and op-class tables (markdown, as docs/bf16-profile.md shows them), the median
    ms per phase and the step totals; ratios are to ``names[0]``."""
    base = names[0]
    med = {p: {ph: statistics.median(s[ph] for s in phases[p]) for ph in PHASES} for p in names}
    tot = {p: {"median": statistics.median(sum(s.values()) for s in phases[p]),
               "min": min(sum(s.values()) for s in phases[p])} for p in names}
    head = (" | ".join(f"`{p}` ms (share)" for p in names) + " | "
            + " | ".join(f"`{base}`/`{p}`" for p in names[1:]) + " |")
    rule = "|---" * (2 * len(names)) + "|"
    out = ["| phase | " + head, rule]
    for ph in PHASES:
        cells = [f"{med[p][ph]:.1f} ({med[p][ph] / sum(med[p].values()):.0%})" for p in names]
        ratios = [f"{med[base][ph] / max(med[p][ph], 1e-9):.2f}x" for p in names[1:]]
        out.append(f"| {ph} | " + " | ".join(cells + ratios) + " |")
    cells = [f"**{tot[p]['median']:.1f}** (min {tot[p]['min']:.1f})" for p in names]
    ratios = [f"**{tot[base]['median'] / tot[p]['median']:.2f}x**" for p in names[1:]]
    out.append("| **whole step** | " + " | ".join(cells + ratios) + " |")
    classes = sorted({c for p in names for c in ops[p]}, key=lambda c: -ops[base].get(c, 0.0))
    out += ["", "| op class (self CPU time, torch.profiler) | " + head, rule]
    for c in classes:
        cells = [f"{ops[p].get(c, 0):.1f} ({ops[p].get(c, 0) / max(sum(ops[p].values()), 1e-9):.0%})"
                 for p in names]
        ratios = [f"{ops[base].get(c, 0) / max(ops[p].get(c, 0), 1e-9):.2f}x" for p in names[1:]]
        out.append(f"| {c} | " + " | ".join(cells + ratios) + " |")
    return "\n".join(out), med, tot


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="detect", choices=("detect", "segment3d"))
    ap.add_argument("--model", default=None, help="default: det-n.yaml / unet3d-n.yaml")
    ap.add_argument("--data", default=None, help="default: shapes.yaml / the task's (organs3d.yaml)")
    ap.add_argument("--datasets-dir", default="datasets")
    ap.add_argument("--imgsz", type=int, default=192, help="detect: image size")
    ap.add_argument("--patch", default="64", help="segment3d: patch side (or x,y,z)")
    ap.add_argument("--batch", type=int, default=None, help="default: 16 (detect) / 2 (segment3d)")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--profile-steps", type=int, default=3)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--precisions", default="32,bf16-mixed")
    ap.add_argument("--compile", action="store_true",
                    help="also profile each precision compiled (compile=True's torch.compile)")
    ap.add_argument("--channels-last", default="task", choices=("task", "on", "off", "both"),
                    help="layout of the model and its inputs: as the trainer runs it, forced on/off, or both")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--top", type=int, default=12, help="also list the N costliest ops")
    ap.add_argument("--copies", type=int, default=0,
                    help="also list the N largest sources of copies (elements per step, counted)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    seg = args.task == "segment3d"
    args.model = args.model or ("unet3d-n.yaml" if seg else "det-n.yaml")
    args.data = args.data or (None if seg else "shapes.yaml")
    args.batch = args.batch or (2 if seg else 16)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    chosen = variants(precisions, args.compile, args.channels_last)
    names = [v.label for v in chosen]
    with tempfile.TemporaryDirectory(prefix="profile-runs-") as project:
        runs = {v.label: build_run(args, v, Path(project)) for v in chosen}
        for p in names:
            for _ in range(args.warmup):
                timed_step(runs[p])
        phases: dict[str, list[dict[str, float]]] = {p: [] for p in names}
        for _ in range(args.steps):  # interleaved: noise hits every variant alike
            for p in names:
                phases[p].append(timed_step(runs[p]))
        op_ms = {p: op_times(runs[p], args.profile_steps) for p in names}
        copies = {p: copy_sources(runs[p]) for p in names} if args.copies else {}
    ops = {p: by_class(op_ms[p]) for p in names}

    env = describe_device("cpu")
    size = f"patch {args.patch}" if args.task == "segment3d" else f"{args.imgsz} px"
    print(f"\n# {args.task}: {args.model}, {args.data or 'default data'}, {size}, batch {args.batch}, "
          f"{args.steps} steps, layout {args.channels_last}; torch {env['torch']}, {env['cores']} cores, "
          f"threads {torch.get_num_threads()}, flags {' '.join(env.get('cpu_flags', ()))}\n")
    text, med, tot = tables(names, phases, ops)
    print(text)
    for p in names:
        top = sorted(op_ms[p].items(), key=lambda kv: -kv[1])[:args.top]
        print(f"\n{p}: costliest ops (self CPU ms per step): "
              + ", ".join(f"{k} {v:.1f} [{op_class(k)}]" for k, v in top))
    for p, src in copies.items():
        top = sorted(src.items(), key=lambda kv: -kv[1]["elements"])[:args.copies]
        print(f"\n{p}: largest copy sources (one step; million elements, calls):")
        for chain, c in top:
            print(f"  {c['elements'] / 1e6:8.2f} M  {c['calls']:5d}  {chain}")
    if args.json:
        atomic_write_text(args.json, json.dumps({"args": vars(args) | {"json": str(args.json)},
                                                 "env": env, "variants": names, "phases_ms": med,
                                                 "step_ms": tot, "op_class_ms": ops, "op_ms": op_ms,
                                                 "copies": copies, "table": text}, indent=1, default=str))


if __name__ == "__main__":
    main()
