"""Train any timm model with mixprec: FP32 master weights for a half-precision model.

    python examples/train_timm.py --model resnet18 --precision bf16-master --steps 100
    python examples/train_timm.py --model test_vit --precision 16-master   # tiny, for a smoke run

Random weights (pretrained=False) and a synthetic task (the class is the brightest colour
channel), so nothing downloads. Swap ``batches`` for your DataLoader.
"""

from __future__ import annotations

import argparse

import timm
import torch
from torch import nn

import mixprec as mp


def batches(steps: int, batch: int, size: int, num_classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        y = torch.randint(num_classes, (batch,), generator=g)
        x = torch.rand(batch, 3, size, size, generator=g) * 0.5
        x[torch.arange(batch), y] += 0.5  # class c: colour channel c is the brightest
        yield x, y


def train(model_name: str, precision: str = "bf16-master", steps: int = 50, batch: int = 16,
          size: int = 64, lr: float = 1e-3, device: str = "cpu", **precision_kwargs) -> dict:
    """Returns the per-step losses, the step/skip counts and the trained objects."""
    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False, num_classes=3).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    prec = mp.Precision(precision, device=device, **precision_kwargs)
    model, optimizer = prec.setup(model, optimizer)  # *-master: half model, FP32 MasterWeights
    losses = []
    for x, y in batches(steps, batch, size):
        with prec.autocast():
            loss = nn.functional.cross_entropy(model(x.to(device)), y.to(device))
        prec.backward(loss)
        prec.step(optimizer, max_norm=5.0)  # unscale, clip, skip on inf/NaN, FP32 step, write back
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return {"losses": losses, "steps": prec.steps, "skipped": prec.skipped_steps, "model": model,
            "optimizer": optimizer, "precision": prec}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--precision", default="bf16-master")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    out = train(a.model, a.precision, a.steps, device=a.device)
    print(f"{a.model} {a.precision}: loss {out['losses'][0]:.3f} -> {out['losses'][-1]:.3f}, "
          f"skipped {out['skipped']}/{out['steps']} steps")
