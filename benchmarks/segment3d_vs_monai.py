"""mixprec unet3d-n vs MONAI's residual UNet on the same 3D data and budget, plus the memory story.

Part 1 (accuracy and speed): on each dataset (built-in ``organs3d``: CT-like organs;
``lesions3d``: 2-channel MRI-like, thin vessels and small lesions), both models train for the
same number of steps on the *same* patches (mixprec's sampler: 1/3 foreground-centred, flips,
rot90, intensity), with the same optimizer and schedule (AdamW, linear warmup, poly decay), and
are validated at the same points by the same Gaussian sliding-window inference and Dice
(mixprec's ``SegMetrics``, tested equal to MONAI's ``DiceMetric``). Each side runs its own
default precision on the device: mixprec ``--precision auto`` (through ``mixprec.Precision``,
as the trainer does), MONAI autocast + GradScaler on CUDA as ``SupervisedTrainer`` does and FP32
on CPU (``--monai-amp auto``; MONAI/nnU-Net switch AMP off on CPU). Printed: both Dice curves,
best mean foreground Dice, and training voxels/s (training steps only, synchronised).

Part 2 (memory): per precision, the bytes of one ``unet3d-s`` training step at batch 2 measured
exactly with ``mixprec.bench`` (parameters, gradients, optimizer state, master copy, autocast
weight casts, activations saved for backward) at a probe patch, extrapolated to larger patches
(activations and batch grow with the voxel count; measured linear within 0.2% from 32^3 to
64^3), the bytes at ``--mem-patch`` and the largest patch (multiple of 16) that fits ``--budget``.

Full budget (quiet machine, a few hours on 16 CPU cores, well under one on a GPU):
    python benchmarks/segment3d_vs_monai.py --epochs 40 --iterations 100 --patch 64 --batch 2
Reduced but honest budget (full-size data, fewer steps; one dataset per run, its own --out):
    python benchmarks/segment3d_vs_monai.py --data organs3d --epochs 10 --iterations 50 --skip-memory \
        --out organs3d.json
Tiny smoke run (a few minutes on one core):
    python benchmarks/segment3d_vs_monai.py --tiny
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import torch

from mixprec.bench.memory import format_bytes
from mixprec.bench.oom import StepMemory, step_memory
from mixprec.precision import Precision
from mixprec.vision.segment3d.builtin import generate
from mixprec.vision.segment3d.inference import sliding_window
from mixprec.vision.segment3d.loss import DiceCELoss
from mixprec.vision.segment3d.metrics import SegMetrics
from mixprec.vision.segment3d.sampler import patch_loader
from mixprec.vision.segment3d.schedule import poly_lr
from mixprec.vision.segment3d.task import Segment3DTask
from mixprec.vision.segment3d.unet import UNet3D, load_unet_yaml


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def monai_unet(in_ch: int, nc: int) -> torch.nn.Module:
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=in_ch, out_channels=nc, channels=(16, 32, 64, 128, 256),
                strides=(2, 2, 2, 2), num_res_units=2, norm="instance")


def evaluate(model: torch.nn.Module, cases: list, names: dict[int, str], patch: tuple[int, int, int],
             autocast: Any, device: torch.device) -> SegMetrics:
    metrics = SegMetrics(names)
    model.eval()
    with torch.no_grad():
        for case in cases:
            vol = torch.from_numpy(case.image)[None].to(device)

            def predictor(x: torch.Tensor) -> torch.Tensor:
                with autocast():
                    out = model(x)
                return out[0] if isinstance(out, (list, tuple)) else out

            logits = sliding_window(vol, predictor, patch, len(names), overlap=0.5, sw_batch=2)[0]
            metrics.add(logits.argmax(0).cpu().numpy(), case.label)
    model.train()
    return metrics


def train_side(side: str, data: Any, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Train one side; returns its Dice curve, best Dice, voxels/s and precision."""
    torch.manual_seed(args.seed)
    nc, ch = data.nc, data.channels
    patch = (args.patch,) * 3
    if side == "mixprec":
        model = UNet3D(load_unet_yaml(args.model, nc=nc, in_channels=ch)).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=3e-5)
        prec = Precision(args.precision, device=device)
        model, opt = prec.setup(model, opt)
        criterion = DiceCELoss(nc)
        autocast, label = prec.autocast, str(prec.policy)
        scaler = None
    else:
        from monai.losses import DiceCELoss as MonaiDiceCE

        model = monai_unet(ch, nc).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=3e-5)
        amp = (device.type == "cuda") if args.monai_amp == "auto" else args.monai_amp == "on"
        dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
        monai_loss = MonaiDiceCE(to_onehot_y=True, softmax=True)
        scaler = torch.amp.GradScaler(device.type, enabled=amp and dtype == torch.float16)

        def autocast() -> Any:
            return torch.autocast(device.type, dtype=dtype, enabled=amp)

        label = f"autocast {str(dtype).split('.')[-1]}" if amp else "32 (no autocast)"
    params = sum(p.numel() for p in model.parameters())
    loader = patch_loader(data.cases("train"), patch, args.batch, args.iterations, args.seed, 0, True)
    total = args.epochs * args.iterations
    warmup = min(args.iterations, total - 1)
    step, train_time, curve = 0, 0.0, []
    for epoch in range(args.epochs):
        loader.dataset.set_epoch(epoch)
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            for g in opt.param_groups:
                g["lr"] = poly_lr(step, total, args.lr, warmup)
            _sync(device)
            t0 = time.perf_counter()
            if side == "mixprec":
                with prec.autocast():
                    out = model(x)
                loss, _ = criterion(out, y)
                prec.backward(loss)
                prec.step(opt, max_norm=12.0)
            else:
                with autocast():
                    out = model(x)
                loss = monai_loss(out.float(), y[:, None])
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
                scaler.step(opt)
                scaler.update()
            opt.zero_grad(set_to_none=True)
            _sync(device)
            train_time += time.perf_counter() - t0
            step += 1
        if (epoch + 1) % args.val_every == 0 or epoch == args.epochs - 1:
            m = evaluate(model, data.cases("val"), data.names, patch, autocast, device)
            curve.append({"epoch": epoch + 1, "dice": m.dice, "per_class": m.per_class_dice})
            print(f"  {side:8s} epoch {epoch + 1:3d}: Dice {m.dice:.4f}  "
                  + " ".join(f"{k} {v:.3f}" for k, v in m.per_class_dice.items()), flush=True)
    voxels = step * args.batch * math.prod(patch)
    return {"precision": label, "params": params, "curve": curve,
            "best_dice": max(c["dice"] for c in curve), "train_seconds": train_time,
            "voxels_per_s": voxels / train_time}


