"""UNet3D: shapes, deep supervision, InstanceNorm kept FP32 by the engine."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mixprec.precision import NORM_LAYERS, Precision
from mixprec.vision.segment3d.unet import UNet3D, load_unet_yaml


@pytest.mark.parametrize("name", ["unet3d-n.yaml", "unet3d-fullres.yaml", "unet3d-s.yaml"])
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


def test_pointwise_head_equals_a_1x1x1_conv_in_fp32_and_under_bf16_autocast():
    from mixprec.vision.segment3d.unet import PointwiseConv3d

    torch.manual_seed(0)
    head = PointwiseConv3d(6, 5)
    conv = nn.Conv3d(6, 5, 1)
    conv.load_state_dict(head.state_dict())  # the same parameters and keys as a Conv3d
    x = torch.randn(2, 6, 5, 4, 3, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    y, y_ref = head(x), conv(x2)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(head.weight.grad, conv.weight.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(head.bias.grad, conv.bias.grad, rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts it as it casts the conv
        yb, yb_ref = head(x), conv(x2)
    assert yb.dtype == yb_ref.dtype == torch.bfloat16
    torch.testing.assert_close(yb.float(), y_ref.detach(), rtol=2e-2, atol=2e-2)  # BF16: 8 bits of mantissa


def test_light_full_resolution_keys_stem_only_first_stage_and_added_skips():
    cfg = load_unet_yaml({"channels": [8, 16, 32], "blocks": [0, 1, 1], "decoder_blocks": [0, 1],
                          "skip_merge": "add", "act": "prelu", "negative_slope": 0.25,
                          "nc": 3})
    assert cfg.decoder_levels == (0, 1) and cfg.divisor == 4
    assert load_unet_yaml(cfg.as_dict()) == cfg  # the checkpoint record rebuilds the same net
    model = UNet3D(cfg)
    assert len(model.encoder[0]) == 0  # stage 0 is the stem alone
    assert not any(isinstance(m, nn.Conv3d) and not isinstance(m, nn.ConvTranspose3d)
                   for m in model.decoder[-1].modules())  # finest level: skip added, no conv
    assert model.decoder[0][0].in_channels == 16  # added, not concatenated (which would be 32)
    assert {m.weight.item() for m in model.modules() if isinstance(m, nn.PReLU)} == {0.25}
    assert not any(isinstance(m, nn.LeakyReLU) for m in model.modules())
    outs = model(torch.randn(2, 1, 8, 12, 8))
    assert [tuple(o.shape) for o in outs] == [(2, 3, 8, 12, 8), (2, 3, 4, 6, 4)]  # heads: stages - 1
    default = UNet3D(load_unet_yaml("unet3d-fullres.yaml"))
    assert {m.negative_slope for m in default.modules() if isinstance(m, nn.LeakyReLU)} == {0.01}
    assert all(b.skip is not None for stage in default.encoder for b in stage)
    plain = UNet3D(load_unet_yaml({**cfg.as_dict(), "encoder": "plain"}))
    assert all(b.skip is None for stage in plain.encoder for b in stage)
    assert plain(torch.randn(1, 1, 8, 8, 8))[0].shape == (1, 3, 8, 8, 8)
    steep = UNet3D(load_unet_yaml({**cfg.as_dict(), "act": "leaky_relu"}))
    assert {m.negative_slope for m in steep.modules() if isinstance(m, nn.LeakyReLU)} == {0.25}


@pytest.mark.parametrize("override, message", [
    ({"decoder_blocks": [1]}, "one per decoder level"),
    ({"decoder_blocks": [0, 1]}, "needs skip_merge: add"),
    ({"blocks": [1, 0, 1]}, "the first may be 0"),
    ({"act": "gelu"}, "act='gelu'"),
    ({"skip_merge": "sum"}, "skip_merge='sum'"),
    ({"encoder": "dense"}, "encoder='dense'"),
])
def test_bad_unet_keys_are_named(override, message):
    with pytest.raises(ValueError, match=message):
        load_unet_yaml({"channels": [8, 16, 32], "blocks": [1, 1, 1], **override})
