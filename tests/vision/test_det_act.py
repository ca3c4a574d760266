"""The model YAML's ``act:`` key: det-n stays SiLU (same parameters, same outputs as ``act: silu``
spelled out), det-n-relu is det-n with ReLU in every Conv-BN-act block, a bad value is named."""

from __future__ import annotations

import pytest
import torch
from vision_helpers import TINY_MODEL

from mixprec.vision.models import DetectionModel, load_model_yaml
from mixprec.vision.models.blocks import Conv

ACT_TYPES = (torch.nn.SiLU, torch.nn.ReLU, torch.nn.LeakyReLU)


def _seeded(cfg, seed: int = 0) -> DetectionModel:
    torch.manual_seed(seed)
    return DetectionModel(cfg).eval()


def _acts(model: torch.nn.Module) -> list[type]:
    return [type(m) for m in model.modules() if isinstance(m, ACT_TYPES)]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_default_act_is_silu_and_unchanged():
    """No ``act`` key and ``act: silu`` build the same graph: same state_dict (keys and values)
    and bit-identical outputs for the same seed; every activation is SiLU."""
    default = _seeded("det-n.yaml")
    cfg = load_model_yaml("det-n.yaml")
    assert "act" not in cfg
    cfg["act"] = "silu"
    spelled = _seeded(cfg)
    a, b = default.state_dict(), spelled.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for p, q in zip(default(x), spelled(x), strict=True):
            assert torch.equal(p, q)
    acts = _acts(default)
    assert acts and set(acts) == {torch.nn.SiLU}


def test_det_n_relu_is_det_n_with_relu_everywhere():
    relu, silu = _seeded("det-n-relu.yaml"), _seeded("det-n.yaml")
    acts = _acts(relu)
    assert set(acts) == {torch.nn.ReLU} and len(acts) == len(_acts(silu))
    # every Conv-BN-act block (backbone, neck, head) got it; the head's output convs have none
    convs = [m for m in relu.modules() if isinstance(m, Conv)]
    assert convs and all(isinstance(m.act, torch.nn.ReLU) for m in convs)
    assert {k for k, v in relu.named_parameters()} == {k for k, v in silu.named_parameters()}
    pr, ps = dict(relu.named_parameters()), dict(silu.named_parameters())
    assert all(torch.equal(pr[k], ps[k]) for k in pr)  # same init: the activation has no weights
    assert list(relu.state_dict()) == list(silu.state_dict())  # a checkpoint layout unchanged
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        # and ReLU is what runs: the outputs differ from SiLU's with the same weights
        relu.load_state_dict(silu.state_dict())
        assert not torch.allclose(relu(x)[0], silu(x)[0])


def test_leaky_relu_is_available():
    cfg = load_model_yaml(TINY_MODEL)
    cfg["act"] = "leaky_relu"
    assert set(_acts(DetectionModel(cfg))) == {torch.nn.LeakyReLU}


@pytest.mark.parametrize("act", ["gelu", "ReLU", None])
def test_unknown_act_is_named(act):
    cfg = load_model_yaml(TINY_MODEL)
    cfg["act"] = act
    with pytest.raises(ValueError, match=rf"act={act!r}.*leaky_relu', 'relu', 'silu'"):
        DetectionModel(cfg)
