"""Detection runs channels-last (NHWC) end to end: the training inputs, every 4-D activation,
and the convolution weight gradients -- what oneDNN's BF16 convolutions want."""

from __future__ import annotations

import torch
from vision_helpers import TINY_MODEL

from mixprec.vision.detect.task import DetectTask
from mixprec.vision.models import DetectionModel, load_model_yaml

CL = torch.channels_last


def test_training_inputs_are_channels_last_with_the_same_values():
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)  # the collated NCHW batch
    targets = torch.zeros(0, 6)
    x, t = DetectTask().inputs({"images": images, "targets": targets}, torch.device("cpu"))
    assert x.is_contiguous(memory_format=CL) and x.dtype == torch.float32
    assert torch.equal(x, images.float() / 255) and t is targets
    synthetic, _ = DetectTask().synthetic_batch({"imgsz": 32}, 2, 3)  # autobatch, compile warm-up
    assert synthetic.is_contiguous(memory_format=CL)


def test_every_activation_and_conv_gradient_stays_channels_last_under_bf16_autocast():
    model = DetectionModel(load_model_yaml(TINY_MODEL), nc=2)
    nchw: list[str] = []

    def check(module, _inputs, output):
        for o in output if isinstance(output, (list, tuple)) else [output]:
            if torch.is_tensor(o) and o.dim() == 4 and not o.is_contiguous(memory_format=CL):
                nchw.append(type(module).__name__)

    for m in model.modules():
        m.register_forward_hook(check)
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    x, _ = DetectTask().inputs({"images": images, "targets": None}, torch.device("cpu"))
    with torch.autocast("cpu", torch.bfloat16):
        maps = model(x)
    sum(m.float().square().mean() for m in maps).backward()
    assert nchw == []
    grads = {n: p.grad for n, p in model.named_parameters() if p.dim() == 4}
    assert grads and all(g.is_contiguous(memory_format=CL) for g in grads.values())


def test_a_training_forward_copies_no_activation_for_silu():
    # an in-place SiLU under autograd clones its input (its backward needs it): one extra copy
    # of every activation per step; the detector's SiLU is out of place
    from torch.profiler import profile

    model = DetectionModel(load_model_yaml(TINY_MODEL), nc=2)
    x, _ = DetectTask().synthetic_batch({"imgsz": 64}, 2, 2)
    with profile() as prof:
        model(x)
    silu = [e for e in prof.events() if e.name.startswith("aten::silu")]
    assert silu, "no SiLU ran"
    copies = [e.name for e in prof.events() if e.cpu_parent is not None
              and e.cpu_parent.name.startswith("aten::silu") and e.name in ("aten::clone", "aten::copy_")]
    assert copies == []
