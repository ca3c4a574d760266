"""Activation checkpointing (torch.utils.checkpoint, use_reentrant=False) under prec.autocast()
gives exactly the gradients of the same step without checkpointing, for every preset, with real
dtypes and under emulation (the recomputation runs during backward, outside the forward's
context: it must still see the forward's precision)."""

import warnings

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import mixprec as mp


class Net(nn.Module):
    def __init__(self, use_checkpoint: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.use_checkpoint = use_checkpoint
        self.stem = nn.Linear(12, 32)
        self.block = nn.Sequential(nn.Linear(32, 32), nn.LayerNorm(32), nn.GELU(), nn.Linear(32, 32))
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        h = self.stem(x)
        h = checkpoint(self.block, h, use_reentrant=False) if self.use_checkpoint else self.block(h)
        return self.head(torch.tanh(h))


def _grads(preset: str, emulate: bool, use_checkpoint: bool, device: str = "cpu"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # *-true presets warn about pure half
        prec = mp.Precision(preset, device=device, emulate=emulate)
    model = Net(use_checkpoint).to(device)
    model, opt = prec.setup(model, torch.optim.SGD(model.parameters(), lr=0.1))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 12, generator=g).to(device), torch.randint(3, (8,), generator=g).to(device)
    with prec.autocast():
        loss = nn.functional.cross_entropy(model(x), y)
    prec.backward(loss)
    stepped = [q for group in opt.param_groups for q in group["params"]]
    return loss.detach(), [q.grad.clone() for q in stepped]


CASES = [(p, False) for p in mp.PRESETS if p != "fp8-mixed"] + [(p, True) for p in mp.PRESETS if p != "32"]


IDS = [f"{p}{'-emulated' if e else ''}" for p, e in CASES]


@pytest.mark.parametrize(("preset", "emulate"), CASES, ids=IDS)
def test_checkpointed_gradients_equal_plain_gradients(preset, emulate):
    loss_ref, ref = _grads(preset, emulate, use_checkpoint=False)
    loss, got = _grads(preset, emulate, use_checkpoint=True)
    assert torch.equal(loss, loss_ref)
    assert len(got) == len(ref)
    for a, b in zip(got, ref):
        assert a.dtype == b.dtype and torch.equal(a, b)


@pytest.mark.cuda
@pytest.mark.parametrize(("preset", "emulate"), [("16-mixed", False), ("bf16-master", False),
                                                 ("16-mixed", True), ("bf16-master", True),
                                                 ("fp8-mixed", True)])
def test_checkpointed_gradients_equal_plain_gradients_on_cuda(preset, emulate):
    """On CUDA the backward (and the recomputation in it) runs on autograd's device thread."""
    loss_ref, ref = _grads(preset, emulate, use_checkpoint=False, device="cuda")
    loss, got = _grads(preset, emulate, use_checkpoint=True, device="cuda")
    assert torch.equal(loss, loss_ref)
    for a, b in zip(got, ref):
        assert a.dtype == b.dtype and torch.equal(a, b)
