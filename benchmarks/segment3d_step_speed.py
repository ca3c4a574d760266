"""Training-step speed of unet3d variants against MONAI's UNet, interleaved in one process.

Each model trains on the same random batch (``--batch`` x ``--channels`` x ``--patch``^3, ``--nc``
classes): mixprec's ``UNet3D`` under ``--precision`` through ``mixprec.Precision`` with its ``DiceCELoss``,
MONAI's ``UNet`` (the configuration of ``segment3d_vs_monai.py``) in FP32 with MONAI's
``DiceCELoss``; AdamW and gradient clipping on both. One warm-up step each, then ``--rounds``
rounds of one step per model in turn, so machine noise hits them alike. Prints forward
kFLOP/voxel (``torch.utils.flop_counter``), parameters, min and median seconds per step,
voxels/s and the ratio to MONAI's median. Accuracy is not measured here: see
``segment3d_vs_monai.py``.

    python benchmarks/segment3d_step_speed.py --models unet3d-n.yaml,my-variant.yaml --threads 1
    python benchmarks/segment3d_step_speed.py --channels 2 --nc 3 --threads 1   # lesions3d's shape
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from segment3d_vs_monai import monai_unet  # the same MONAI configuration as the accuracy benchmark
from torch.utils.flop_counter import FlopCounterMode

from mixprec.precision import Precision
from mixprec.vision.segment3d.loss import DiceCELoss
from mixprec.vision.segment3d.unet import UNet3D, load_unet_yaml


def _flops_per_voxel(model: torch.nn.Module, x: torch.Tensor) -> float:
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x[:1])
    model.train()
    return counter.get_total_flops() / x[0, 0].numel()


def make_step(name: str, x: torch.Tensor, y: torch.Tensor, nc: int,
              precision: str) -> tuple[Callable[[], None], float, int]:
    """A closure running one training step of model ``name`` (a unet3d YAML or ``monai``)."""
    torch.manual_seed(0)
    if name == "monai":
        from monai.losses import DiceCELoss as MonaiDiceCE

        model = monai_unet(x.shape[1], nc)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        loss_fn = MonaiDiceCE(to_onehot_y=True, softmax=True)

        def step() -> None:
            loss = loss_fn(model(x).float(), y[:, None])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
    else:
        model = UNet3D(load_unet_yaml(name, nc=nc, in_channels=x.shape[1]))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        prec = Precision(precision, device=torch.device("cpu"))
        model, opt = prec.setup(model, opt)
        criterion = DiceCELoss(nc)

        def step() -> None:
            with prec.autocast():
                out = model(x)
            loss, _ = criterion(out, y)
            prec.backward(loss)
            prec.step(opt, max_norm=12.0)
            opt.zero_grad(set_to_none=True)
    flops = _flops_per_voxel(model, x)
    return step, flops, sum(p.numel() for p in model.parameters())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="unet3d-n.yaml", help="comma-separated unet3d YAMLs; MONAI is added")
    ap.add_argument("--precision", default="bf16-mixed")
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--nc", type=int, default=5, help="classes incl. background (organs3d 5, lesions3d 3)")
    ap.add_argument("--channels", type=int, default=1, help="input channels (organs3d 1, lesions3d 2)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    p = args.patch
    x = torch.randn(args.batch, args.channels, p, p, p)
    y = torch.randint(0, args.nc, (args.batch, p, p, p))
    names = [m for m in args.models.split(",") if m] + ["monai"]
    steps = {}
    for name in names:
        step, flops, params = make_step(name, x, y, args.nc, args.precision)
        step()  # warm-up: oneDNN primitives, allocator
        steps[name] = step
        print(f"{name}: {flops / 1e3:.1f} kFLOP/voxel forward, {params / 1e6:.2f} M parameters", flush=True)
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.rounds):
        for name in names:
            t0 = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - t0)
    ref = statistics.median(times["monai"])
    print(f"\npatch {p}^3, batch {args.batch}, {args.channels} channel(s), {args.nc} classes, "
          f"{torch.get_num_threads()} thread(s), "
          f"mixprec {args.precision}, "
          f"MONAI FP32; {args.rounds} interleaved rounds")
    for name in names:
        med = statistics.median(times[name])
        print(f"{name:>28} min {min(times[name]):.3f} median {med:.3f} s/step  "
              f"{args.batch * p ** 3 / med / 1e6:.3f} M voxels/s  {ref / med:.2f}x MONAI")


if __name__ == "__main__":
    main()
