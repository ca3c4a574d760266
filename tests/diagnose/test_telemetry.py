"""Telemetry as a context manager: what it measures equals direct measurement of the same
tensors, and switching it off leaves no hook behind."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as module_mod

import mixprec as mp
from mixprec.diagnose import RangeAccumulator, Telemetry


def _hook_census(model):
    counts = []
    for m in model.modules():
        counts += [len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
                   len(m._backward_pre_hooks)]
    for p in model.parameters():
        counts.append(len(getattr(p, "_post_accumulate_grad_hooks", None) or {}))
        counts.append(len(p._backward_hooks or {}))             # tensor hooks on the leaf
    counts += [len(module_mod._global_forward_hooks), len(module_mod._global_backward_hooks)]
    return counts


def test_no_hooks_left_when_off(small):
    before = _hook_census(small)
    tel = Telemetry(small, "fp16")
    assert tel.hook_count == 0
    with tel:
        assert tel.hook_count > 0 and _hook_census(small) != before
        small(torch.randn(2, 8)).sum().backward()
    assert tel.hook_count == 0 and _hook_census(small) == before
    seen = tel.module_stats()[1].forward.calls
    small(torch.randn(2, 8)).sum().backward()          # off: nothing more is recorded
    assert tel.module_stats()[1].forward.calls == seen
    # and a model that raised inside the block is cleaned up too
    try:
        with Telemetry(small, "fp16"):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert _hook_census(small) == before


def test_measures_the_same_tensors_as_direct_hooks(small):
    """Activations, activation gradients and weight gradients of fc1, at a loss scale of 8,
    against accumulators fed directly with retained tensors."""
    x = torch.randn(5, 8)
    scale = 8.0
    with Telemetry(small, "fp16", scale=scale) as tel:
        h = small.fc1(x)
        h.retain_grad()
        out = small.fc2(small.act(h))
        (out.pow(2).sum() * scale).backward()
    stats = {m.name: m for m in tel.module_stats()}
    ref_fwd, ref_ag, ref_wg = (RangeAccumulator("fp16") for _ in range(3))
    ref_fwd.add(h)
    ref_ag.add(h.grad, scale)
    ref_wg.add(small.fc1.weight.grad, scale)
    ref_wg.add(small.fc1.bias.grad, scale)
    for got, ref in ((stats["fc1"].forward, ref_fwd), (stats["fc1"].act_grad, ref_ag),
                     (stats["fc1"].weight_grad, ref_wg)):
        r = ref.summary()
        assert got.counts == r.counts and got.hist == r.hist
        assert got.max_abs == r.max_abs and got.max_abs_unscaled == r.max_abs_unscaled
    assert stats["fc1"].act_grad.max_abs_unscaled == float(h.grad.abs().max()) / scale
    # the root's pre-hook did not run (we called submodules), so the container saw nothing
    assert stats["(model)"].forward is None


def test_inplace_activation_and_tuple_outputs():
    class Two(nn.Module):
        def forward(self, x):
            return x * 2, x * 3

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.relu = nn.ReLU(inplace=True)
            self.two = Two()

        def forward(self, x):
            a, b = self.two(self.relu(self.lin(x)))
            return (a + b).sum()

    net = Net()
    with Telemetry(net, "bf16") as tel:
        net(torch.randn(3, 4)).backward()
    stats = {m.name: m for m in tel.module_stats()}
    assert stats["two"].forward.elements == 24 and stats["two"].act_grad.elements == 24
    assert stats["lin"].act_grad.elements == 12 and stats["lin"].weight_grad.elements == 20
    # the in-place ReLU changed lin's output tensor after lin's hook: measured before and after
    assert stats["lin"].forward.counts["zeros"] == 0 < stats["relu"].forward.counts["zeros"]


def test_works_in_a_users_loop_with_precision(small):
    prec = mp.Precision("16-mixed", device="cpu")
    opt = torch.optim.SGD(small.parameters(), lr=0.01)
    model, opt = prec.setup(small, opt)
    x, y = torch.randn(4, 8), torch.randn(4, 4)
    with Telemetry(model, precision=prec) as tel:
        for _ in range(3):
            with prec.autocast():
                loss = F.mse_loss(model(x), y)
            prec.backward(loss)
            stepped = prec.step(opt)
            tel.on_step(prec, model, stepped, loss=loss)
            opt.zero_grad(set_to_none=True)
    assert tel.fmt.name == "fp16" and not tel.what_if and tel.forwards == 3
    rep = tel.report()
    assert rep.stepped == [True, True, True] and rep.scales == [2.0**16] * 3
    assert rep.module("fc2").act_grad.calls == 3
    # at scale 2**16 the FP16 activation gradients are far from the flush line ...
    assert rep.totals["act_grad"].share("underflow_s") == 0.0
    assert rep.health["ok"]


def test_module_callable_and_lazy_export():
    import mixprec.diagnose as d

    assert callable(d) and callable(mp.diagnose)
    assert d.Telemetry is Telemetry
    r = d(nn.Linear(2, 2), [(torch.ones(1, 2), torch.ones(1, 2))], F.mse_loss, precision="32",
          steps=1)
    assert r.fmt.name == "fp16" and r.stepped == [True]


def test_batches_from_iterables(small):
    pairs = [(torch.randn(2, 8), torch.randn(2, 4)) for _ in range(2)]
    r = mp.diagnose(small, (p for p in pairs * 2), F.mse_loss, precision="32", steps=3)
    assert len(r.stepped) == 3
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(
        torch.randn(4, 8), torch.randn(4, 4)), batch_size=2)
    r = mp.diagnose(small, loader, F.mse_loss, precision="32", steps=5)   # restarted
    assert len(r.stepped) == 5
    with pytest.raises(ValueError, match="ran out after 2 of 3"):
        mp.diagnose(small, iter(pairs), F.mse_loss, precision="32", steps=3)
    with pytest.raises(ValueError, match="empty"):
        mp.diagnose(small, [], F.mse_loss, precision="32", steps=1)
    with pytest.raises(ValueError, match="forward=lambda"):
        mp.diagnose(small, [{"x": 1}], F.mse_loss, precision="32", steps=1)


@pytest.mark.parametrize("preset", ["16-master", "bf16-mixed"])
def test_other_presets(small, preset):
    x, y = torch.randn(4, 8), torch.randn(4, 4)
    r = mp.diagnose(small, [(x, y)], F.mse_loss, precision=preset, steps=2)
    assert r.stepped == [True, True]
    assert r.module("fc1").weight_grad.calls == 4            # weight and bias, two steps
    if preset == "bf16-mixed":
        assert r.fmt.name == "bf16" and r.recommendations["bf16"]["reason"] == "already BF16"
        assert r.scales == [1.0, 1.0]
    else:
        assert r.fmt.name == "fp16" and r.scales == [2.0**16] * 2