def memory_table(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """Per precision: exact bytes of one unet3d-s step at the probe patch, extrapolated."""
    cfg = load_unet_yaml(args.mem_model, nc=5, in_channels=1)
    criterion = DiceCELoss(5)
    p0, budget = args.mem_probe, int(args.budget * 2**30)
    rows = []
    for prec in args.mem_precisions.split(","):
        m = step_memory(lambda: UNet3D(cfg), lambda b: (torch.randn(b, 1, p0, p0, p0),
                                                        torch.randint(0, 5, (b, p0, p0, p0))),
                        lambda o, t: criterion(o, t)[0], prec, device, probe_batch=args.batch)

        def at(p: int, m: StepMemory = m) -> float:
            return m.at(args.batch, (p / p0) ** 3)

        largest = max((p for p in range(16, 513, 16) if at(p) <= budget), default=None)
        rows.append({"precision": prec, "probe_patch": p0, "fixed_bytes": m.fixed_bytes,
                     "activation_bytes_probe": m.activation_bytes,
                     f"bytes_at_{args.mem_patch}": at(args.mem_patch), "largest_patch": largest,
                     "largest_patch_voxels": largest ** 3 if largest else 0})
    base = rows[0]["largest_patch_voxels"] or 1
    print(f"\nMemory of one {args.mem_model} training step, batch {args.batch}, AdamW "
          f"(mixprec.bench exact accounting at {p0}^3, extrapolated by voxel count), "
          f"budget {args.budget} GiB:")
    at_col = f"at {args.mem_patch}^3"
    print(f"{'precision':>12} {at_col:>12} {'largest patch':>14} {'voxels vs 32':>13}")
    for r in rows:
        lp = r["largest_patch"]
        print(f"{r['precision']:>12} {format_bytes(r[f'bytes_at_{args.mem_patch}']):>12} "
              f"{(str(lp) + '^3') if lp else 'none':>14} {r['largest_patch_voxels'] / base:>12.2f}x")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="organs3d,lesions3d")
    ap.add_argument("--datasets-dir", default="datasets")
    ap.add_argument("--model", default="unet3d-n.yaml")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--iterations", type=int, default=100, help="steps per epoch")
    ap.add_argument("--val-every", type=int, default=5)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--precision", default="auto", help="mixprec side (auto: its default on the device)")
    ap.add_argument("--monai-amp", default="auto", choices=["auto", "on", "off"])
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mem-model", default="unet3d-s.yaml")
    ap.add_argument("--mem-precisions", default="32,bf16-mixed,16-mixed,16-master,bf16-master")
    ap.add_argument("--mem-probe", type=int, default=64,
                    help="probe patch (64: ~2 GiB of RAM for unet3d-s in FP32)")
    ap.add_argument("--mem-patch", type=int, default=128)
    ap.add_argument("--budget", type=float, default=8.0, help="GiB")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--tiny", action="store_true", help="smoke run: small volumes, 2 epochs of 3 steps")
    ap.add_argument("--out", default="segment3d_vs_monai.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    task = Segment3DTask()
    report: dict[str, Any] = {"env": {"torch": torch.__version__, "device": str(device),
                                      "cpu": platform.processor() or platform.machine(),
                                      "threads": torch.get_num_threads()},
                              "args": vars(args), "datasets": {}}
    if device.type == "cuda":
        report["env"]["gpu"] = torch.cuda.get_device_name(device)
    if args.tiny:
        args.epochs, args.iterations, args.val_every, args.patch = 2, 3, 1, 32
        args.mem_probe, args.mem_precisions = 32, "32,bf16-mixed"
    for name in args.data.split(","):
        root = Path(args.datasets_dir) / (f"{name}-tiny" if args.tiny else name)
        yaml_path = generate(name, root, 3, 2, (48, 48, 32)) if args.tiny else generate(name, root)
        data = task.load_data({"data": str(yaml_path), "verbose": False})
        print(f"\n== {name}: {len(data.cases('train'))} train / {len(data.cases('val'))} val volumes, "
              f"{data.channels} channel(s), classes {list(data.names.values())[1:]}; {args.epochs} epochs x "
              f"{args.iterations} steps, patch {args.patch}^3, batch {args.batch}, {device}")
        sides = {side: train_side(side, data, args, device) for side in ("mixprec", "monai")}
        a, b = sides["mixprec"], sides["monai"]
        print(f"  mixprec {args.model} [{a['precision']}, {a['params'] / 1e6:.2f} M params]: best Dice "
              f"{a['best_dice']:.4f}, {a['voxels_per_s'] / 1e6:.3f} M voxels/s")
        print(f"  MONAI UNet [{b['precision']}, {b['params'] / 1e6:.2f} M params]: best Dice "
              f"{b['best_dice']:.4f}, {b['voxels_per_s'] / 1e6:.3f} M voxels/s")
        print(f"  ratio mixprec/MONAI: Dice {a['best_dice'] / max(b['best_dice'], 1e-9):.3f}x, "
              f"voxels/s {a['voxels_per_s'] / b['voxels_per_s']:.2f}x")
        report["datasets"][name] = sides
    if not args.skip_memory:
        report["memory"] = memory_table(args, device)
    Path(args.out).write_text(json.dumps(report, indent=1, default=float))
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
