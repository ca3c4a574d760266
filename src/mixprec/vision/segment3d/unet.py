"""A YAML-defined 3D U-Net family with residual encoder stages (nnU-Net's ResEnc design).

Stem: conv3-IN-act. Encoder stage i: ``blocks[i]`` residual blocks (conv3-IN-act-conv3-IN +
shortcut), the first with stride 2 for i > 0; stage 0 may have none (the stem alone). Decoder
level: a transposed conv (kernel 2, stride 2) up, then the skip concatenated (``skip_merge:
concat``) or added (``add``), then ``decoder_blocks`` conv3-IN-act blocks (per level, finest
first; 0 with ``add``: just the activation); a 1x1 head. ``act``: LeakyReLU (``negative_slope``,
default 0.01) or PReLU (starting at ``negative_slope``). InstanceNorm3d (affine) is a
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


ACTIVATIONS = ("leaky_relu", "prelu")


@dataclass(frozen=True)
class UNetConfig:
    channels: tuple[int, ...]
    blocks: tuple[int, ...]
    in_channels: int = 1
    nc: int = 2
    decoder_blocks: int | tuple[int, ...] = 1  # per decoder level (finest first) or one for all
    deep_supervision: bool = True
    name: str = "unet3d"
    stem_stride: int = 1  # 2: the stem downsamples; a light full-resolution block restores the size
    act: str = "leaky_relu"  # or "prelu" (one learned slope per layer, starting at negative_slope)
    negative_slope: float = 0.01
    encoder: str = "residual"  # "plain": encoder blocks without the shortcut (nnU-Net's PlainConvUNet)
    skip_merge: str = "concat"  # "add": decoder stages add the skip (convs see c, not 2c, channels)

    def __post_init__(self) -> None:
        if len(self.channels) != len(self.blocks) or len(self.channels) < 2:
            raise ValueError(f"channels {self.channels} and blocks {self.blocks} need the same length >= 2")
        if min(self.blocks[1:]) < 1 or self.blocks[0] < 0 or min(self.channels) < 1:
            raise ValueError(f"channels must be positive and blocks positive (the first may be 0: the stem "
                             f"alone), got {self.channels}, {self.blocks}")
        levels = self.decoder_levels
        if len(levels) != len(self.channels) - 1 or min(levels) < 0:
            raise ValueError(f"decoder_blocks {self.decoder_blocks}: one count >= 0, or one per decoder "
                             f"level ({len(self.channels) - 1}, finest first)")
        if min(levels) == 0 and self.skip_merge != "add":
            raise ValueError("decoder_blocks of 0 needs skip_merge: add (a concat needs a conv to merge)")
        if self.act not in ACTIVATIONS:
            raise ValueError(f"act={self.act!r}: use one of {', '.join(ACTIVATIONS)}")
        if self.encoder not in ("residual", "plain"):
            raise ValueError(f"encoder={self.encoder!r}: use 'residual' or 'plain'")
        if self.skip_merge not in ("concat", "add"):
            raise ValueError(f"skip_merge={self.skip_merge!r}: use 'concat' or 'add'")
        if self.stem_stride not in (1, 2):
            raise ValueError(f"stem_stride={self.stem_stride}: use 1 or 2")
        if self.nc < 2 or self.in_channels < 1:
            raise ValueError(f"nc={self.nc} (>= 2, incl. background), in_channels={self.in_channels} (>= 1)")

    @property
    def decoder_levels(self) -> tuple[int, ...]:
        """Conv blocks per decoder level, finest (full-resolution side) first."""
        d = self.decoder_blocks
        return tuple(d) if isinstance(d, (tuple, list)) else (d,) * (len(self.channels) - 1)

    @property
    def divisor(self) -> int:
        """Patch sides must be multiples of this (2 ** number of downsamplings)."""
        return self.stem_stride * 2 ** (len(self.channels) - 1)

    def as_dict(self) -> dict[str, Any]:
        return {"task": "segment3d", "name": self.name, "channels": list(self.channels),
                "blocks": list(self.blocks), "in_channels": self.in_channels, "nc": self.nc,
                "decoder_blocks": (list(self.decoder_blocks) if isinstance(self.decoder_blocks, tuple)
                                   else self.decoder_blocks), "deep_supervision": self.deep_supervision,
                "stem_stride": self.stem_stride, "act": self.act, "negative_slope": self.negative_slope,
                "encoder": self.encoder, "skip_merge": self.skip_merge}


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
                                        "unet3d-fullres.yaml, unet3d-s.yaml)")
            text = builtin.read_text()
        else:
            text = path.read_text()
        cfg, name = yaml.safe_load(text), path.stem
    if cfg.get("task", "segment3d") != "segment3d":
        raise ValueError(f"{source}: task is {cfg.get('task')!r}, expected 'segment3d'")
    cfg.update({k: v for k, v in override.items() if v is not None})
    return UNetConfig(tuple(cfg["channels"]), tuple(cfg["blocks"]), int(cfg.get("in_channels", 1)),
                      int(cfg.get("nc", 2)), _int_or_tuple(cfg.get("decoder_blocks", 1)),
                      bool(cfg.get("deep_supervision", True)), str(cfg.get("name", name)),
                      int(cfg.get("stem_stride", 1)), str(cfg.get("act", "leaky_relu")),
                      float(cfg.get("negative_slope", 0.01)), str(cfg.get("encoder", "residual")),
                      str(cfg.get("skip_merge", "concat")))


def _int_or_tuple(v: Any) -> int | tuple[int, ...]:
    return tuple(int(x) for x in v) if isinstance(v, (list, tuple)) else int(v)


def _act(cfg: UNetConfig) -> nn.Module:
    if cfg.act == "prelu":
        return nn.PReLU(init=cfg.negative_slope)
    return nn.LeakyReLU(cfg.negative_slope, inplace=True)


def _conv_norm_act(cfg: UNetConfig, c1: int, c2: int, stride: int = 1, act: bool = True,
                   k: int = 3) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv3d(c1, c2, k, stride, (k - 1) // 2, bias=False),
                               nn.InstanceNorm3d(c2, affine=True)]
    if act:
        layers.append(_act(cfg))
    return layers


class PointwiseConv3d(nn.Conv3d):
    """A 1x1x1 ``Conv3d`` with bias (same parameters and state dict) computed as one batched
    matmul over the voxels, ``baddbmm`` (autocast runs it in BF16/FP16 as it does convolutions):
    oneDNN's 1x1x1 convolution with few output channels is slow in backward (bf16, 16 -> 5
    channels at 64^3, batch 2, one thread: 18.7 ms forward + backward against 5.7 ms)."""

    def __init__(self, c1: int, c2: int):
        super().__init__(c1, c2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        w = self.weight.view(1, self.out_channels, c).expand(b, -1, -1)
        y = torch.baddbmm(self.bias.view(1, -1, 1).expand(b, -1, 1), w, x.reshape(b, c, -1))
        return y.view(b, self.out_channels, *x.shape[2:])


class ResBlock(nn.Module):
    """conv3-IN-act-conv3-IN plus a shortcut (1x1 strided conv + IN when the shape changes), act;
    ``encoder: plain``: no shortcut."""

    def __init__(self, cfg: UNetConfig, c1: int, c2: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(*_conv_norm_act(cfg, c1, c2, stride),
                                  *_conv_norm_act(cfg, c2, c2, act=False))
        self.skip: nn.Module | None = None
        if cfg.encoder == "residual":
            self.skip = nn.Identity() if (c1 == c2 and stride == 1) else nn.Sequential(
                nn.Conv3d(c1, c2, 1, stride, bias=False), nn.InstanceNorm3d(c2, affine=True))
        self.act = _act(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        return self.act(h if self.skip is None else h + self.skip(x))


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
        self.stem = nn.Sequential(*_conv_norm_act(cfg, cfg.in_channels, ch[0], s, k=3 if s == 1 else 2))
        self.encoder = nn.ModuleList()
        for i, (c, n) in enumerate(zip(ch, cfg.blocks, strict=True)):
            c_in = ch[0] if i == 0 else ch[i - 1]
            stride = 1 if i == 0 else 2  # the first block of a stage downsamples
            blocks = [ResBlock(cfg, c_in if k == 0 else c, c, stride if k == 0 else 1) for k in range(n)]
            self.encoder.append(nn.Sequential(*blocks))
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i in range(len(ch) - 1, 0, -1):
            self.up.append(nn.ConvTranspose3d(ch[i], ch[i - 1], 2, 2, bias=False))
            n = cfg.decoder_levels[i - 1]
            if n == 0:  # add the skip, activate
                layers: list[nn.Module] = [_act(cfg)]
            else:
                layers = _conv_norm_act(cfg, (2 if cfg.skip_merge == "concat" else 1) * ch[i - 1], ch[i - 1])
            for _ in range(n - 1):
                layers += _conv_norm_act(cfg, ch[i - 1], ch[i - 1])
            self.decoder.append(nn.Sequential(*layers))
        self.full = None
        if s == 2:  # back to full resolution: upsample, concat the input image, one light conv block
            f = max(ch[0] // 2, 4)
            self.full_up = nn.ConvTranspose3d(ch[0], f, 2, 2, bias=False)
            self.full = nn.Sequential(*_conv_norm_act(cfg, f + cfg.in_channels, f))
        n_heads = min(3, len(ch) - 1 + (s == 2)) if cfg.deep_supervision else 1
        # heads[k] sits on the features at 1/2**k of the input size (heads[0]: full resolution)
        feats = ([max(ch[0] // 2, 4)] if s == 2 else []) + list(ch)
        self.heads = nn.ModuleList(PointwiseConv3d(feats[k], cfg.nc) for k in range(n_heads))

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
            u, skip = up(h), skips[-2 - j]
            h = dec(torch.cat([u, skip], 1) if self.cfg.skip_merge == "concat" else u + skip)
            feats[n_levels - 1 - j + (s == 2)] = h
        if self.full is not None:
            feats[0] = self.full(torch.cat([self.full_up(h), x.to(h.dtype)], 1))
        wanted = range(len(self.heads)) if self.training else range(1)
        outs = [self.heads[k](feats[k]) for k in wanted]
        return outs if (self.training and len(self.heads) > 1) else outs[0]
