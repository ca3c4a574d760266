"""``DetectionModel``: a detector built from a YAML description (``det-n.yaml``, ``det-s.yaml``).

The YAML holds ``nc``, ``depth``, ``width``, ``max_channels``, optional ``bn_momentum`` (PyTorch's
convention, default 0.1; YOLOv8 uses 0.03), optional ``act`` (the activation of every Conv-BN-act
block in backbone, neck and head: ``silu``, the default, ``relu`` or ``leaky_relu``) and two lists of rows
``[from, repeats, module, args]`` (``backbone`` then ``head``). Channels in ``args`` are scaled
by ``width`` (rounded to a multiple of 8, capped at ``max_channels``) and repeats by ``depth``.
The built-in files ship in this folder; any other path is read from disk.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mixprec.io import read_yaml
from mixprec.vision.models.blocks import SPPF, C2f, Concat, Conv, Detect, Upsample

__all__ = ["ACTIVATIONS", "DetectionModel", "load_model_yaml", "model_info"]

_MODULES = {"Conv": Conv, "C2f": C2f, "SPPF": SPPF, "Concat": Concat, "Upsample": Upsample,
            "Detect": Detect}
_BUILTIN = Path(__file__).parent
# ``act:`` -> the module each Conv-BN-act block gets. The blocks build SiLU; another choice replaces
# it after the build. ReLU folds into onnxruntime's QLinearConv in an INT8 export, SiLU does not
# (it runs as QLinearSigmoid + QLinearMul); see docs/export.md.
ACTIVATIONS = {"silu": nn.SiLU, "relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.1)}


def load_model_yaml(name: str | Path) -> dict[str, Any]:
    """Read a model YAML: a path on disk, or the name of a built-in file (``det-n.yaml``)."""
    path = Path(name)
    if not path.is_file():
        builtin = _BUILTIN / path.name
        if not builtin.is_file():
            choices = ", ".join(sorted(p.name for p in _BUILTIN.glob("*.yaml")))
            raise FileNotFoundError(f"model YAML not found: {name}; built-in models: {choices}")
        path = builtin
    cfg = read_yaml(path, "model YAML")
    if not isinstance(cfg, dict):
        raise ValueError(f"model YAML {path}: expected a mapping with backbone, head, depth, width")
    for key in ("backbone", "head", "depth", "width"):
        if key not in cfg:
            raise ValueError(f"model YAML {path} lacks the key '{key}'")
    cfg.setdefault("yaml_file", path.name)
    return cfg


def _set_activation(layers: nn.Module, act: str) -> None:
    """Give every Conv-BN-act block (``Conv``, ``DWConv``; not those built with ``act=False``, not
    the head's plain output convs) the activation ``act``. ``silu`` leaves the blocks as built."""
    if act not in ACTIVATIONS:
        raise ValueError(f"model YAML act={act!r} is not supported; use one of {sorted(ACTIVATIONS)}")
    if act == "silu":
        return
    for m in layers.modules():
        if isinstance(m, Conv) and not isinstance(m.act, nn.Identity):
            m.act = ACTIVATIONS[act]()


def _make_divisible(x: float, divisor: int = 8) -> int:
    return int(math.ceil(x / divisor) * divisor)


class DetectionModel(nn.Module):
    """Backbone + PAN neck + ``Detect`` head, built from ``cfg`` (a dict from ``load_model_yaml``).

    ``forward(images)`` takes float images (B, 3, H, W) in [0, 1], H and W multiples of 32, and
    returns the raw head maps (see ``Detect``). ``self.stride`` is a FP32 tensor (8, 16, 32).
    """

    def __init__(self, cfg: dict[str, Any] | str | Path = "det-n.yaml", nc: int | None = None):
        super().__init__()
        self.yaml = copy.deepcopy(cfg if isinstance(cfg, dict) else load_model_yaml(cfg))
        if nc is not None:
            self.yaml["nc"] = int(nc)
        self.nc = int(self.yaml["nc"])
        self.layers, self.save, self.sources = self._build(self.yaml)
        _set_activation(self.layers, self.yaml.get("act", "silu"))
        head = self.layers[-1]
        with torch.no_grad():
            s = 64  # a small dry run finds the strides
            outs = self.forward(torch.zeros(1, 3, s, s))
        head.stride = torch.tensor([s / o.shape[-1] for o in outs])
        self.register_buffer("stride", head.stride.clone(), persistent=False)
        head.init_biases()
        bn_momentum = float(self.yaml.get("bn_momentum", 0.1))
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = bn_momentum
        # Conv weights channels-last (NHWC): every conv then runs and returns NHWC whatever the
        # input layout. Layout only (same parameters and values; float sums may round
        # differently): det-n forward+backward at 160 px, batch 16, one CPU thread, ~1.2x faster
        # with oneDNN (e.g. 811 -> 677 ms). .to(device) and load_state_dict keep the layout.
        self.to(memory_format=torch.channels_last)
        self.names: dict[int, str] = {i: str(i) for i in range(self.nc)}

    @property
    def head(self) -> Detect:
        return self.layers[-1]

    def _build(self, cfg: dict[str, Any]) -> tuple[nn.ModuleList, set[int], list[Any]]:
        depth, width = float(cfg["depth"]), float(cfg["width"])
        max_ch = int(cfg.get("max_channels", 1024))
        channels = [3]
        layers, sources, save = [], [], set()
        for i, (src, n, name, args) in enumerate(cfg["backbone"] + cfg["head"]):
            if name not in _MODULES:
                raise ValueError(f"layer {i}: unknown module '{name}'; known: {sorted(_MODULES)}")
            args = [self.nc if a == "nc" else a for a in args]
            n = max(round(n * depth), 1) if n > 1 else n
            srcs = src if isinstance(src, list) else [src]
            save.update(s for s in srcs if s >= 0)
            c_in = [channels[i + s + 1] if s < 0 else channels[s + 1] for s in srcs]
            if name in ("Conv", "C2f", "SPPF"):
                c2 = _make_divisible(min(args[0], max_ch) * width)
                extra = [n, *args[1:]] if name == "C2f" else args[1:]
                layer = _MODULES[name](c_in[0], c2, *extra)
            elif name == "Concat":
                layer, c2 = Concat(), sum(c_in)
            elif name == "Upsample":
                layer, c2 = Upsample(*args), c_in[0]
            else:  # Detect
                layer, c2 = Detect(args[0], tuple(c_in), *args[1:]), 0
            layers.append(layer)
            sources.append(src)
            channels.append(c2)
        return nn.ModuleList(layers), save, sources

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs: list[torch.Tensor | None] = []
        for i, (layer, src) in enumerate(zip(self.layers, self.sources, strict=True)):
            if src != -1:
                x = [x if s == -1 else outputs[s] for s in src] if isinstance(src, list) \
                    else outputs[src]
            x = layer(x)
            outputs.append(x if i in self.save else None)
        return x


def model_info(model: DetectionModel, imgsz: int = 640, verbose: bool = True) -> dict[str, Any]:
    """Layers, parameters, gradients and GFLOPs (forward, one image at ``imgsz``; FLOPs counted
    by ``torch.utils.flop_counter``, 2 per multiply-add). Prints a summary when ``verbose``."""
    from torch.utils.flop_counter import FlopCounterMode

    n_params = sum(p.numel() for p in model.parameters())
    n_grads = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_layers = len(list(model.modules()))
    was_training = model.training
    model.eval()
    p = next(model.parameters())
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, imgsz, imgsz, device=p.device, dtype=p.dtype))
    model.train(was_training)
    gflops = counter.get_total_flops() / 1e9
    info = {"layers": n_layers, "parameters": n_params, "gradients": n_grads, "gflops": gflops,
            "imgsz": imgsz}
    if verbose:
        name = Path(model.yaml.get("yaml_file", "model")).stem
        rows = [f"{'':>3}{'from':>14}{'n':>3}{'params':>10}  module"]
        for i, (layer, src) in enumerate(zip(model.layers, model.sources, strict=True)):
            npar = sum(q.numel() for q in layer.parameters())
            n = len(layer.m) if isinstance(layer, C2f) else 1
            rows.append(f"{i:>3}{src!s:>14}{n:>3}{npar:>10}  {type(layer).__name__}")
        print("\n".join(rows))
        print(f"{name} summary: {n_layers} layers, {n_params:,} parameters, {n_grads:,} gradients, "
              f"{gflops:.1f} GFLOPs at imgsz={imgsz}")
    return info
