"""``check_amp``: an offline self-test of a precision policy against FP32.

A small built-in CNN with a fixed seed runs a forward pass and one SGD step under the policy and
in FP32; the result says whether the outputs agree within a tolerance stated per compute format.
Nothing is downloaded. Used by the trainer before training with ``amp=True`` on CUDA.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from mixprec.formats import get_format
from mixprec.policy import Policy

__all__ = ["CheckResult", "check_amp"]

# Tolerance on the max |difference| of outputs, as a multiple of the compute format's eps times
# the reference's largest magnitude: sums over a few hundred products lose about sqrt(K)*eps.
_TOLERANCE_EPS_MULTIPLE = 8.0


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    max_abs_diff: float
    tolerance: float
    policy: str
    device: str
    reason: str

    def __str__(self) -> str:
        verdict = "OK" if self.ok else "FAILED"
        return (f"check_amp {verdict}: policy {self.policy} on {self.device}: max |diff| vs FP32 "
                f"{self.max_abs_diff:.3g} (tolerance {self.tolerance:.3g}). {self.reason}")


def _tiny_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.SiLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.SiLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def check_amp(device: str | torch.device | None = None, policy: str | Policy | None = None,
              emulate: bool = False) -> CheckResult:
    """Compare ``policy`` (default: ``auto`` for ``device``) against FP32 on a tiny CNN.

    Checks the forward outputs, then the outputs after one SGD step taken through
    ``Precision``. Passes when both differ from FP32 by at most 8 * eps(compute format) *
    max|FP32 output|, and the step was not skipped. Synchronises with the host.
    """
    from mixprec.precision import Precision

    prec = Precision("auto" if policy is None else policy, device=device, emulate=emulate)
    dev = prec.device or torch.device("cpu")
    name = str(prec.policy)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 16, 16, generator=generator).to(dev)
    y = torch.randint(0, 10, (8,), generator=generator).to(dev)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        reference = _tiny_cnn().to(dev)
    candidate = copy.deepcopy(reference)
    compute = prec.policy.compute_dtype
    eps = get_format(compute).eps if compute != torch.float32 else 2.0**-23

    def one_step(model: nn.Module, p: Precision) -> tuple[torch.Tensor, torch.Tensor, bool]:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        model, optimizer = p.setup(model, optimizer)
        with p.autocast():
            out = model(x)
            loss = nn.functional.cross_entropy(out.float(), y)
        p.backward(loss)
        stepped = p.step(optimizer)
        model.eval()
        with torch.no_grad(), p.autocast():
            after = model(x)
        return out.detach().float(), after.detach().float(), stepped

    ref_out, ref_after, _ = one_step(reference, Precision("32", device=dev))
    out, after, stepped = one_step(candidate, prec)
    diff = max((out - ref_out).abs().max().item(), (after - ref_after).abs().max().item())
    tolerance = _TOLERANCE_EPS_MULTIPLE * eps * max(ref_out.abs().max().item(), 1.0)
    finite = bool(torch.isfinite(out).all() and torch.isfinite(after).all())
    ok = finite and stepped and diff <= tolerance
    if not finite:
        reason = "the policy produced inf/NaN outputs"
    elif not stepped:
        reason = "the training step was skipped (inf/NaN gradients)"
    elif not ok:
        reason = "outputs differ from FP32 by more than the tolerance: train in FP32 (amp=False)"
    else:
        reason = "forward and one training step agree with FP32"
    if prec.reason:
        reason = f"{reason}; auto: {prec.reason}"
    return CheckResult(ok, diff, tolerance, name, str(dev), reason)
