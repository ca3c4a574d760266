"""Resampling to a common spacing: shapes, physical extent, label ids, ``auto`` = median, the
checkpoint round trip, and predict writing each input's own grid."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mixprec.io import load_checkpoint
from mixprec.vision.segment3d import predict as predict_mod
from mixprec.vision.segment3d.dataset import LoadedCase, _fg_sample
from mixprec.vision.segment3d.nifti import write_nifti
from mixprec.vision.segment3d.resample import median_spacing, parse_spacing, resample_case
from mixprec.vision.segment3d.task import Segment3DTask
from mixprec.vision.task import load_weights
from mixprec.vision.trainer import train

TINY = str(Path(__file__).with_name("unet3d-t.yaml"))
FAST = dict(model=TINY, patch=16, batch=2, iterations=2, amp=False, verbose=False, plots=False)


def _world(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    return (affine @ np.c_[ijk, np.ones(len(ijk))].T).T[:, :3]


def test_anisotropic_case_is_resampled_over_the_same_extent():
    shape, spacing = (40, 30, 10), (0.5, 0.5, 2.0)
    x = np.arange(shape[0], dtype=np.float32)
    image = np.broadcast_to(x[:, None, None], shape)[None].copy()  # a ramp along x
    label = np.zeros(shape, np.uint8)
    label[10:30, 5:25, 2:8] = 2
    label[0:4, 0:4, 0:2] = 1
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = (10.0, -5.0, 3.0)
    case = LoadedCase("c", image, label, affine, spacing, _fg_sample(label, 3, np.random.default_rng(0)))
    out = resample_case(case, (1.0, 1.0, 1.0), 3, _fg_sample)
    assert out.image.shape == (1, 20, 15, 20) and out.label.shape == (20, 15, 20)
    assert out.spacing == pytest.approx((1.0, 1.0, 1.0))
    # the ramp stays a ramp: new voxel i sits at old coordinate 2i + 0.5 (interior voxels)
    np.testing.assert_allclose(out.image[0, 1:-1, 7, 10], 2 * np.arange(1, 19) + 0.5, atol=1e-5)
    # the outer cell faces are where they were (same physical extent)
    lo_old = _world(affine, np.array([[-0.5, -0.5, -0.5]]))
    hi_old = _world(affine, np.array([[s - 0.5 for s in shape]]))
    assert np.allclose(_world(out.affine, np.array([[-0.5, -0.5, -0.5]])), lo_old)
    assert np.allclose(_world(out.affine, np.array([[s - 0.5 for s in out.label.shape]])), hi_old)
    # labels: nearest neighbour keeps only the ids there were; volume in mm^3 kept for the block
    assert set(np.unique(out.label)) == {0, 1, 2}
    assert (out.label == 2).sum() * 1.0 == pytest.approx((label == 2).sum() * 0.5, rel=0.05)
    assert set(out.fg_voxels) == {1, 2} and (out.label[tuple(out.fg_voxels[2].T)] == 2).all()
    # already at the target: the very same object
    assert resample_case(out, out.spacing, 3, _fg_sample) is out


def test_spacing_key_values():
    assert parse_spacing("auto") == "auto" and parse_spacing("none") is None and parse_spacing(None) is None
    assert parse_spacing("1.5, 1.5,3") == (1.5, 1.5, 3.0) and parse_spacing([1, 2, 3]) == (1.0, 2.0, 3.0)
    for bad in ("1,2", "a,b,c", "1,0,2", "-1,1,1"):
        with pytest.raises(ValueError, match="spacing="):
            parse_spacing(bad)
    assert median_spacing([(1, 1, 2), (1, 1, 3), (0.8, 0.8, 2.5)]) == (1.0, 1.0, 2.5)


def _decathlon(root: Path, spacings: list[tuple[float, float, float]]) -> Path:
    rng = np.random.default_rng(0)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for i, sp in enumerate(spacings):
        lab = np.zeros((24, 20, 12), np.uint8)
        lab[6:18, 5:15, 3:9] = 1
        img = (rng.normal(size=lab.shape) + 3 * lab).astype(np.float32)
        aff = np.diag([*sp, 1.0])
        write_nifti(root / "imagesTr" / f"c{i}.nii.gz", img, aff)
        write_nifti(root / "labelsTr" / f"c{i}.nii.gz", lab, aff)
        training.append({"image": f"imagesTr/c{i}.nii.gz", "label": f"labelsTr/c{i}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({
        "labels": {"0": "background", "1": "organ"}, "modality": {"0": "MRI"}, "training": training,
        "validation": training[:1]}))
    return root / "dataset.json"


def test_auto_is_the_median_of_the_training_cases(tmp_path):
    js = _decathlon(tmp_path / "d", [(1.0, 1.0, 2.0), (1.0, 1.0, 3.0), (0.5, 0.5, 2.5)])
    data = Segment3DTask().load_data({"data": str(js), "spacing": "auto", "verbose": False})
    assert data.target_spacing == (1.0, 1.0, 2.5)
    shapes = [c.image.shape[1:] for c in data.cases("train")]
    assert shapes == [(24, 20, 10), (24, 20, 14), (12, 10, 12)]
    for c in data.cases("train") + data.cases("val"):
        assert c.spacing == pytest.approx((1.0, 1.0, 2.5), rel=0.1)
        assert c.label.shape == c.image.shape[1:] and set(np.unique(c.label)) <= {0, 1}
    kept = Segment3DTask().load_data({"data": str(js), "spacing": "none", "verbose": False})
    assert [c.image.shape[1:] for c in kept.cases("train")] == [(24, 20, 12)] * 3


def test_spacing_round_trips_and_predict_writes_the_input_grid(tiny_organs, tmp_path, monkeypatch):
    # organs3d is 0.8 x 0.8 x 2.5 mm: train at 1.6 x 1.6 x 2.5 (half the voxels in x and y)
    res = train(data=str(tiny_organs), epochs=1, spacing="1.6,1.6,2.5", project=str(tmp_path / "runs"),
                **FAST)
    ckpt = load_checkpoint(res.best)
    assert ckpt["model"]["spacing"] == [1.6, 1.6, 2.5]
    model, _ = load_weights(res.best)
    assert model.spacing == (1.6, 1.6, 2.5)
    val = Segment3DTask().load_data({"data": str(tiny_organs), "model": str(res.best), "verbose": False})
    assert val.target_spacing == (1.6, 1.6, 2.5)  # Model.val takes the checkpoint's spacing
    assert val.cases("val")[0].image.shape[1:] == (16, 16, 24)
    # an input at yet another spacing: the network sees it at 1.6 x 1.6 x 2.5, the output is on its grid
    src = sorted((tiny_organs.parent / "imagesVa").iterdir())[0]
    img = nib.load(str(src))
    affine = np.diag([1.2, 0.8, 5.0, 1.0])
    affine[:3, 3] = (4.0, -2.0, 7.0)
    other = tmp_path / "other.nii.gz"
    write_nifti(other, np.asarray(img.dataobj, dtype=np.float32), affine)
    seen = []
    real = predict_mod.predict_logits

    def spy(model, image, *a, **k):
        seen.append(image.shape[1:])
        return real(model, image, *a, **k)

    monkeypatch.setattr(predict_mod, "predict_logits", spy)
    out = Segment3DTask().predict(model, other, save_dir=tmp_path / "pred", probabilities=True)[0]
    assert seen == [(24, 16, 48)]  # 32*1.2/1.6, 32*0.8/1.6, 24*5/2.5
    written = nib.load(str(out.saved))
    assert written.shape == img.shape and np.allclose(written.affine, affine)
    assert set(np.unique(out.labels)) <= set(range(5))
    probs = nib.load(str(tmp_path / "pred" / "other_probs.nii.gz"))
    assert probs.shape == (*img.shape, 5) and np.allclose(probs.affine, affine)
    p = np.asarray(probs.dataobj)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(p.argmax(-1), out.labels)
    # at the training spacing nothing is resampled: the input grid goes straight in
    seen.clear()
    same = tmp_path / "same.nii.gz"
    write_nifti(same, np.asarray(img.dataobj, dtype=np.float32), np.diag([1.6, 1.6, 2.5, 1.0]))
    Segment3DTask().predict(model, same)
    assert seen == [img.shape]
