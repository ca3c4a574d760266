"""NIfTI I/O, Decathlon dataset.json / folder, data YAML resolution and the bad-input cases."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mixprec.vision.segment3d.config import Case, label_for, load_seg_data
from mixprec.vision.segment3d.dataset import (
    ChannelMismatchError,
    LabelShapeError,
    LabelValueError,
    MissingLabelError,
    check_case,
    load_cases,
)
from mixprec.vision.segment3d.nifti import UnreadableVolumeError, read_image, read_label, write_nifti

AFFINE = np.array([[0.8, 0, 0, -10.0], [0, 0.7, 0, 5.0], [0, 0, 2.5, 3.0], [0, 0, 0, 1]])


def _write(path: Path, arr: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, affine), str(path))
    return path


def _case(root: Path, name: str, shape=(8, 9, 6), nc: int = 3, seed: int = 0, folder: str = "Tr") -> Case:
    rng = np.random.default_rng(seed)
    img = _write(root / f"images{folder}" / f"{name}.nii.gz", rng.normal(size=shape).astype(np.float32))
    lab = _write(root / f"labels{folder}" / f"{name}.nii.gz", rng.integers(0, nc, shape[:3]).astype(np.uint8))
    return Case(img, lab)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_nifti_round_trip_keeps_data_affine_and_spacing(tmp_path, suffix):
    rng = np.random.default_rng(1)
    img = rng.normal(size=(2, 7, 6, 5)).astype(np.float32)  # channel-first in memory
    write_nifti(tmp_path / f"img{suffix}", img, AFFINE)
    back = read_image(tmp_path / f"img{suffix}")
    np.testing.assert_array_equal(back.array, img)
    np.testing.assert_allclose(back.affine, AFFINE)
    assert back.spacing == pytest.approx((0.8, 0.7, 2.5))
    # on disk it is channel last, as the Decathlon stores multi-modal cases
    assert nib.load(str(tmp_path / f"img{suffix}")).shape == (7, 6, 5, 2)
    lab = rng.integers(0, 4, (7, 6, 5)).astype(np.uint8)
    write_nifti(tmp_path / f"lab{suffix}", lab, AFFINE)
    vol, _ = read_label(tmp_path / f"lab{suffix}")
    np.testing.assert_array_equal(vol.array, lab)
    np.testing.assert_allclose(vol.affine, AFFINE)


def test_label_rules():
    assert label_for(Path("/d/imagesTr/a.nii.gz")) == Path("/d/labelsTr/a.nii.gz")
    assert label_for(Path("/d/images/train/a.nii")) == Path("/d/labels/train/a.nii")
    assert label_for(Path("/d/images/x/imagesTs/a.nii")) == Path("/d/images/x/labelsTs/a.nii")
    assert label_for(Path("/d/volumes/a.nii")) is None


def test_decathlon_json_split_is_seeded_and_disjoint(tmp_path):
    cases = [_case(tmp_path, f"c{i}", seed=i) for i in range(10)]
    training = [{"image": f"./imagesTr/{c.image.name}", "label": f"./labelsTr/{c.image.name}"} for c in cases]
    (tmp_path / "dataset.json").write_text(json.dumps(
        {"labels": {"0": "background", "1": "a", "2": "b"}, "modality": {"0": "CT"}, "training": training}))
    a = load_seg_data(tmp_path, val_fraction=0.3, seed=1)  # the folder
    b = load_seg_data(tmp_path / "dataset.json", val_fraction=0.3, seed=1)
    c = load_seg_data(tmp_path / "dataset.json", val_fraction=0.3, seed=2)
    assert a.names == {0: "background", 1: "a", 2: "b"} and a.modalities == 1
    assert len(a.splits["val"]) == 3 and len(a.splits["train"]) == 7
    assert a.splits == b.splits
    assert a.splits["val"] != c.splits["val"]
    assert {x.image for x in a.splits["train"]}.isdisjoint({x.image for x in a.splits["val"]})
    assert {x.image for x in a.splits["train"] + a.splits["val"]} == {x.image for x in cases}
    assert all(x.label == x.image.parent.parent / "labelsTr" / x.image.name for x in a.splits["val"])


def test_decathlon_validation_list_is_used(tmp_path):
    cases = [_case(tmp_path, f"c{i}", seed=i) for i in range(3)]
    item = [{"image": str(c.image), "label": str(c.label)} for c in cases]
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": ["bg", "x", "y"], "training": item[:2],
                                                       "validation": item[2:]}))
    cfg = load_seg_data(tmp_path / "dataset.json")
    assert [c.image for c in cfg.splits["val"]] == [cases[2].image]


@pytest.mark.parametrize("form", ["folder", "txt", "list"])
def test_data_yaml_split_forms_and_label_rules(tmp_path, form):
    tr = [_case(tmp_path, f"t{i}", seed=i) for i in range(2)]
    va = [_case(tmp_path / "v", f"v{i}", seed=9 + i, folder="") for i in range(2)]  # images/ -> labels/
    if form == "folder":
        train, val = "imagesTr", "v/images"
    elif form == "txt":
        (tmp_path / "train.txt").write_text("\n".join(f"imagesTr/{c.image.name}" for c in tr))
        (tmp_path / "val.txt").write_text("\n".join(str(c.image) for c in va))
        train, val = "train.txt", "val.txt"
    else:
        train, val = [f"imagesTr/{c.image.name}" for c in tr], [str(c.image) for c in va]
    import yaml

    (tmp_path / "d.yaml").write_text(yaml.safe_dump({"path": str(tmp_path), "train": train, "val": val,
                                                     "names": {0: "background", 1: "a", 2: "b"}}))
    cfg = load_seg_data(tmp_path / "d.yaml")
    assert [(c.image, c.label) for c in cfg.splits["train"]] == [(c.image, c.label) for c in tr]
    assert [(c.image, c.label) for c in cfg.splits["val"]] == [(c.image, c.label) for c in va]


def test_multimodal_4d_channel_last(tmp_path):
    c0 = _case(tmp_path, "mm", shape=(8, 9, 6, 2))
    lc = check_case(c0, nc=3)
    assert lc.image.shape == (2, 8, 9, 6) and lc.label.shape == (8, 9, 6)
    raw = nib.load(str(c0.image)).get_fdata()
    for ch in range(2):  # channel ch is the z-scored 4th axis
        ref = raw[..., ch]
        np.testing.assert_allclose(lc.image[ch], (ref - ref.mean()) / ref.std(), rtol=1e-4, atol=1e-5)
    with pytest.raises(ChannelMismatchError, match="2 channel"):
        check_case(c0, nc=3, channels=1)


def test_bad_inputs_raise_named_errors(tmp_path):
    good = _case(tmp_path, "good")
    shape = _case(tmp_path, "shape")
    _write(shape.label, np.zeros((8, 9, 5), np.uint8))
    frac = _case(tmp_path, "frac")
    _write(frac.label, np.full((8, 9, 6), 1.5, np.float32))
    big = _case(tmp_path, "big")
    _write(big.label, np.full((8, 9, 6), 7, np.uint8))
    neg = _case(tmp_path, "neg")
    _write(neg.label, np.full((8, 9, 6), -1, np.int16))
    nolab = Case(_case(tmp_path, "nolab").image, tmp_path / "labelsTr" / "absent.nii.gz")
    broken = _case(tmp_path, "broken")
    broken.image.write_bytes(b"not a nifti file")
    check_case(good, nc=3)
    with pytest.raises(LabelShapeError, match=r"\(8, 9, 5\) != image shape \(8, 9, 6\)"):
        check_case(shape, nc=3)
    with pytest.raises(LabelValueError, match="non-integer label value 1.5"):
        check_case(frac, nc=3)
    with pytest.raises(LabelValueError, match=r"7..7 outside 0..2"):
        check_case(big, nc=3)
    with pytest.raises(LabelValueError, match=r"-1..-1 outside 0..2"):
        check_case(neg, nc=3)
    with pytest.raises(MissingLabelError, match="no label file"):
        check_case(nolab, nc=3)
    with pytest.raises(UnreadableVolumeError, match="not a readable NIfTI"):
        check_case(broken, nc=3)
    loaded, report = load_cases([good, shape, frac, big, neg, nolab, broken], nc=3, verbose=False)
    assert [c.name for c in loaded] == ["good"]
    assert dict(report.counts) == {"LabelShapeError": 1, "LabelValueError": 3, "MissingLabelError": 1,
                                   "UnreadableVolumeError": 1}
    with pytest.raises(ValueError, match="no usable case out of 2"):
        load_cases([shape, broken], nc=3, verbose=False)


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="organs3d.yaml"):
        load_seg_data(tmp_path / "nothing.yaml")
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"0": "bg"}, "training": []}))
    with pytest.raises(ValueError, match="non-empty 'training'"):
        load_seg_data(tmp_path)
    (tmp_path / "d.yaml").write_text("train: x\nval: x\n")
    with pytest.raises(ValueError, match="missing key 'names'"):
        load_seg_data(tmp_path / "d.yaml")
