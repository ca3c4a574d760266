"""Model, data and single-process references shared by the 2-rank scenarios and the tests."""

import torch
from torch import nn

import mixprec as mp

STEPS = 4
MAX_NORM = 1.0
GLOBAL_BATCH = 8


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.LayerNorm(16), nn.SiLU(), nn.Linear(16, 3))


def make_optimizer(model):
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def make_scaler(preset):
    if mp.Policy.parse(preset).default_scaler == "dynamic":
        return mp.DynamicScaler(init_scale=2.0**10, growth_interval=2)
    return None


def batch(step, rank=0, world=1):
    """Rows of the global batch of ``step`` that belong to ``rank`` (all of them when world=1)."""
    g = torch.Generator().manual_seed(1000 + step)
    x, y = torch.randn(GLOBAL_BATCH, 6, generator=g), torch.randn(GLOBAL_BATCH, 3, generator=g)
    per = GLOBAL_BATCH // world
    return x[rank * per:(rank + 1) * per], y[rank * per:(rank + 1) * per]


def fp32_weights(model, opt):
    """name -> FP32 weights: the master copy where the optimizer keeps one, else the parameter."""
    masters = {}
    if isinstance(opt, mp.MasterWeights):
        masters = {id(p): m for p, m in zip(opt.model_params, opt.masters)}
    return {n: masters.get(id(p), p).detach().float().clone() for n, p in model.named_parameters()}


def inject_inf(model, opt):
    """Put an inf into this rank's (local shard of the) first gradient it can find."""
    for p in [*model.parameters(), *(q for g in opt.param_groups for q in g["params"])]:
        if p.grad is not None:
            g = p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad
            if g.numel():
                g.view(-1)[0] = float("inf")
                return
    raise AssertionError("no gradient to inject an inf into")


def single_process(preset, steps=STEPS, rows=None):
    """Reference: one process trains on the concatenated global batches (or only ``rows``)."""
    model = make_model()
    prec = mp.Precision(preset, device="cpu", scaler=make_scaler(preset))
    model, opt = prec.setup(model, make_optimizer(model))
    for step in range(steps):
        x, y = batch(step)
        if rows is not None:
            x, y = x[rows], y[rows]
        with prec.autocast():
            loss = nn.functional.mse_loss(model(x).float(), y)
        prec.backward(loss)
        prec.step(opt, max_norm=MAX_NORM)
        opt.zero_grad(set_to_none=True)
    return fp32_weights(model, opt), prec
