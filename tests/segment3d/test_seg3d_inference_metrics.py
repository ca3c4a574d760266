"""Sliding-window inference vs whole-volume inference; Dice vs MONAI; HD95; NIfTI predictions."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from mixprec.vision.segment3d.inference import gaussian_weight, sliding_window, window_starts
from mixprec.vision.segment3d.metrics import SegMetrics, dice_per_class, hd95_per_class
from mixprec.vision.segment3d.predict import predict_volume
from mixprec.vision.segment3d.unet import UNet3D, load_unet_yaml


def _pointwise_net(c_in: int = 2, nc: int = 3) -> nn.Module:
    """Translation-equivariant at any window position: 1x1x1 convolutions only."""
    return nn.Sequential(nn.Conv3d(c_in, 8, 1), nn.GELU(), nn.Conv3d(8, nc, 1))


@pytest.mark.parametrize("shape", [(20, 17, 13), (8, 9, 5)])  # larger than / smaller than the patch
def test_sliding_window_equals_whole_volume_for_an_equivariant_net(shape):
    torch.manual_seed(0)
    net = _pointwise_net().eval()
    vol = torch.randn(2, 2, *shape)
    with torch.no_grad():
        whole = net(vol)
    sw = sliding_window(vol, net, (8, 8, 8), nc=3, overlap=0.5, sw_batch=3)
    assert sw.shape == whole.shape and sw.dtype == torch.float32
    torch.testing.assert_close(sw, whole, rtol=1e-5, atol=1e-5)


def test_gaussian_weighting_favours_window_centres():
    w = gaussian_weight((9, 9, 9))
    assert w[4, 4, 4] == 1.0 and w.min() > 0 and w[0, 0, 0] < 0.01
    assert window_starts(20, 8, 0.5) == [0, 4, 8, 12]
    # a predictor whose output depends on the window position: the centre-weighted blend
    # differs from a flat average
    vol = torch.zeros(1, 1, 16, 8, 8)
    calls = iter(range(100))
    pred = lambda x: torch.full((x.shape[0], 1, 8, 8, 8), float(next(calls)))  # noqa: E731
    g = sliding_window(vol, pred, (8, 8, 8), 1, overlap=0.5)
    calls = iter(range(100))
    flat = sliding_window(vol, pred, (8, 8, 8), 1, overlap=0.5, gaussian=False)
    # x=5 lies in window 0 (start 0, value 0) 1.5 from its centre, in window 1 (value 1) 2.5 from it
    assert g[0, 0, 5, 4, 4] < 0.45 and flat[0, 0, 5, 4, 4] == 0.5


def test_dice_equals_monai_dice_metric_on_random_masks():
    from monai.metrics import DiceMetric

    rng = np.random.default_rng(0)
    nc = 4
    metric = DiceMetric(include_background=False, reduction="mean_batch", ignore_empty=True)
    ours = SegMetrics({i: f"c{i}" for i in range(nc)})
    for case in range(5):
        target = rng.integers(0, nc, (10, 12, 9))
        pred = np.where(rng.random(target.shape) < 0.7, target, rng.integers(0, nc, target.shape))
        if case == 0:
            target[target == 3] = 0  # class absent from the ground truth: NaN, left out of the mean
        p = torch.nn.functional.one_hot(torch.as_tensor(pred), nc).permute(3, 0, 1, 2)[None]
        t = torch.nn.functional.one_hot(torch.as_tensor(target), nc).permute(3, 0, 1, 2)[None]
        metric(p, t)
        ours.add(pred, target)
        assert np.allclose(dice_per_class(pred, target, nc), metric.get_buffer()[-1].numpy(), equal_nan=True)
    ref = metric.aggregate().numpy()
    np.testing.assert_allclose(list(ours.per_class_dice.values()), ref, rtol=1e-6)
    assert ours.dice == pytest.approx(float(ref.mean()), rel=1e-6)
    assert np.isnan(dice_per_class(pred, np.zeros_like(target), nc)).all()


def test_hd95_uses_the_voxel_spacing():
    target = np.zeros((20, 20, 20), np.int64)
    target[5:10, 5:10, 5:10] = 1
    pred = np.roll(target, 3, axis=2)  # shifted by 3 voxels along z
    hd = hd95_per_class(pred, target, 2, spacing=(1.0, 1.0, 2.0))
    assert hd[0] == pytest.approx(6.0)
    assert np.isnan(hd95_per_class(np.zeros_like(target), target, 2)[0])


def test_predict_writes_label_map_with_input_affine_and_shape(tmp_path):
    affine = np.array([[0.0, 0.9, 0, 1], [1.1, 0, 0, -2], [0, 0, 2.5, 3], [0, 0, 0, 1]])
    image = np.random.default_rng(0).normal(size=(35, 33, 20)).astype(np.float32)
    nib.save(nib.Nifti1Image(image, affine), str(tmp_path / "case.nii.gz"))
    model = UNet3D(load_unet_yaml("unet3d-n.yaml", nc=3))
    labels, _ = predict_volume(model, tmp_path / "case.nii.gz", (32, 32, 32), tmp_path / "out" / "seg.nii.gz",
                            probabilities=True)
    out = nib.load(str(tmp_path / "out" / "seg.nii.gz"))
    assert out.shape == image.shape and np.allclose(out.affine, affine)
    np.testing.assert_array_equal(np.asarray(out.dataobj), labels)
    probs = nib.load(str(tmp_path / "out" / "seg_probs.nii.gz"))
    assert probs.shape == (*image.shape, 3)
    np.testing.assert_array_equal(np.asarray(probs.dataobj).argmax(-1), labels)
