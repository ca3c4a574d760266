"""What BF16 gains per kernel class of a det-n training step, at det-n's own layer shapes.

A training step is convolutions (forward, input gradient, weight gradient) plus the passes
between them (BatchNorm forward and backward, SiLU forward and backward). This script records
every Conv-BN-SiLU block of det-n at ``--imgsz``/``--batch`` (forward hooks), then times each
kernel alone on random channels-last tensors of those shapes, FP32 and BF16 interleaved round
by round, and sums over the model's blocks. The output says which kernel classes gain from
BF16 on this CPU and by how much, and what the whole step could gain at most if everything
else in it (loss, optimizer, data, copies) took no time at all:

    bound = (sum of FP32 kernel times) / (sum of BF16 kernel times)

The first convolution's input gradient is not timed (images need no gradient). Kernels are
called through ``torch.ops.aten`` (``convolution_backward``, ``native_batch_norm_backward``,
``silu_backward``) so each is timed without autograd's bookkeeping; BatchNorm runs in training
mode (batch statistics), as in the step. Timings are per step (one call per block), min and
median over ``--rounds``.

    python benchmarks/bf16_kernels.py --imgsz 320 --batch 8 --threads 0
    python benchmarks/bf16_kernels.py --imgsz 320 --batch 8 --threads 1 --json k.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from mixprec.hardware import cpu_flags, cpu_model
from mixprec.vision.models.blocks import Conv
from mixprec.vision.models.detector import DetectionModel, load_model_yaml

aten = torch.ops.aten
CLASSES = ("conv forward", "conv input-grad", "conv weight-grad", "BatchNorm forward",
           "BatchNorm backward", "SiLU forward", "SiLU backward")


def block_shapes(model: nn.Module, x: torch.Tensor) -> list[dict]:
    """Input shape and conv hyper-parameters of every Conv-BN-act block, in call order."""
    found: list[dict] = []

    def hook(block: Conv, inp: tuple[torch.Tensor], _out: torch.Tensor) -> None:
        c = block.conv
        found.append({"x": tuple(inp[0].shape), "w": tuple(c.weight.shape), "stride": c.stride,
                      "padding": c.padding, "groups": c.groups, "act": not isinstance(block.act, nn.Identity),
                      "first": not found})

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, Conv)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return found


def block_tensors(shape: dict, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Random channels-last input, weight and output gradient of ``dtype`` for one block, the
    conv's output ``y`` and BatchNorm's FP32 parameters, running statistics and saved
    batch statistics (BatchNorm's parameters stay FP32 under autocast)."""
    cl = torch.channels_last
    t = {"x": torch.randn(shape["x"], dtype=dtype).to(memory_format=cl),
         "w": torch.randn(shape["w"], dtype=dtype).to(memory_format=cl)}
    t["y"] = torch.nn.functional.conv2d(t["x"], t["w"], None, shape["stride"], shape["padding"], 1,
                                        shape["groups"])
    t["g"] = torch.randn_like(t["y"])
    c = t["y"].shape[1]
    t["bn_w"], t["bn_b"], t["rm"], t["rv"] = torch.ones(c), torch.zeros(c), torch.zeros(c), torch.ones(c)
    _, t["mean"], t["invstd"] = aten.native_batch_norm(t["y"], t["bn_w"], t["bn_b"], t["rm"].clone(),
                                                       t["rv"].clone(), True, 0.1, 1e-3)
    return t


