"""Patch sampler (foreground share, determinism), augmentation, Dice+CE loss, poly LR."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from mixprec.vision.segment3d.dataset import LoadedCase, _fg_sample
from mixprec.vision.segment3d.loss import DiceCELoss
from mixprec.vision.segment3d.sampler import PatchSampler, augment, crop
from mixprec.vision.segment3d.schedule import poly_lr


def _case(label: np.ndarray, channels: int = 1) -> LoadedCase:
    img = np.random.default_rng(0).normal(size=(channels, *label.shape)).astype(np.float32)
    fg = _fg_sample(label, 3, np.random.default_rng(0))
    return LoadedCase("c", img, label, np.eye(4), (1.0, 1.0, 1.0), fg)


def test_one_third_of_patches_are_foreground_centred():
    label = np.zeros((64, 64, 64), np.uint8)
    label[50, 10, 40] = 2  # one tiny foreground voxel that a random 8^3 patch almost never hits
    sampler = PatchSampler([_case(label)], (8, 8, 8), batch=3, iterations=40, seed=0)
    hits = [int((y == 2).flatten(1).any(1).sum()) for _, y in sampler.epoch(0)]
    share = sum(hits) / (3 * 40)
    assert 1 / 3 <= share < 1 / 3 + 0.03
    # the forced ones are exactly every third patch of the stream, centred on the voxel
    x, y = sampler.batch_at(0, 5)
    assert y[2, 4, 4, 4] == 2 and x.shape == (3, 1, 8, 8, 8) and y.dtype == torch.int64


def test_sampler_is_a_pure_function_of_seed_epoch_and_index():
    label = np.random.default_rng(1).integers(0, 3, (20, 20, 20)).astype(np.uint8)
    s1 = PatchSampler([_case(label)], (8, 8, 8), batch=2, iterations=4, seed=3)
    s2 = PatchSampler([_case(label)], (8, 8, 8), batch=2, iterations=4, seed=3)
    a = list(s1.epoch(1))
    assert torch.equal(a[2][0], s2.batch_at(1, 2)[0]) and torch.equal(a[2][1], s2.batch_at(1, 2)[1])
    assert not torch.equal(a[2][0], s1.batch_at(2, 2)[0])


def test_crop_pads_volumes_smaller_than_the_patch():
    arr = np.arange(2 * 3 * 4).reshape(2, 3, 4)[None].astype(np.float32)
    out = crop(arr, np.array([-1, -1, 0]), (4, 5, 4))
    assert out.shape == (1, 4, 5, 4)
    np.testing.assert_array_equal(out[0, 1:3, 1:4], arr[0])
    assert out[0, 0].sum() == 0 and out[0, 3].sum() == 0


def test_augment_keeps_image_and_label_aligned_and_varies():
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (6, 8, 8, 6))
    x = y[:, None].float().repeat(1, 2, 1, 1, 1)
    xa, ya = augment(x, y, gen, intensity=False)
    assert torch.equal(xa[:, 0].long(), ya) and torch.equal(xa[:, 1].long(), ya)
    assert not torch.equal(ya, y)  # at least one sample was flipped/rotated
    assert sorted(ya.flatten().tolist()) == sorted(y.flatten().tolist())
    xi, yi = augment(x, y, torch.Generator().manual_seed(0), intensity=True)
    assert torch.equal(yi, ya) and not torch.equal(xi, xa)  # same geometry, intensity changed


def test_dice_ce_equals_monai_and_is_fp32():
    from monai.losses import DiceCELoss as MonaiDiceCE

    torch.manual_seed(0)
    logits = torch.randn(2, 4, 6, 7, 5)
    target = torch.randint(0, 4, (2, 6, 7, 5))
    ours, (ce, dice) = DiceCELoss(4)(logits, target)
    ref = MonaiDiceCE(to_onehot_y=True, softmax=True, include_background=False,
                      smooth_nr=1e-5, smooth_dr=1e-5)(logits, target[:, None])
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    half, _ = DiceCELoss(4)(logits.bfloat16(), target)
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(DiceCELoss(4)(logits.bfloat16().float(), target)[0].item(), rel=1e-6)


def test_deep_supervision_weights():
    target = torch.randint(0, 3, (1, 8, 8, 8))
    outs = [torch.randn(1, 3, 8, 8, 8), torch.randn(1, 3, 4, 4, 4)]
    loss = DiceCELoss(3)
    full, _ = loss(outs[0], target)
    half, _ = loss(outs[1], target[:, ::2, ::2, ::2])
    both, _ = loss(outs, target)
    assert both.item() == pytest.approx((2 * full.item() + half.item()) / 3, rel=1e-6)


def test_poly_lr_with_warmup():
    lrs = [poly_lr(s, 100, 0.01, warmup=10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.001) and lrs[9] == pytest.approx(0.01) and lrs[10] == pytest.approx(0.01)
    assert lrs[55] == pytest.approx(0.01 * 0.5 ** 0.9)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))
    with pytest.raises(ValueError, match="warmup"):
        poly_lr(0, 10, 0.01, warmup=10)


def test_instance_norm_affine_params_get_no_weight_decay():
    from mixprec.vision.optim import build_optimizer
    from mixprec.vision.segment3d.task import Segment3DTask

    model = Segment3DTask().new_model("unet3d-n.yaml", 5, 1)
    opt = build_optimizer(model, "AdamW", 1e-3, 0.9, 3e-5)
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    norms = [m for m in model.modules() if isinstance(m, torch.nn.InstanceNorm3d)]
    assert norms and all(m.affine for m in norms)
    for m in norms:
        assert group_of[id(m.weight)]["name"] == "norm" and group_of[id(m.weight)]["weight_decay"] == 0.0
        assert group_of[id(m.bias)]["name"] == "bias" and group_of[id(m.bias)]["weight_decay"] == 0.0
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv3d)]
    assert all(group_of[id(m.weight)]["weight_decay"] == 3e-5 for m in convs)
    # every parameter is in exactly one group
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
