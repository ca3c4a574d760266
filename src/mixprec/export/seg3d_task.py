"""``Segment3DTask``: the export hook of the 3D U-Net (``mixprec.vision.segment3d``).

Input ``images`` FP32 (B, C, x, y, z), normalised as training normalised (the CT statistics
or a per-volume z-score: done by the caller, as for the PyTorch model), every side a multiple of
the net's ``divisor``; output ``logits`` (B, nc, x, y, z) -- what ``UNet3D`` returns in eval
mode. The sliding window, argmax and NIfTI writing stay in ``mixprec.vision.segment3d``, shared
by every backend. INT8 calibrates on patches of the val volumes; the score is the mean
foreground Dice of whole val volumes through the same sliding-window inference as ``mixprec val``.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import product
from typing import Any

import numpy as np
import onnx
import torch

from mixprec.export.config import ExportError

__all__ = ["Segment3DTask", "VolumePatches"]


class VolumePatches:
    """Calibration inputs of a 3D model: each val volume (normalised as validation normalises
    it) cut into the tiles of a sliding window without overlap (zero-padded where the volume is
    smaller than the patch). ``get(i)``: FP32 (C, *patch); ``names[i]``: ``case@x,y,z``;
    ``case_of(i)``: the volume's index."""

    def __init__(self, cases: list[Any], patch: tuple[int, int, int]):
        from mixprec.vision.segment3d.inference import window_starts

        self.cases, self.patch = cases, tuple(patch)
        self.items = [(ci, start) for ci, c in enumerate(cases)
                      for start in product(*(window_starts(s, p, 0.0)
                                             for s, p in zip(c.image.shape[1:], patch, strict=True)))]
        self.names = [f"{cases[ci].name}@{','.join(map(str, s))}" for ci, s in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def case_of(self, i: int) -> int:
        return self.items[i][0]

    def get(self, i: int) -> torch.Tensor:
        ci, (x, y, z) = self.items[i]
        px, py, pz = self.patch
        tile = self.cases[ci].image[:, x:x + px, y:y + py, z:z + pz]
        pad = [(0, 0)] + [(0, p - s) for s, p in zip(tile.shape[1:], self.patch, strict=True)]
        return torch.from_numpy(np.ascontiguousarray(np.pad(tile, pad), dtype=np.float32))


class Segment3DTask:
    """``UNet3D``: see the module docstring. ``keep_float``: ``norm`` (default) leaves every
    InstanceNormalization in FP32 (onnxruntime's CPU provider has no integer kernel for it: as
    QDQ it would run DequantizeLinear -> FP32 -> QuantizeLinear anyway, one more rounding for
    nothing); ``none`` quantizes them too."""

    name = "segment3d"
    default_imgsz = 64
    size_key = "patch"
    input_unit = "patches (whole volumes scored)"
    score_name = "Dice"
    score_columns = (("dice", "Dice (mean fg)"),)
    keep_float = ("norm", "none")

    def matches(self, model: torch.nn.Module) -> bool:
        from mixprec.vision.segment3d.unet import UNet3D

        return isinstance(model, UNet3D)

    def stride(self, model: torch.nn.Module) -> int:
        return int(model.cfg.divisor)

    def input_size(self, value: tuple[int, ...] | None, model: torch.nn.Module,
                   args: dict[str, Any]) -> tuple[int, int, int]:
        """The patch (x, y, z) from ``imgsz=`` (one side or x,y,z), else the checkpoint's
        training patch; sides multiples of the divisor and at least twice it."""
        from mixprec.vision.segment3d.task import parse_patch

        raw = value or args.get("patch") or getattr(model, "patch", None)
        if raw is None:
            raise ExportError("this model has no training patch: give imgsz=... (e.g. imgsz=64 or 96,96,64)")
        try:
            patch = parse_patch(list(raw) if isinstance(raw, tuple) else raw)
        except ValueError as err:
            raise ExportError(f"imgsz: {err}") from err
        d = self.stride(model)
        if any(p % d or p < 2 * d for p in patch):
            raise ExportError(f"imgsz={','.join(map(str, patch))}: each side must be a multiple of "
                              f"{d} and at least {2 * d} for {model.cfg.name}, e.g. imgsz={max(2 * d, 64)}")
        return patch

    def example_input(self, model: torch.nn.Module, size: tuple[int, ...], batch: int) -> torch.Tensor:
        return torch.randn(batch, model.cfg.in_channels, *size, generator=torch.Generator().manual_seed(0))

    def dynamic_shapes(self, size: tuple[int, ...], stride: int) -> dict[str, Any]:
        from torch.export import Dim

        sides = (Dim(n, min=2, max=max(256, 2 * s // stride)) for n, s in zip("xyz", size, strict=True))
        return {"x": {0: Dim("batch", min=1, max=4096), **{2 + i: stride * d for i, d in enumerate(sides)}}}

    def output_names(self, model: torch.nn.Module) -> list[str]:
        return ["logits"]

    def metadata(self, model: torch.nn.Module, ckpt: dict[str, Any] | None = None) -> dict[str, Any]:
        """``nc``, ``names``, ``in_channels``, ``divisor``, ``train_patch``, ``norm`` (the CT
        statistics (lo, hi, mean, std) per channel, or None: per-volume z-score), ``spacing``
        (the training spacing when the checkpoint records one, else None), ``unet`` (its config)."""
        record = (ckpt or {}).get("model", {})
        spacing = record.get("spacing", getattr(model, "spacing", None))
        norm = getattr(model, "norm_stats", None)
        return {"nc": int(model.cfg.nc), "names": {int(k): str(v) for k, v in model.names.items()},
                "in_channels": int(model.cfg.in_channels), "divisor": int(model.cfg.divisor),
                "train_patch": list(model.patch) if getattr(model, "patch", None) else None,
                "norm": [[float(v) for v in s] for s in norm] if norm else None,
                "spacing": [float(v) for v in spacing] if spacing is not None else None,
                "unet": model.cfg.as_dict()}

    def head(self, meta: dict[str, Any]) -> Any:
        from mixprec.vision.segment3d.predict import NetInfo

        norm = meta.get("norm")
        return NetInfo(int(meta["nc"]), {int(k): v for k, v in meta["names"].items()},
                       int(meta["in_channels"]), int(meta["divisor"]), tuple(meta["patch"]),
                       [tuple(s) for s in norm] if norm else None,
                       tuple(meta["spacing"]) if meta.get("spacing") else None)

    def float_nodes(self, model: onnx.ModelProto, keep: str) -> list[str]:
        if keep == "none":
            return []
        return [n.name for n in model.graph.node if n.op_type == "InstanceNormalization"]

    def _cases(self, data: str, datasets_dir: str, norm: Any) -> list[Any]:
        from mixprec.vision.segment3d.config import load_seg_data
        from mixprec.vision.segment3d.task import SegData

        seg = SegData(load_seg_data(data, datasets_dir), verbose=False,
                      norm_stats=[tuple(s) for s in norm] if norm else None)
        return seg.cases("val")

    def images(self, data: str, size: tuple[int, ...], datasets_dir: str,
               meta: dict[str, Any] | None = None) -> VolumePatches:
        """Tiles of the val volumes, normalised with the exported model's statistics."""
        return VolumePatches(self._cases(data, datasets_dir, (meta or {}).get("norm")), tuple(size))

    def score(self, backend: Any, data: str, size: tuple[int, ...],
              indices: Sequence[int] | None, datasets_dir: str) -> dict[str, float]:
        """Mean foreground Dice (and per class) of ``backend`` on the val volumes, sliding window
        ``size`` at overlap 0.5 as ``mixprec val``; ``indices`` (of ``images``' tiles): only
        the volumes those tiles come from."""
        from mixprec.vision.segment3d.metrics import SegMetrics
        from mixprec.vision.segment3d.predict import net_info, predict_logits

        info = net_info(backend)
        cases = self._cases(data, datasets_dir, info.norm_stats)
        if indices is not None:
            tiles = VolumePatches(cases, tuple(size))
            cases = [cases[i] for i in sorted({tiles.case_of(j) for j in indices})]
        metrics = SegMetrics(dict(info.names))
        for case in cases:
            logits = predict_logits(backend, case.image, tuple(size), None, 0.5)
            metrics.add(logits.argmax(0).cpu().numpy(), case.label)
        per_class = {f"dice_{k}": v for k, v in metrics.per_class_dice.items()}
        return {"score": metrics.dice, "dice": metrics.dice, **per_class}
