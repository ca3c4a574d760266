"""Optimizer, learning-rate schedule and weight EMA for the detection trainer.

``build_optimizer``: three parameter groups as YOLO uses them (conv/linear weights with decay,
normalisation weights and biases without). ``Schedule``: warmup then cosine or linear decay,
advanced once per *taken* optimizer step (pass it to ``prec.step(..., scheduler=...)``, so a
skipped step never advances it). ``ModelEMA``: an FP32 exponential moving average of the
weights, updated after each taken step.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from mixprec.precision import NORM_LAYERS

__all__ = ["ModelEMA", "Schedule", "build_optimizer", "plan_steps", "resolve_optimizer",
           "warmup_accumulate"]


def resolve_optimizer(name: str, lr0: float, momentum: float, nc: int,
                      iterations: int) -> tuple[str, float, float, str]:
    """``optimizer=auto``: SGD(lr 0.01, momentum 0.9) for runs over 10,000 optimizer steps,
    else AdamW(lr = 0.002 * 5 / (4 + nc), momentum 0.9), as Ultralytics 8.x chooses. Returns
    (name, lr0, momentum, a sentence explaining the choice)."""
    if name.lower() != "auto":
        if name.lower() not in ("sgd", "adamw", "adam"):
            raise ValueError(f"optimizer={name!r} is not supported; use SGD, AdamW, Adam or auto")
        return name, lr0, momentum, f"{name}(lr={lr0}, momentum={momentum})"
    if iterations > 10_000:
        return "SGD", 0.01, 0.9, ("'optimizer=auto' found, ignoring lr0 and momentum: SGD(lr=0.01, "
                                 f"momentum=0.9) for {iterations} iterations (> 10,000)")
    lr = round(0.002 * 5 / (4 + nc), 6)
    return "AdamW", lr, 0.9, (f"'optimizer=auto' found, ignoring lr0 and momentum: AdamW(lr={lr}, "
                              f"momentum=0.9) for {iterations} iterations (<= 10,000), {nc} classes")


def warmup_accumulate(iteration: int, warmup_iters: int, accumulate: int) -> int:
    """Batches per optimizer step at ``iteration`` (0-based, over the whole run): during the first
    ``warmup_iters`` batches it ramps linearly from 1 to ``accumulate`` (rounded), then stays
    there, as Ultralytics does; early training thus takes more, smaller-batch steps."""
    if warmup_iters <= 0 or iteration >= warmup_iters:
        return accumulate
    return max(1, round(1 + (accumulate - 1) * iteration / warmup_iters))


def plan_steps(batches: int, epochs: int, accumulate: int, warmup_iters: int) -> tuple[int, int]:
    """(optimizer steps within the warmup iterations, optimizer steps in the whole run) for
    ``batches`` per epoch under the trainer's rule: step when ``warmup_accumulate`` batches are
    pending, and always at the last batch of an epoch. Pure arithmetic, no tensors."""
    warm = total = pending = 0
    for epoch in range(epochs):
        for i in range(batches):
            ni = epoch * batches + i
            pending += 1
            if pending >= warmup_accumulate(ni, warmup_iters, accumulate) or i == batches - 1:
                total += 1
                warm += ni < warmup_iters
                pending = 0
    return warm, total


def build_optimizer(model: nn.Module, name: str, lr: float, momentum: float,
                    weight_decay: float) -> torch.optim.Optimizer:
    """SGD (Nesterov) or Adam/AdamW over groups 0: weights (decay), 1: weights of normalisation
    layers (``mixprec.precision.NORM_LAYERS``: BatchNorm, InstanceNorm, GroupNorm, LayerNorm,
    ...; no decay), 2: biases (no decay)."""
    decay, norm, bias = [], [], []
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if pname == "bias":
                bias.append(p)
            elif isinstance(module, NORM_LAYERS):  # every BatchNorm/InstanceNorm, GroupNorm, LayerNorm ...
                norm.append(p)
            else:
                decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "name": "weight"},
              {"params": norm, "weight_decay": 0.0, "name": "norm"},
              {"params": bias, "weight_decay": 0.0, "name": "bias"}]
    key = name.lower()
    if key == "sgd":
        cls, kwargs = torch.optim.SGD, {"momentum": momentum, "nesterov": True}
    elif key in ("adam", "adamw"):
        cls = torch.optim.AdamW if key == "adamw" else torch.optim.Adam
        kwargs = {"betas": (momentum, 0.999)}
    else:
        raise ValueError(f"optimizer={name!r} is not supported; use SGD, AdamW, Adam or auto")
    opt = None
    if {p.device.type for g in groups for p in g["params"]} <= {"cpu", "cuda"}:
        # the fused kernel updates every tensor in one pass (det-n AdamW step on a CPU core:
        # 15.5 -> 6.9 ms); the same update rule, rounded differently
        try:
            opt = cls(groups, lr=lr, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):  # older torch: no fused kernel here
            opt = None
    if opt is None:
        opt = cls(groups, lr=lr, **kwargs)
    for g in opt.param_groups:
        g["initial_lr"] = lr
    return opt


class Schedule:
    """Per-step LR and momentum: during the first ``warmup`` steps the bias group's LR falls
    from ``warmup_bias_lr`` and the others rise from 0 to the scheduled LR, and SGD momentum
    rises from ``warmup_momentum`` (Adam's betas stay as built, as in Ultralytics); then
    ``lr0 * f(t)`` with ``f`` cosine or linear from 1 to ``lrf`` over ``total`` steps, or
    ``f = decay`` when given (a task's own decay, e.g. poly). ``step()`` advances one taken
    optimizer step."""

    def __init__(self, optimizer: torch.optim.Optimizer, lr0: float, lrf: float, total: int,
                 warmup: int, cos: bool = False, warmup_bias_lr: float = 0.1,
                 warmup_momentum: float = 0.8, momentum: float = 0.937,
                 decay: Callable[[float], float] | None = None):
        self.optimizer, self.lr0, self.lrf = optimizer, lr0, lrf
        self.total, self.warmup, self.cos = max(total, 1), warmup, cos
        self.warmup_bias_lr, self.warmup_momentum, self.momentum = (
            warmup_bias_lr, warmup_momentum, momentum)
        self.decay = decay
        self.count = 0
        self.apply()

    def factor(self, t: int) -> float:
        x = min(t / self.total, 1.0)
        if self.decay is not None:
            return self.decay(x)
        if self.cos:
            return ((1 - math.cos(x * math.pi)) / 2) * (self.lrf - 1) + 1
        return (1 - x) * (1.0 - self.lrf) + self.lrf

    def apply(self) -> None:
        base = self.lr0 * self.factor(self.count)
        w = self.count / self.warmup if self.count < self.warmup else 1.0
        for g in self.optimizer.param_groups:
            start = self.warmup_bias_lr if g.get("name") == "bias" else 0.0
            g["lr"] = start + (base - start) * w
            mom = self.warmup_momentum + (self.momentum - self.warmup_momentum) * w
            if "momentum" in g and "betas" not in g:
                g["momentum"] = mom

    def step(self) -> None:
        self.count += 1
        self.apply()

    def lrs(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "lr0": self.lr0}  # lr0: lowered by a NaN recovery

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = int(state["count"])
        self.lr0 = float(state.get("lr0", self.lr0))
        self.apply()


class ModelEMA:
    """FP32 exponential moving average of a model's floating state (parameters and buffers).
    Effective decay ``decay * (1 - exp(-updates / tau))`` ramps up, so early steps count less;
    ``decay=0`` makes it an exact copy of the model's weights (``lerp`` with weight 1 returns
    the end point: the trainer's ``ema=False``).
    ``update`` runs on the device of the model; no host synchronisation."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0,
                 updates: int = 0):
        self.ema = copy.deepcopy(model).float().eval()
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, updates

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.tau))
        src = model.state_dict()
        averaged, targets = [], []
        for k, v in self.ema.state_dict().items():
            s = src[k].detach()
            if v.dtype.is_floating_point:
                averaged.append(v)
                targets.append(s if s.dtype == v.dtype else s.to(v.dtype))
            else:
                v.copy_(s)
        # ema <- ema + (1 - d) * (model - ema): one multi-tensor kernel instead of a Python
        # loop of 2 x ~400 ops (det-n on a CPU core: 11 ms -> ~2 ms per step)
        torch._foreach_lerp_(averaged, targets, 1 - d)
