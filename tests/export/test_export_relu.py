"""INT8 export of a ReLU detector (``act: relu``): no Sigmoid/Mul left in the quantized graph or
in onnxruntime's optimised one (ReLU folds into QLinearConv), where the SiLU detector keeps them;
outputs against the FP32 ONNX model in the same run."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from vision_helpers import TINY_MODEL

from mixprec import Model
from mixprec.export import exporter as exporter_mod
from mixprec.export import max_relative_error, read_metadata
from mixprec.export.exporter import INT8_MAX_DROP
from mixprec.io import save_checkpoint
from mixprec.vision.models import DetectionModel, load_model_yaml

IMGSZ = 64
SILU_OPS = {"Sigmoid", "Mul", "QLinearSigmoid", "QLinearMul"}
# INT8 vs FP32 ONNX raw head maps, max |difference| relative to the largest |value| per output:
# 8-bit activations through ~30 layers of the tiny detector; measured 0.002 for ReLU here (10x margin).
INT8_RAW_TOLERANCE = 0.02


def _checkpoint(root: Path, act: str, data: Path) -> Path:
    """The tiny detector with ``act``, BN statistics perturbed (seeded) so outputs vary."""
    cfg = load_model_yaml(TINY_MODEL)
    cfg["act"] = act
    torch.manual_seed(0)
    model = DetectionModel(cfg, nc=2)
    model.names = {0: "circle", 1: "square"}
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
    pt = root / act / "best.pt"
    save_checkpoint({"model": {"yaml": model.yaml, "names": model.names, "state_dict": model.state_dict()},
                     "args": {"imgsz": IMGSZ, "data": str(data), "precision": "fp32",
                              "datasets_dir": str(root)}}, pt)
    return pt


def _optimised_ops(path: Path, out: Path) -> collections.Counter:
    """Op types of onnxruntime's optimised graph (CPU provider, ORT_ENABLE_EXTENDED: QDQ fusion
    without the hardware-specific layout transforms)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(out)
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(str(out)).graph.node)


def _run(path: Path, x: np.ndarray) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).run(None, {"images": x})


@pytest.mark.parametrize("act", ["relu", "silu"])
def test_int8_relu_has_no_sigmoid_and_matches_fp32(tiny, act, monkeypatch):
    root = tiny["root"] / "act"
    pt = _checkpoint(root, act, tiny["data"])
    common = dict(data=str(tiny["data"]), datasets_dir=str(tiny["root"]))
    fp32 = Model(pt).export(file=str(root / f"{act}.onnx"))
    # the INT8 export quantizes the same FP32 trace (saves a second torch.export)
    monkeypatch.setattr(exporter_mod, "_torch_to_onnx", lambda *a, **k: onnx.load(str(fp32)))
    int8 = Model(pt).export(int8=True, fraction=0.5, file=str(root / f"{act}_int8.onnx"), **common)
    graph_ops = collections.Counter(n.op_type for n in onnx.load(str(int8)).graph.node)
    fused = _optimised_ops(int8, root / f"{act}_int8_opt.onnx")
    if act == "silu":  # the reference: SiLU stays as (QLinear)Sigmoid + Mul, so the check can fail
        assert graph_ops["Sigmoid"] > 0 and SILU_OPS & set(fused)
        return
    assert not SILU_OPS & set(graph_ops), graph_ops
    assert not SILU_OPS & set(fused), fused
    assert fused["QLinearConv"] > 10 and "Relu" not in fused  # ReLU folded into the int8 convs
    # the export's own INT8 check (mAP50-95 drop vs the FP32 ONNX) passed and was recorded ...
    check = read_metadata(int8)["check"]
    assert check["drop"] <= INT8_MAX_DROP
    # ... and the raw head maps agree with the FP32 ONNX model's on the val images
    from PIL import Image

    images = sorted((tiny["data"].parent / "images").glob("*.png"))
    errs = []
    for p in images:  # the export is static, batch 1
        x = (np.asarray(Image.open(p).convert("RGB")).transpose(2, 0, 1)[None] / 255).astype(np.float32)
        errs.append(max_relative_error(_run(int8, x), _run(fp32, x)))
    assert 0 < max(errs) <= INT8_RAW_TOLERANCE, errs
