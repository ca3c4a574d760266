"""A YAML-defined 3D U-Net family with residual encoder stages (nnU-Net's ResEnc design).

Encoder stage i: ``blocks[i]`` residual blocks (conv3-IN-LeakyReLU-conv3-IN + shortcut), the first
with stride 2 for i > 0. Decoder: a transposed conv (kernel 2, stride 2) up, concat with the
skip, ``decoder_blocks`` conv3-IN-LeakyReLU blocks, a 1x1 head. InstanceNorm3d (affine) is a
normalisation layer for ``mixprec.precision`` (``NORM_LAYERS``): under ``*-master`` its weights
stay FP32 and it is fed FP32 inputs. With deep supervision, training-mode forward returns a
list of logits ``[full, 1/2, 1/4, ...]`` (head count = ``min(3, stages - 1)``); eval mode returns
the full-resolution logits ``(B, nc, x, y, z)`` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

__all__ = ["UNet3D", "UNetConfig", "load_unet_yaml"]


@dataclass(frozen=True)
class UNetConfig:
    channels: tuple[int, ...]
    blocks: tuple[int, ...]
    in_channels: int = 1
    nc: int = 2
    decoder_blocks: int = 1
    deep_supervision: bool = True
    name: str = "unet3d"
    stem_stride: int = 1  # 2: the stem downsamples; a light full-resolution block restores the size

    def __post_init__(self) -> None:
        if len(self.channels) != len(self.blocks) or len(self.channels) < 2:
            raise ValueError(f"channels {self.channels} and blocks {self.blocks} need the same length >= 2")
        if min(self.blocks) < 1 or min(self.channels) < 1:
            raise ValueError(f"channels and blocks must be positive, got {self.channels}, {self.blocks}")
        if self.stem_stride not in (1, 2):
            raise ValueError(f"stem_stride={self.stem_stride}: use 1 or 2")
        if self.nc < 2 or self.in_channels < 1:
            raise ValueError(f"nc={self.nc} (>= 2, incl. background), in_channels={self.in_channels} (>= 1)")

    @property
    def divisor(self) -> int:
        """Patch sides must be multiples of this (2 ** number of downsamplings)."""
        return self.stem_stride * 2 ** (len(self.channels) - 1)

    def as_dict(self) -> dict[str, Any]:
        return {"task": "segment3d", "name": self.name, "channels": list(self.channels),
                "blocks": list(self.blocks), "in_channels": self.in_channels, "nc": self.nc,
                "decoder_blocks": self.decoder_blocks, "deep_supervision": self.deep_supervision,
                "stem_stride": self.stem_stride}


def load_unet_yaml(source: str | Path | dict[str, Any], **override: Any) -> UNetConfig:
    """A ``UNetConfig`` from a YAML path, a built-in name (``unet3d-n.yaml``) or a dict; keys in
    ``override`` (``nc``, ``in_channels``, ``deep_supervision``) replace the file's."""
    if isinstance(source, dict):
        cfg, name = dict(source), str(source.get("name", "unet3d"))
    else:
        path = Path(source)
        if not path.is_file():
            builtin = resources.files("mixprec.vision.segment3d") / "models" / path.name
            if not builtin.is_file():
                raise FileNotFoundError(f"model YAML not found: {source} (built in: unet3d-n.yaml, "
                                        "unet3d-s.yaml)")
            text = builtin.read_text()
        else:
            text = path.read_text()
        cfg, name = yaml.safe_load(text), path.stem
    if cfg.get("task", "segment3d") != "segment3d":
        raise ValueError(f"{source}: task is {cfg.get('task')!r}, expected 'segment3d'")
    cfg.update({k: v for k, v in override.items() if v is not None})
    return UNetConfig(tuple(cfg["channels"]), tuple(cfg["blocks"]), int(cfg.get("in_channels", 1)),
                      int(cfg.get("nc", 2)), int(cfg.get("decoder_blocks", 1)),
                      bool(cfg.get("deep_supervision", True)), str(cfg.get("name", name)),
                      int(cfg.get("stem_stride", 1)))


