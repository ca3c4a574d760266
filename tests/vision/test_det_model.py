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
    """det-n lists its box widths per level (64 each, as YOLOv8n); det-s keeps YOLOv8's rule;
    a wrong width list names the problem."""
    widths = [b[0].conv.out_channels for b in DetectionModel("det-n.yaml").head.box]
    assert widths == [64, 64, 64]
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


# Ultralytics 8.4.190, YOLO("yolov8n.yaml").model.model: parameters per layer at 80 classes
# (its model summary: 3,157,200 parameters, 3,157,184 gradients). The Detect layer (22) holds
# 16 more there: the frozen weights of its DFL projection conv, a fixed arange here.
YOLOV8N_LAYER_PARAMS = [464, 4672, 7360, 18560, 49664, 73984, 197632, 295424, 460288, 164608, 0, 0,
                        148224, 0, 0, 37248, 36992, 0, 123648, 147712, 0, 493056, 897664]


def test_det_v8n_is_yolov8n_layer_for_layer():
    model = DetectionModel("det-v8n.yaml")
    per_layer = [sum(p.numel() for p in layer.parameters()) for layer in model.layers]
    reg_max = model.head.reg_max
    assert per_layer == [*YOLOV8N_LAYER_PARAMS[:-1], YOLOV8N_LAYER_PARAMS[-1] - reg_max]
    assert sum(per_layer) + reg_max == 3_157_200
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert {(m.momentum, m.eps) for m in bns} == {(0.03, 1e-3)}  # YOLOv8's initialize_weights
    assert [b[0].conv.out_channels for b in model.head.box] == [64] * 3
    assert [c[0].conv.kernel_size for c in model.head.cls] == [(3, 3)] * 3  # full 3x3, not depthwise
    with pytest.raises(ValueError, match="cls_head"):
        cfg = load_model_yaml("det-v8n.yaml")
        cfg["head"][-1][3] = ["nc", 16, None, "v9"]
        DetectionModel(cfg)
