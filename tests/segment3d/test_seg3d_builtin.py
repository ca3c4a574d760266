"""Built-in organs3d / lesions3d: generated locally, deterministic, registered by name."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from mixprec.vision.segment3d import builtin
from mixprec.vision.segment3d.config import load_seg_data
from mixprec.vision.segment3d.dataset import load_cases


def test_organs3d_case_has_every_organ_body_and_anisotropic_spacing():
    image, label, affine = builtin.make_case("organs3d", 0)
    assert image.shape == (96, 96, 64) and image.dtype == np.int16
    counts = np.bincount(label.ravel(), minlength=5)
    assert (counts[1:] > 0).all()
    assert counts[1] > counts[2] > counts[4]  # liver > spleen > bladder: different sizes
    means = [image[label == c].mean() for c in range(1, 5)]
    assert len({round(m, -1) for m in means}) == 4  # different intensities
    assert (image < -900).mean() > 0.1 and (image > -200).mean() > 0.4  # air around a body
    assert np.diag(affine)[:3].tolist() == [0.8, 0.8, 2.5]


def test_lesions3d_is_two_channel_with_small_structures():
    image, label, _ = builtin.make_case("lesions3d", 0)
    assert image.shape == (2, 80, 80, 48)
    frac = np.bincount(label.ravel(), minlength=3)[1:] / label.size
    assert (frac > 0).all() and (frac < 0.01).all()  # small, thin foreground


def test_generation_is_deterministic_and_registered(tmp_path, monkeypatch):
    monkeypatch.setitem(builtin.BUILTIN, "organs3d", {**builtin.BUILTIN["organs3d"], "train": 2, "val": 1,
                                                      "shape": (24, 24, 16)})
    cfg = load_seg_data("organs3d.yaml", datasets_dir=tmp_path)  # generated on first use
    assert cfg.names[0] == "background" and cfg.nc == 5
    assert [len(cfg.splits[s]) for s in ("train", "val")] == [2, 1]
    again = builtin.generate("organs3d", tmp_path / "other")
    for a in cfg.splits["train"]:
        b = again.parent / "imagesTr" / a.image.name
        assert hashlib.sha256(a.image.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    cases, report = load_cases(cfg.splits["train"], cfg.nc, verbose=False)
    assert report.total == 0 and cases[0].spacing == pytest.approx((0.8, 0.8, 2.5))
    json_cfg = load_seg_data(cfg.source.parent / "dataset.json")  # the same set via its dataset.json
    val = [c.image.resolve() for c in cfg.splits["val"]]
    assert [c.image.resolve() for c in json_cfg.splits["val"]] == val
