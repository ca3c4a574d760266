"""Fixtures for the export tests: the tiny detector (tests/vision/det-t.yaml) saved as a
checkpoint with a training record, and the tiny dataset, shared by the module (exports take
seconds: torch.export traces the model)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "vision"))

from vision_helpers import TINY_MODEL, make_tiny_dataset

from mixprec.io import save_checkpoint
from mixprec.vision.models import DetectionModel

IMGSZ = 64


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """``pt``: a det-t checkpoint (2 classes, BN statistics perturbed so outputs vary) whose
    training record says bf16-mixed at imgsz 64 on the tiny data; ``data``: that data YAML."""
    root = tmp_path_factory.mktemp("export")
    data = make_tiny_dataset(root / "tiny")
    gen = torch.Generator().manual_seed(1)
    model = DetectionModel(TINY_MODEL, nc=2)
    model.names = {0: "circle", 1: "square"}
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
    pt = root / "weights" / "best.pt"
    save_checkpoint({"model": {"yaml": model.yaml, "names": model.names,
                               "state_dict": model.state_dict()},
                     "args": {"imgsz": IMGSZ, "data": str(data), "precision": "bf16-mixed",
                              "datasets_dir": str(root)}}, pt)
    return {"root": root, "data": data, "pt": pt, "model": model}