def _conv_norm_act(c1: int, c2: int, stride: int = 1, act: bool = True, k: int = 3) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv3d(c1, c2, k, stride, (k - 1) // 2, bias=False),
                               nn.InstanceNorm3d(c2, affine=True)]
    if act:
        layers.append(nn.LeakyReLU(0.01, inplace=True))
    return layers


class ResBlock(nn.Module):
    """conv3-IN-act-conv3-IN plus a shortcut (1x1 strided conv + IN when the shape changes), act."""

    def __init__(self, c1: int, c2: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(*_conv_norm_act(c1, c2, stride), *_conv_norm_act(c2, c2, act=False))
        self.skip = nn.Identity() if (c1 == c2 and stride == 1) else nn.Sequential(
            nn.Conv3d(c1, c2, 1, stride, bias=False), nn.InstanceNorm3d(c2, affine=True))
        self.act = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


class UNet3D(nn.Module):
    """Residual-encoder 3D U-Net. Input ``(B, in_channels, x, y, z)`` with every spatial side a
    multiple of ``cfg.divisor``; output logits (see the module docstring)."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        self.names: dict[int, str] = {i: f"class{i}" for i in range(cfg.nc)}
        ch = cfg.channels
        s = cfg.stem_stride
        # stem_stride 2: a 2x2x2 stride-2 patchify conv (no overlap, 8x fewer voxels after it)
        self.stem = nn.Sequential(*_conv_norm_act(cfg.in_channels, ch[0], s, k=3 if s == 1 else 2))
        self.encoder = nn.ModuleList()
        for i, (c, n) in enumerate(zip(ch, cfg.blocks, strict=True)):
            c_in = ch[0] if i == 0 else ch[i - 1]
            blocks = [ResBlock(c_in, c, 1 if i == 0 else 2)] + [ResBlock(c, c) for _ in range(n - 1)]
            self.encoder.append(nn.Sequential(*blocks))
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i in range(len(ch) - 1, 0, -1):
            self.up.append(nn.ConvTranspose3d(ch[i], ch[i - 1], 2, 2, bias=False))
            layers = _conv_norm_act(2 * ch[i - 1], ch[i - 1])
            for _ in range(cfg.decoder_blocks - 1):
                layers += _conv_norm_act(ch[i - 1], ch[i - 1])
            self.decoder.append(nn.Sequential(*layers))
        self.full = None
        if s == 2:  # back to full resolution: upsample, concat the input image, one light conv block
            f = max(ch[0] // 2, 4)
            self.full_up = nn.ConvTranspose3d(ch[0], f, 2, 2, bias=False)
            self.full = nn.Sequential(*_conv_norm_act(f + cfg.in_channels, f))
        n_heads = min(3, len(ch) - 1 + (s == 2)) if cfg.deep_supervision else 1
        # heads[k] sits on the features at 1/2**k of the input size (heads[0]: full resolution)
        feats = ([max(ch[0] // 2, 4)] if s == 2 else []) + list(ch)
        self.heads = nn.ModuleList(nn.Conv3d(feats[k], cfg.nc, 1) for k in range(n_heads))

    @property
    def nc(self) -> int:
        return self.cfg.nc

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        d = self.cfg.divisor
        if any(s % d or s < 2 * d for s in x.shape[2:]):
            raise ValueError(f"{self.cfg.name}: spatial size {tuple(x.shape[2:])} must be a multiple of "
                             f"{d} and at least {2 * d} (the bottleneck needs 2 voxels a side); use "
                             f"patch={2 * d} or more")
        skips = []
        h = self.stem(x)
        for stage in self.encoder:
            h = stage(h)
            skips.append(h)
        feats: dict[int, torch.Tensor] = {}  # 1/2**k resolution -> decoder features
        s = self.cfg.stem_stride
        n_levels = len(self.up)
        for j, (up, dec) in enumerate(zip(self.up, self.decoder, strict=True)):
            h = dec(torch.cat([up(h), skips[-2 - j]], 1))
            feats[n_levels - 1 - j + (s == 2)] = h
        if self.full is not None:
            feats[0] = self.full(torch.cat([self.full_up(h), x.to(h.dtype)], 1))
        wanted = range(len(self.heads)) if self.training else range(1)
        outs = [self.heads[k](feats[k]) for k in wanted]
        return outs if (self.training and len(self.heads) > 1) else outs[0]
