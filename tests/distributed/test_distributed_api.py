"""mixprec.distributed pieces that need no process group: the FSDP2 policy mapping, argument
errors, single-process checkpoints, and MasterWeights' step-time gradient collection (DDP mode)."""

import pytest
import torch
from torch import nn

import mixprec as mp
import mixprec.distributed as mpd

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16


@pytest.mark.parametrize(("preset", "param", "output"), [
    ("32", None, None), ("16-mixed", F16, F32), ("bf16-mixed", BF16, F32), ("16-master", F16, F32),
    ("bf16-master", BF16, F32), ("bf16-true", BF16, BF16)])
def test_policy_maps_onto_fsdp2_mixed_precision_policy(preset, param, output):
    mpp = mpd.mixed_precision_policy(preset)
    assert (mpp.param_dtype, mpp.reduce_dtype, mpp.output_dtype) == (param, F32, output)
    assert mpd.mixed_precision_policy(preset, reduce_dtype="bf16").reduce_dtype == BF16
    assert mpd.mixed_precision_policy(preset, root=False).output_dtype is None  # inner units


def test_bad_reduce_dtype_and_fp8_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="use float32, bfloat16 or float16"):
        mpd.mixed_precision_policy("bf16-mixed", reduce_dtype="fp8_e4m3")
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        mpd.mixed_precision_policy("bf16-mixed", reduce_dtype="int8")
    with pytest.raises(ValueError, match="use 'bf16-mixed'"):
        mpd.mixed_precision_policy("fp8-mixed")


def test_ddp_needs_an_initialised_process_group():
    model = nn.Linear(2, 2)
    with pytest.raises(RuntimeError, match="torchrun"):
        mpd.ddp(model)


def test_rank_helpers_in_one_process():
    assert (mpd.rank(), mpd.world_size(), mpd.is_main_process()) == (0, 1, True)
    mpd.barrier()
    model = nn.Linear(2, 2)
    assert mpd.unwrap(model) is model


def _batch(step):
    g = torch.Generator().manual_seed(step)
    return torch.randn(4, 3, generator=g), torch.randn(4, 2, generator=g)


def _train(model, opt, prec, steps, start=0):
    for step in range(start, start + steps):
        x, y = _batch(step)
        with prec.autocast():
            loss = nn.functional.mse_loss(model(x).float(), y)
        prec.backward(loss)
        prec.step(opt)
        opt.zero_grad(set_to_none=True)


def _build():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    prec = mp.Precision("16-master", device="cpu", scaler=mp.DynamicScaler(init_scale=256, growth_interval=1))
    model, opt = prec.setup(model, torch.optim.AdamW(model.parameters(), lr=1e-2))
    return model, opt, prec


def test_single_process_checkpoint_resumes_bit_exact(tmp_path):
    straight = _build()
    _train(*straight, 4)
    first = _build()
    _train(*first, 2)
    mpd.save_checkpoint(tmp_path / "last.pt", *first, extra={"epoch": 2})
    model, opt, prec = _build()
    assert mpd.load_checkpoint(tmp_path / "last.pt", model, opt, prec) == {"epoch": 2}
    _train(model, opt, prec, 2, start=2)
    for a, b in zip(straight[0].state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    assert straight[2].state_dict() == prec.state_dict()


def test_checkpoint_kind_mismatch_and_missing_parts_are_explained(tmp_path):
    model, opt, prec = _build()
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="FSDP2"):
        mpd.load_checkpoint(tmp_path / "folder", model, opt, prec)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        mpd.load_checkpoint(tmp_path / "nope.pt", model)
    mpd.save_checkpoint(tmp_path / "model-only.pt", model)
    with pytest.raises(ValueError, match="no optimizer state"):
        mpd.load_checkpoint(tmp_path / "model-only.pt", model, opt)
    with pytest.raises(ValueError, match="no Precision state"):
        mpd.load_checkpoint(tmp_path / "model-only.pt", model, None, prec)


def test_deferred_gradient_collection_equals_the_hooks():
    """DDP mode of MasterWeights: half gradients wait on the parameters until the step, then move
    to the FP32 masters; one micro-batch gives bit-identical training to the hook path."""
    hooked, deferred = _build(), _build()
    deferred[1].defer_grads()
    _train(*hooked, 3)
    model, opt, prec = deferred
    x, y = _batch(0)
    with prec.autocast():
        loss = nn.functional.mse_loss(model(x).float(), y)
    prec.backward(loss)
    assert all(p.grad is not None and p.grad.dtype == F16 for p in opt.model_params)
    assert all(m.grad is None for m in opt.masters)
    prec.step(opt)
    opt.zero_grad(set_to_none=True)
    _train(model, opt, prec, 2, start=1)
    for a, b in zip(hooked[0].state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)


def test_hooked_master_weights_refuse_a_gradient_written_after_backward():
    model, opt, prec = _build()
    with prec.autocast():
        loss = model(torch.randn(2, 3)).float().sum()
    prec.backward(loss)
    opt.model_params[0].grad = torch.zeros_like(opt.model_params[0])  # as DDP's all-reduce would
    with pytest.raises(RuntimeError, match="mixprec.distributed.ddp"):
        prec.step(opt)
