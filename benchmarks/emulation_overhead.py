"""Cost of emulated numerics, measured side by side in one run.

One training step (forward, loss, backward, SGD step) of the trainer's detector (``det-n``, a
YOLO-style conv net) at ``--imgsz`` pixels, in five variants that alternate repeat by repeat so
machine noise hits them alike:

* ``fp32``: plain FP32;
* ``emulated 16-mixed`` / ``emulated bf16-mixed``: ``mixprec.emulate`` (FP32 arithmetic,
  FP16/BF16 numerics);
* ``real bf16`` / ``real fp16``: ``torch.autocast(device, dtype)``, the real low-precision
  kernels (on a CPU without fast half units these are far slower than FP32).

Reported: median wall time and median process CPU time per step, and the ratios
emulated / FP32 (target <= 1.25) and real / emulated (how many times faster emulation is than
the real dtype on this machine), with the environment.

    python benchmarks/emulation_overhead.py [--imgsz 320] [--batch 16] [--repeats 11]
        [--real-repeats 2] [--model det-n.yaml | cnn] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from mixprec.emulate import emulate
from mixprec.hardware import describe_device
from mixprec.io import atomic_write_text


def build(model_name: str, imgsz: int, batch: int, seed: int = 0):
    """(model, loss_fn(model_output) -> scalar, input batch) for the chosen network."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, imgsz, imgsz, generator=g)
    if model_name == "cnn":  # 8 conv layers, for machines without the vision package
        def cbs(c1: int, c2: int, s: int) -> nn.Module:
            return nn.Sequential(nn.Conv2d(c1, c2, 3, s, 1, bias=False), nn.BatchNorm2d(c2),
                                 nn.SiLU(inplace=True))
        model = nn.Sequential(cbs(3, 16, 2), cbs(16, 32, 2), cbs(32, 32, 1), cbs(32, 64, 2),
                              cbs(64, 64, 1), cbs(64, 128, 2), cbs(128, 128, 1),
                              cbs(128, 128, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                              nn.Linear(128, 10))
        y = torch.randint(0, 10, (batch,), generator=g)
        return model, lambda out: nn.functional.cross_entropy(out, y), x
    from mixprec.vision import Model

    m = Model(model_name)
    loss = m.loss()
    n = 3 * batch  # three random boxes per image: [image, class, cx, cy, w, h]
    targets = torch.cat([torch.arange(batch).repeat_interleave(3)[:, None].float(),
                         torch.randint(0, m.model.head.nc, (n, 1), generator=g).float(),
                         torch.rand(n, 2, generator=g) * 0.6 + 0.2,
                         torch.rand(n, 2, generator=g) * 0.3 + 0.05], 1)
    return m.model, lambda maps: loss(maps, targets)[0], x


def make_step(model: nn.Module, loss_fn: Callable, x: torch.Tensor,
              ctx: Callable[[], contextlib.AbstractContextManager]) -> Callable[[], float]:
    model = copy.deepcopy(model).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> float:
        with ctx():
            loss = loss_fn(model(x))
        loss.float().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="det-n.yaml", help="det-n.yaml / det-s.yaml or 'cnn'")
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--batch", type=int, default=16, help="the trainer's default batch")
    ap.add_argument("--repeats", type=int, default=11, help="timed steps per fast variant")
    ap.add_argument("--real-repeats", type=int, default=2,
                    help="timed steps per real low-precision variant (slow on CPUs)")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args()

    device = torch.device("cpu")
    model, loss_fn, x = build(args.model, args.imgsz, args.batch)
    variants: dict[str, tuple[Callable, int]] = {
        "fp32": (contextlib.nullcontext, args.repeats),
        "emulated 16-mixed": (lambda: emulate("16-mixed"), args.repeats),
        "emulated bf16-mixed": (lambda: emulate("bf16-mixed"), args.repeats),
        "real bf16": (lambda: torch.autocast("cpu", dtype=torch.bfloat16), args.real_repeats),
        "real fp16": (lambda: torch.autocast("cpu", dtype=torch.float16), args.real_repeats),
    }
    steps = {k: make_step(model, loss_fn, x, ctx) for k, (ctx, _) in variants.items()}
    for step in steps.values():  # warm-up (allocator, emulator probes, oneDNN primitives)
        step()
    wall: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(max(n for _, n in variants.values())):
        for k, (_, n) in variants.items():
            if r >= n:
                continue
            c0, t0 = time.process_time(), time.perf_counter()
            steps[k]()
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)

    med = {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in variants}
    base_w, base_c = med["fp32"]
    print(f"model {args.model}, imgsz {args.imgsz}, batch {args.batch}, "
          f"{args.repeats}/{args.real_repeats} timed steps (fast/real variants)")
    print(f"{'variant':22s} {'wall ms':>9s} {'cpu ms':>9s} {'wall/fp32':>10s} {'cpu/fp32':>9s}")
    for k, (w, c) in med.items():
        print(f"{k:22s} {w * 1e3:9.1f} {c * 1e3:9.1f} {w / base_w:10.3f} {c / base_c:9.3f}")
    summary = {}
    for fmt, real in (("16-mixed", "real fp16"), ("bf16-mixed", "real bf16")):
        ew, ec = med[f"emulated {fmt}"]
        rw, rc = med[real]
        summary[fmt] = {"emulated_over_fp32_wall": ew / base_w, "emulated_over_fp32_cpu": ec / base_c,
                        "real_over_emulated_wall": rw / ew, "real_over_emulated_cpu": rc / ec}
        print(f"emulated {fmt}: {ew / base_w:.3f}x FP32 wall ({ec / base_c:.3f}x CPU time); "
              f"{rw / ew:.1f}x faster than {real} (CPU time {rc / ec:.1f}x)"
              f"  [target <= 1.25x FP32: {'met' if ew / base_w <= 1.25 else 'NOT met'}]")
    env = describe_device(device)
    print("environment:", json.dumps(env, default=str))
    if args.json:
        atomic_write_text(args.json, json.dumps(
            {"args": vars(args), "median_s": {k: {"wall": w, "cpu": c} for k, (w, c) in med.items()},
             "summary": summary, "environment": env}, indent=2, default=str))


if __name__ == "__main__":
    main()
