"""The YAML-defined detectors: size, strides, output shapes, info(), precision selection."""

from __future__ import annotations

import pytest
import torch
from vision_helpers import TINY_MODEL

from mixprec.hardware import auto_policy
from mixprec.policy import Policy
from mixprec.vision import Model
from mixprec.vision.models import DetectionModel, load_model_yaml
from mixprec.vision.precision_choice import choose_precision


def test_det_n_size_strides_and_outputs():
    model = DetectionModel("det-n.yaml")  # 80 classes, as YOLO counts parameters
    n = sum(p.numel() for p in model.parameters())
    assert 2.5e6 <= n <= 3.5e6, n
    assert model.stride.tolist() == [8.0, 16.0, 32.0]
    small = DetectionModel(TINY_MODEL, nc=3)
    maps = small(torch.zeros(2, 3, 64, 96))
    assert [tuple(m.shape) for m in maps] == [(2, 64 + 3, 8, 12), (2, 67, 4, 6), (2, 67, 2, 3)]


def test_box_branch_widths_per_level():
    """det-n narrows the box branch where maps are largest; det-s keeps YOLOv8's single width;
    a wrong width list names the problem."""
    widths = [b[0].conv.out_channels for b in DetectionModel("det-n.yaml").head.box]
    assert widths == [16, 32, 64]
    assert [b[0].conv.out_channels for b in DetectionModel("det-s.yaml").head.box] == [64] * 3
    cfg = load_model_yaml("det-n.yaml")
    cfg["head"][-1][3] = ["nc", 16, [16, 32]]
    with pytest.raises(ValueError, match="one positive width per level"):
        DetectionModel(cfg)


def test_det_s_is_larger_than_det_n():
    n = sum(p.numel() for p in DetectionModel("det-n.yaml").parameters())
    s = sum(p.numel() for p in DetectionModel("det-s.yaml").parameters())
    assert 3 * n < s < 5 * n


def test_info_prints_layers_parameters_and_gflops(capsys):
    info = Model("det-n.yaml").info(imgsz=640)
    out = capsys.readouterr().out
    assert "det-n summary:" in out and "GFLOPs at imgsz=640" in out and "Detect" in out
    assert 4.0 < info["gflops"] < 10.0  # a nano detector at 640 px (YOLOv8n: 8.7)


def test_unknown_model_yaml_lists_the_builtins():
    with pytest.raises(FileNotFoundError, match="det-n.yaml"):
        load_model_yaml("det-q.yaml")


def test_amp_key_maps_to_precision_policies():
    cpu = torch.device("cpu")
    policy, reason = choose_precision(False, cpu)  # a Policy: the caller builds one Precision
    assert isinstance(policy, Policy) and str(policy) == "32" and "amp=False" in reason
    policy, reason = choose_precision(True, cpu)
    auto, why = auto_policy(cpu)
    assert policy == auto and reason.startswith("amp=True -> auto:") and why in reason
    policy, reason = choose_precision("bf16-master", cpu)
    assert str(policy) == "bf16-master" and "preset requested" in reason
    with pytest.raises(ValueError):
        choose_precision("17-mixed", cpu)
