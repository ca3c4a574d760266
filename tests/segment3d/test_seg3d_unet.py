"""UNet3D: shapes, deep supervision, InstanceNorm kept FP32 by the engine."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mixprec.precision import NORM_LAYERS, Precision
from mixprec.vision.segment3d.unet import UNet3D, load_unet_yaml


@pytest.mark.parametrize("name", ["unet3d-n.yaml", "unet3d-s.yaml"])
def test_yaml_family_builds_with_data_overrides(name):
    cfg = load_unet_yaml(name, nc=4, in_channels=2)
    model = UNet3D(cfg)
    assert model.heads[0].out_channels == 4 and model.stem[0].in_channels == 2
    assert any(isinstance(m, nn.InstanceNorm3d) for m in model.modules())


def test_deep_supervision_outputs_and_eval_output():
    model = UNet3D(load_unet_yaml("unet3d-n.yaml", nc=3))
    x = torch.randn(1, 1, 32, 32, 32)
    outs = model(x)
    assert [tuple(o.shape) for o in outs] == [(1, 3, 32, 32, 32), (1, 3, 16, 16, 16), (1, 3, 8, 8, 8)]
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (1, 3, 32, 32, 32)
    plain = UNet3D(load_unet_yaml("unet3d-n.yaml", nc=3, deep_supervision=False)).train()
    assert plain(x).shape == (1, 3, 32, 32, 32)
    with pytest.raises(ValueError, match="multiple of 16 and at least 32"):
        model(torch.randn(1, 1, 16, 16, 16))


def test_instance_norm_is_a_norm_layer_kept_fp32_under_master():
    assert issubclass(nn.InstanceNorm3d, NORM_LAYERS)
    model = UNet3D(load_unet_yaml({"channels": [4, 8], "blocks": [1, 1], "nc": 2}))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    prec = Precision("bf16-master", device=torch.device("cpu"))
    model, opt = prec.setup(model, opt)
    seen = {"in": [], "conv": []}
    for m in model.modules():
        if isinstance(m, nn.InstanceNorm3d):
            assert m.weight.dtype == torch.float32 and m.bias.dtype == torch.float32
            m.register_forward_hook(lambda _m, i, o: seen["in"].append(i[0].dtype))
        elif isinstance(m, nn.Conv3d):
            assert m.weight.dtype == torch.bfloat16
    with prec.autocast():
        out = model(torch.randn(1, 1, 8, 8, 8))
    assert seen["in"] and set(seen["in"]) == {torch.float32}  # fed FP32 inputs
    assert out.dtype == torch.float32  # output policy


def test_strided_stem_variant_returns_full_resolution_and_supervision_levels():
    cfg = load_unet_yaml({"channels": [8, 16, 32], "blocks": [1, 1, 1], "nc": 3, "stem_stride": 2})
    assert cfg.divisor == 8
    model = UNet3D(cfg)
    x = torch.randn(2, 1, 16, 24, 16)
    outs = model(x)
    assert [tuple(o.shape) for o in outs] == [(2, 3, 16, 24, 16), (2, 3, 8, 12, 8), (2, 3, 4, 6, 4)]
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 3, 16, 24, 16)
    with pytest.raises(ValueError, match="stem_stride=3"):
        load_unet_yaml({"channels": [8, 16], "blocks": [1, 1], "stem_stride": 3})