def kernels(shape: dict, t: dict[str, torch.Tensor]) -> dict[str, Callable[[], object]]:
    """One zero-argument call per kernel class for this block, on the tensors ``t``."""
    x, w, y, g = t["x"], t["w"], t["y"], t["g"]
    st, pd, gr = shape["stride"], shape["padding"], shape["groups"]

    def conv_backward(mask: tuple[bool, bool, bool]) -> Callable[[], object]:
        return lambda: aten.convolution_backward(g, x, w, None, st, pd, (1, 1), False, (0, 0), gr, mask)

    calls = {
        "conv forward": lambda: aten.convolution(x, w, None, st, pd, (1, 1), False, (0, 0), gr),
        "conv weight-grad": conv_backward((False, True, False)),
        "BatchNorm forward": lambda: aten.native_batch_norm(y, t["bn_w"], t["bn_b"], t["rm"], t["rv"], True,
                                                            0.1, 1e-3),
        "BatchNorm backward": lambda: aten.native_batch_norm_backward(g, y, t["bn_w"], t["rm"], t["rv"],
                                                                      t["mean"], t["invstd"], True, 1e-3,
                                                                      (True, True, True)),
    }
    if not shape["first"]:
        calls["conv input-grad"] = conv_backward((True, False, False))
    if shape["act"]:
        calls["SiLU forward"] = lambda: aten.silu(y)
        calls["SiLU backward"] = lambda: aten.silu_backward(g, y)
    return calls


def time_once(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = DetectionModel(load_model_yaml(args.model), nc=args.nc).to(memory_format=torch.channels_last)
    x = torch.randn(args.batch, 3, args.imgsz, args.imgsz).to(memory_format=torch.channels_last)
    shapes = block_shapes(model.train(), x)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    calls = {name: [kernels(s, block_tensors(s, dt)) for s in shapes] for name, dt in dtypes.items()}
    for per_block in calls.values():  # warm-up: oneDNN builds its kernels on first use
        for block in per_block:
            for fn in block.values():
                fn()
    totals: dict[str, dict[str, list[float]]] = {n: {k: [] for k in CLASSES} for n in dtypes}
    for _ in range(args.rounds):
        for name in dtypes:  # interleaved: FP32 then BF16 each round
            for k in CLASSES:
                totals[name][k].append(sum(time_once(b[k]) for b in calls[name] if k in b) * 1e3)
    return {"imgsz": args.imgsz, "batch": args.batch, "threads": torch.get_num_threads(),
            "blocks": len(shapes), "torch": torch.__version__, "cpu": cpu_model(),
            "flags": cpu_flags(), "ms": totals}


def report(res: dict) -> str:
    head = (f"# det-n kernels, {res['imgsz']} px, batch {res['batch']}, {res['blocks']} Conv-BN-SiLU "
            f"blocks; {res['cpu']}, torch {res['torch']}, threads {res['threads']}, "
            f"flags {' '.join(res['flags'])}")
    lines = [head, "", "| kernel class (one step) | FP32 ms min / median | BF16 ms min / median "
             "| FP32/BF16 (medians) |", "|---|---|---|---|"]
    med = {n: {k: statistics.median(v) for k, v in d.items()} for n, d in res["ms"].items()}
    for k in CLASSES:
        f, b = res["ms"]["fp32"][k], res["ms"]["bf16"][k]
        lines.append(f"| {k} | {min(f):.1f} / {med['fp32'][k]:.1f} | {min(b):.1f} / {med['bf16'][k]:.1f} | "
                     f"{med['fp32'][k] / med['bf16'][k]:.2f}x |")
    low = {n: {k: min(v) for k, v in d.items()} for n, d in res["ms"].items()}
    for label, keys in (("convolutions", CLASSES[:3]), ("BatchNorm + SiLU", CLASSES[3:]), ("all", CLASSES)):
        f, b = (sum(med[n][k] for k in keys) for n in ("fp32", "bf16"))
        fl, bl = (sum(low[n][k] for k in keys) for n in ("fp32", "bf16"))
        lines.append(f"| **{label}** | {fl:.1f} / {f:.1f} | {bl:.1f} / {b:.1f} | **{f / b:.2f}x** "
                     f"(minima {fl / bl:.2f}x) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="det-n.yaml")
    ap.add_argument("--nc", type=int, default=3)
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    res = run(args)
    print(report(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
