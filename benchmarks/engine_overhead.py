"""Engine overhead, measured side by side in one run.

1. ``Precision("16-mixed").step`` (unscale, clip, inf check, step, scale update) against the
   equivalent ``torch.amp.GradScaler`` sequence (unscale_, clip_grad_norm_, step, update), with
   identical pre-filled gradients. Target: ratio <= 1.0.
2. ``MasterWeights`` + AdamW(foreach) on an FP16 model against plain FP32 AdamW(foreach).
   Target: ratio <= 1.3.

Both use an MLP of about 25M parameters; the variants alternate repeat by repeat, in ABBA
order so that neither always runs first, and machine noise hits them alike; the device is
synchronised before each clock read. Medians are reported.

    python benchmarks/engine_overhead.py [--device cuda] [--repeats 15]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from torch import nn

import mixprec as mp
from mixprec.hardware import describe_device


def make_model(width: int = 2048, depth: int = 6) -> nn.Module:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fill_grads(params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for p, g in zip(params, grads):
            if p.grad is None:
                p.grad = g.to(p.dtype, copy=True)
            else:
                p.grad.copy_(g)


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def bench_step_vs_gradscaler(device: torch.device, repeats: int) -> dict:
    torch.manual_seed(0)
    base = make_model().to(device)
    grads = [torch.randn_like(p) * 1e3 for p in base.parameters()]  # "scaled" gradients

    ours_model = copy.deepcopy(base)
    prec = mp.Precision("16-mixed", device=device)
    ours_model, ours_opt = prec.setup(ours_model, torch.optim.AdamW(ours_model.parameters(), foreach=True))
    prec.scaler.scale_loss(torch.ones((), device=device))  # materialise the scale on the device

    ref_model = copy.deepcopy(base)
    ref_opt = torch.optim.AdamW(ref_model.parameters(), foreach=True)
    scaler = torch.amp.GradScaler(device.type)
    scaler.scale(torch.ones((), device=device))

    def ours() -> None:
        prec._backward_pending = True  # gradients are pre-filled instead of produced by backward
        prec.step(ours_opt, max_norm=1.0)

    def reference() -> None:
        scaler.unscale_(ref_opt)
        torch.nn.utils.clip_grad_norm_(ref_model.parameters(), 1.0)
        scaler.step(ref_opt)
        scaler.update()

    ours_t, ref_t = [], []
    for i in range(repeats + 2):  # 2 warm-up rounds
        fill_grads(list(ours_model.parameters()), grads)
        fill_grads(list(ref_model.parameters()), grads)
        if i % 2:  # ABBA order: neither side always runs first
            t_ours, t_ref = timed(ours, device), timed(reference, device)
        else:
            t_ref, t_ours = timed(reference, device), timed(ours, device)
        if i >= 2:
            ours_t.append(t_ours)
            ref_t.append(t_ref)
    n_params = sum(p.numel() for p in base.parameters())
    return {"params": n_params, "precision_step_s": statistics.median(ours_t),
            "gradscaler_step_s": statistics.median(ref_t),
            "ratio": statistics.median(ours_t) / statistics.median(ref_t)}


def bench_master_vs_fp32_adamw(device: torch.device, repeats: int) -> dict:
    torch.manual_seed(0)
    base = make_model().to(device)
    grads = [torch.randn_like(p) * 1e-3 for p in base.parameters()]

    half_model = copy.deepcopy(base).half()
    master_opt = mp.MasterWeights(torch.optim.AdamW(half_model.parameters(), foreach=True))
    fp32_model = copy.deepcopy(base)
    fp32_opt = torch.optim.AdamW(fp32_model.parameters(), foreach=True)

    master_t, fp32_t = [], []
    for i in range(repeats + 2):
        fill_grads(master_opt.masters, grads)
        fill_grads(list(fp32_model.parameters()), grads)
        if i % 2:
            t_master, t_fp32 = timed(master_opt.step, device), timed(fp32_opt.step, device)
        else:
            t_fp32, t_master = timed(fp32_opt.step, device), timed(master_opt.step, device)
        if i >= 2:
            master_t.append(t_master)
            fp32_t.append(t_fp32)
    return {"master_weights_step_s": statistics.median(master_t),
            "fp32_adamw_step_s": statistics.median(fp32_t),
            "ratio": statistics.median(master_t) / statistics.median(fp32_t)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    device = torch.device(args.device)
    env = describe_device(device)
    step = bench_step_vs_gradscaler(device, args.repeats)
    master = bench_master_vs_fp32_adamw(device, args.repeats)
    print(f"machine: {env['name']} ({env['device']}), torch {env['torch']}, {env['cores']} cores, "
          f"flags {env.get('cpu_flags', env.get('compute_capability'))}")
    print(f"model: MLP, {step['params'] / 1e6:.1f}M parameters; median of {args.repeats} alternating repeats")
    print(f"Precision('16-mixed').step      {step['precision_step_s'] * 1e3:8.2f} ms")
    print(f"GradScaler unscale/clip/step/update {step['gradscaler_step_s'] * 1e3:8.2f} ms")
    print(f"  ratio {step['ratio']:.3f}  (target <= 1.0)")
    print(f"MasterWeights + AdamW(foreach)  {master['master_weights_step_s'] * 1e3:8.2f} ms")
    print(f"FP32 AdamW(foreach)             {master['fp32_adamw_step_s'] * 1e3:8.2f} ms")
    print(f"  ratio {master['ratio']:.3f}  (target <= 1.3)")
    print(json.dumps({"env": env, "precision_vs_gradscaler": step, "master_vs_fp32": master}))


if __name__ == "__main__":
    main()
