"""Overhead of the doctor's telemetry on a training step: off (never attached, and attached then
detached) vs on. Steps are interleaved (off, detached, on, off, ...) so machine noise hits all
three alike; each figure is the median of ``--repeats`` rounds of ``--steps`` steps.

    .venv/bin/python benchmarks/doctor_overhead.py [--device cpu] [--precision 32] [--imgsz 64]

Prints the environment and the ratios on/off and detached/off.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn

import mixprec as mp
from mixprec.diagnose import Telemetry
from mixprec.hardware import describe_device


def make_model(width: int) -> nn.Module:
    def block(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                             nn.SiLU())

    return nn.Sequential(block(3, width, 2), block(width, width, 1), block(width, 2 * width, 2),
                         block(2 * width, 2 * width, 1), block(2 * width, 4 * width, 2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, 10))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="32")
    ap.add_argument("--imgsz", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads (0: torch's default); 1 is steadier on a busy CPU")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    prec = mp.Precision(args.precision, device=device)
    model = make_model(args.width).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model, opt = prec.setup(model, opt)
    x = torch.randn(args.batch, 3, args.imgsz, args.imgsz, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    loss_fn = nn.CrossEntropyLoss()

    def steps(tel: Telemetry | None) -> float:
        sync(device)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            with prec.autocast():
                loss = loss_fn(model(x), y)
            prec.backward(loss)
            stepped = prec.step(opt)
            if tel is not None:
                tel.on_step(prec, model, stepped, loss=loss)
            opt.zero_grad(set_to_none=True)
        sync(device)
        return (time.perf_counter() - t0) / args.steps

    tel = Telemetry(model, precision=prec)
    steps(None)                                   # warm-up (first-call costs)
    with tel:
        steps(tel)
    times: dict[str, list[float]] = {"off": [], "detached": [], "on": []}
    for _ in range(args.repeats):
        times["off"].append(steps(None))
        with Telemetry(model, precision=prec):
            pass                                  # attached and detached: must cost nothing
        times["detached"].append(steps(None))
        with tel:
            times["on"].append(steps(tel))
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "environment": describe_device(device),
        "config": {**vars(args), "torch_threads": torch.get_num_threads()},
        "step_ms": {k: round(1e3 * v, 3) for k, v in med.items()},
        "ratio_on_vs_off": round(med["on"] / med["off"], 3),
        "ratio_detached_vs_off": round(med["detached"] / med["off"], 3),
        "hooks_after_detach": tel.hook_count,
    }
    print(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
