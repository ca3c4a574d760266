"""The memory story of unet3d-s, measured with mixprec.bench's exact byte accounting."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mixprec.bench.runner import measure_memory
from mixprec.bench.step import build_state
from mixprec.vision.segment3d.loss import DiceCELoss
from mixprec.vision.segment3d.unet import UNet3D, load_unet_yaml

GIB = 2**30


def _memory(yaml: str, precision: str, patch: int, batch: int = 2) -> dict:
    cfg = load_unet_yaml(yaml, nc=5)
    state = build_state(lambda: UNet3D(cfg), precision, torch.device("cpu"))
    x, y = torch.randn(batch, 1, patch, patch, patch), torch.randint(0, 5, (batch, patch, patch, patch))
    loss = DiceCELoss(5)
    return measure_memory(state, (x, y), lambda o, t: loss(o, t)[0], torch.device("cpu"))


def test_activation_bytes_grow_with_the_voxel_count():
    """What makes extrapolating a probe patch to 128^3 valid: 8x the voxels, ~8x the bytes."""
    tiny = str(Path(__file__).with_name("unet3d-t.yaml"))
    small, large = _memory(tiny, "32", 16), _memory(tiny, "32", 32)
    assert large["activations"] / small["activations"] == pytest.approx(8.0, rel=0.03)
    assert large["params"] == small["params"] and large["optimizer_state"] == small["optimizer_state"]
    half = _memory(tiny, "bf16-mixed", 32)
    assert half["activations"] < 0.6 * large["activations"]


@pytest.mark.slow
def test_unet3d_s_needs_more_than_8_gib_in_fp32_at_128_but_fits_mixed():
    fixed = ("params", "buffers", "grads", "master", "optimizer_state", "casts")
    totals = {}
    for prec in ("32", "bf16-mixed"):
        m = _memory("unet3d-s.yaml", prec, 32)
        totals[prec] = sum(m[k] for k in fixed) + (m["activations"] + m["batch"]) * 64  # 32^3 -> 128^3
    assert totals["32"] > 8 * GIB > totals["bf16-mixed"], {k: v / GIB for k, v in totals.items()}
