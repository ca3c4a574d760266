"""Label parsing, dataset scanning (skip-and-report), the label cache and data YAML errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from vision_helpers import make_tiny_dataset

from mixprec.vision.data import load_data_config, parse_label_text, scan
from mixprec.vision.data.config import image_files, label_path


def test_parse_valid_rows_and_empty_file():
    arr = parse_label_text("0 0.5 0.5 0.2 0.3\n\n1 0.1 0.2 0.05 0.05\n", nc=2)
    np.testing.assert_allclose(arr, [[0, 0.5, 0.5, 0.2, 0.3], [1, 0.1, 0.2, 0.05, 0.05]], rtol=1e-6)
    assert parse_label_text("", nc=2).shape == (0, 5)  # background image


@pytest.mark.parametrize("text, reason", [
    ("0 0.5 0.5 0.2\n", "expected 5 values"),
    ("0 0.5 0.5 0.2 0.2 0.1\n", "expected 5 values"),
    ("0 0.5 abc 0.2 0.2\n", "not a number"),
    ("3 0.5 0.5 0.2 0.2\n", "out of range"),
    ("-1 0.5 0.5 0.2 0.2\n", "out of range"),
    ("0.5 0.5 0.5 0.2 0.2\n", "out of range"),
    ("0 1.2 0.5 0.2 0.2\n", "outside [0, 1]"),
    ("0 0.5 -0.1 0.2 0.2\n", "outside [0, 1]"),
    ("0 0.5 0.5 0 0.2\n", "must be > 0"),
    ("0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n", "duplicate rows"),
])
def test_parse_rejects_bad_rows_with_reason(text, reason):
    with pytest.raises(ValueError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        parse_label_text(text, nc=3)


def test_label_path_follows_yolo_convention():
    assert label_path(Path("/d/images/train/a.jpg")) == Path("/d/labels/train/a.txt")
    assert label_path(Path("/images/x/images/b.png")) == Path("/images/x/labels/b.txt")


def test_scan_skips_each_bad_file_once_and_goes_on(tmp_path, capsys):
    yaml_path = make_tiny_dataset(tmp_path / "d", n=6)
    root = yaml_path.parent
    (root / "labels" / "0.txt").write_text("0 0.5 0.5 0.2\n")  # malformed
    (root / "labels" / "1.txt").write_text("7 0.5 0.5 0.2 0.2\n")  # class out of range
    (root / "labels" / "2.txt").write_text("")  # background
    (root / "images" / "3.png").write_bytes(b"not an image")  # unreadable
    images = [*image_files([root / "images"]), root / "images" / "missing.png"]
    index = scan(images, nc=2, cache_path=tmp_path / "labels.cache")
    out = capsys.readouterr().out
    assert len(index.images) == 3 and index.backgrounds == 1
    assert set(index.skipped) == {str(root / "images" / f) for f in
                                  ("0.png", "1.png", "3.png", "missing.png")}
    for name, why in [("0.png", "expected 5 values"), ("1.png", "out of range"),
                      ("3.png", "unreadable image"), ("missing.png", "image file missing")]:
        lines = [ln for ln in out.splitlines() if f"/{name}:" in ln]
        assert len(lines) == 1 and why in lines[0], (name, out)
    assert "3 used" in out and "4 skipped" in out


def test_cache_is_used_then_refreshed_when_a_label_changes(tmp_path, capsys):
    yaml_path = make_tiny_dataset(tmp_path / "d", n=4)
    root = yaml_path.parent
    images = image_files([root / "images"])
    cache = tmp_path / "labels.cache"
    first = scan(images, 2, cache)
    second = scan(images, 2, cache)
    out = capsys.readouterr().out
    assert "scanned 4 images" in out and "cached 4 images" in out
    assert all(np.array_equal(a, b) for a, b in zip(first.labels, second.labels, strict=True))
    (root / "labels" / "0.txt").write_text("1 0.5 0.5 0.5 0.25\n")
    third = scan(images, 2, cache)
    assert "scanned 4 images" in capsys.readouterr().out
    np.testing.assert_allclose(third.labels[0], [[1, 0.5, 0.5, 0.5, 0.25]])


def test_data_yaml_errors_name_the_file_and_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="data YAML not found: .*nope.yaml"):
        load_data_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("path: .\ntrain: images\nnames: [a]\n")
    with pytest.raises(ValueError, match=r"bad.yaml: missing key 'val'"):
        load_data_config(bad)
    bad.write_text("path: .\ntrain: images\nval: images\n")
    with pytest.raises(ValueError, match=r"bad.yaml: missing key 'names'"):
        load_data_config(bad)
    bad.write_text("path: .\ntrain: images\nval: images\nnames: [a]\n")
    with pytest.raises(FileNotFoundError, match="'train' path not found"):
        load_data_config(bad)


def test_builtin_dataset_generated_deterministically(tmp_path):
    a = load_data_config("shapes8.yaml", datasets_dir=tmp_path / "a")
    b = load_data_config("shapes8.yaml", datasets_dir=tmp_path / "b")
    la = sorted((a.root / "labels" / "train").glob("*.txt"))
    lb = sorted((b.root / "labels" / "train").glob("*.txt"))
    assert len(la) == 8 and [p.read_text() for p in la] == [p.read_text() for p in lb]
    assert a.nc == 6 and a.splits["val"] == a.splits["train"]
    # a second call reuses the generated files
    assert load_data_config("shapes8.yaml", datasets_dir=tmp_path / "a").root == a.root


def test_val_letterbox_maps_back_to_original_pixels(tmp_path):
    """Labels of a letterboxed, non-square image map back onto the original labels exactly."""
    import torch
    from PIL import Image

    from mixprec.vision.boxes import xywh2xyxy
    from mixprec.vision.data import DetectionDataset
    from mixprec.vision.postprocess import scale_boxes

    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    Image.new("RGB", (300, 150), (100, 100, 100)).save(root / "images" / "a.png")
    (root / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.4\n1 0.1 0.8 0.1 0.2\n")
    index = scan([root / "images" / "a.png"], nc=2)
    sample = DetectionDataset(index, imgsz=128)[0]
    assert tuple(sample["image"].shape) == (3, 128, 128) and sample["shape"] == (300, 150)
    boxes = xywh2xyxy(sample["targets"][:, 2:]) * 128
    back = scale_boxes(boxes, sample["ratio_pad"], sample["shape"])
    expected = xywh2xyxy(torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.1, 0.8, 0.1, 0.2]])) * \
        torch.tensor([300.0, 150, 300, 150])
    torch.testing.assert_close(back, expected, atol=0.01, rtol=0)
