"""The claims of mixed precision, shown with real FP16/BF16 dtypes on the CPU.

1 loss scaling prevents underflow; 2 the master copy keeps small updates; 3 parity on digits;
4 overflow skips the step; 6 FP32 accumulation over micro-batches. (5 and 7: test_resume.py.)
"""

import pytest
import torch
from torch import nn

import mixprec as mp


def _grad_of_tiny_loss(precision: str, scaler=None) -> torch.Tensor:
    torch.manual_seed(0)
    model = nn.Linear(16, 4)
    prec = mp.Precision(precision, scaler=scaler, device="cpu")
    model, opt = prec.setup(model, torch.optim.SGD(model.parameters(), lr=0.0))
    x = torch.rand(8, 16) + 0.5  # positive inputs: no cancellation in the weight gradient sums
    with prec.autocast():
        loss = (model(x) * 1e-8).sum()  # d loss / d output = 1e-8 < FP16's smallest subnormal
    prec.backward(loss)
    # unscale into .grad without stepping: the optimizer has lr=0
    prec.step(opt)
    return model.weight.grad.float().clone()


def test_loss_scaling_prevents_underflow():
    reference = _grad_of_tiny_loss("32")
    assert reference.abs().min() > 0
    unscaled = _grad_of_tiny_loss("16-mixed", scaler="none")
    assert torch.count_nonzero(unscaled) == 0  # every gradient flushed to zero in FP16
    scaled = _grad_of_tiny_loss("16-mixed")  # dynamic scaler, 2**16
    rel = ((scaled - reference).abs() / reference.abs()).max().item()
    assert rel < 0.01, rel


def _train_scalar_weight(precision: str, steps: int, lr: float = 1e-4, **kwargs) -> float:
    model = nn.Linear(1, 1, bias=False)
    nn.init.ones_(model.weight)
    with pytest.warns(UserWarning, match="pure half") if precision.endswith("-true") else _nothing():
        prec = mp.Precision(precision, device="cpu", **kwargs)
    model, opt = prec.setup(model, torch.optim.SGD(model.parameters(), lr=lr))
    x = torch.ones(1, 1)
    for _ in range(steps):
        with prec.autocast():
            loss = model(x).sum()  # gradient 1.0, so each update is -lr
        prec.backward(loss)
        prec.step(opt)  # 16-master: the first step overflows at scale 2**16 and is skipped
        opt.zero_grad(set_to_none=True)
    assert prec.skipped_steps <= 1
    return model.weight.float().item()


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize(("true", "master"), [("16-true", "16-master"), ("bf16-true", "bf16-master")])
def test_master_copy_keeps_small_updates(true, master):
    steps = 100
    expected = _train_scalar_weight("32", steps)
    assert expected == pytest.approx(1 - steps * 1e-4, rel=1e-5)
    assert _train_scalar_weight(true, steps) == 1.0  # 1e-4 < half an ulp of 1.0: never moves
    assert _train_scalar_weight(master, steps) == pytest.approx(expected, rel=0.01)


def test_stochastic_rounding_tracks_fp32_without_a_master_copy():
    steps = 1000
    expected = _train_scalar_weight("32", steps)
    assert _train_scalar_weight("bf16-true", steps, stochastic_rounding=True) == \
        pytest.approx(expected, rel=0.05)


def _digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(x), generator=g)
    x, y = x[order], y[order]
    return (x[:1400], y[:1400]), (x[1400:], y[1400:])


def _digits_accuracy(precision: str) -> float:
    (xt, yt), (xv, yv) = _digits()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.LayerNorm(128), nn.ReLU(), nn.Linear(128, 10))
    prec = mp.Precision(precision, device="cpu")
    model, opt = prec.setup(model, torch.optim.AdamW(model.parameters(), lr=3e-3))
    g = torch.Generator().manual_seed(1)
    for _ in range(12):
        for idx in torch.randperm(len(xt), generator=g).split(64):
            with prec.autocast():
                loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            prec.backward(loss)
            prec.step(opt)
            opt.zero_grad(set_to_none=True)
    with torch.no_grad(), prec.autocast():
        return (model(xv).argmax(1) == yv).float().mean().item() * 100


def test_parity_on_digits():
    reference = _digits_accuracy("32")
    assert reference > 93.0
    for precision in ["16-mixed", "bf16-mixed", "16-master", "bf16-master"]:
        accuracy = _digits_accuracy(precision)
        assert abs(accuracy - reference) <= 1.5, (precision, accuracy, reference)


@pytest.mark.filterwarnings("ignore:.*pure half")
def test_pure_fp16_fails_where_the_master_copy_converges():
    """16-true: AdamW's state and eps (1e-8) live in FP16 and flush to zero; training collapses."""
    assert _digits_accuracy("16-true") < _digits_accuracy("16-master") - 50


@pytest.mark.parametrize("precision", ["16-mixed", "16-master", "bf16-mixed"])
def test_injected_inf_skips_step_and_halves_scale(precision):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    prec = mp.Precision(precision, device="cpu")
    model, opt = prec.setup(model, torch.optim.Adam(model.parameters(), lr=1e-2))
    x = torch.randn(8, 4)

    def backward():
        with prec.autocast():
            prec.backward(model(x).float().pow(2).mean())

    backward()
    assert prec.step(opt)  # one good step, so the optimizer has state
    opt.zero_grad(set_to_none=True)
    params = [p.detach().clone() for p in model.parameters()]
    state = [v.clone() for s in opt.state.values() for v in s.values()]
    scale = prec.scaler.scale
    backward()
    next(g for grp in opt.param_groups for g in grp["params"] if g.grad is not None).grad[0] = float("inf")
    assert prec.step(opt) is False
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(state, (v for s in opt.state.values() for v in s.values())))
    expected = scale * 0.5 if precision.startswith("16") else 1.0  # bf16: no scaler, scale stays 1
    assert prec.scaler.scale == expected
    assert prec.skipped_steps == 1


def _accumulate(precision: str, micro_grads: torch.Tensor) -> torch.Tensor:
    model = nn.Linear(micro_grads.shape[1], 1, bias=False)
    prec = mp.Precision(precision, scaler="none", device="cpu")
    model, opt = prec.setup(model, torch.optim.SGD(model.parameters(), lr=0.0))
    for g in micro_grads:
        with prec.autocast():
            loss = model(g[None].to(torch.float16)).sum()  # d loss / d weight = g
        prec.backward(loss)
    grads = [p.grad for grp in opt.param_groups for p in grp["params"]]
    return grads[0].double().flatten()


def test_fp32_accumulation_over_64_micro_batches():
    g = torch.Generator().manual_seed(0)
    micro = (1e-3 * (1 + torch.rand(64, 32, generator=g))).to(torch.float16)
    reference = micro.double().sum(0)  # exact sum of the FP16 micro-batch gradients
    master = _accumulate("16-master", micro)
    with pytest.warns(UserWarning, match="pure half"):
        naive = _accumulate("16-true", micro)  # .grad accumulates in FP16
    master_err = ((master - reference).abs() / reference).max().item()
    naive_err = ((naive - reference).abs() / reference).max().item()
    assert master_err < 1e-6, master_err
    assert naive_err > 100 * master_err and naive_err > 1e-4, naive_err
