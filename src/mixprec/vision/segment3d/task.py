"""``Segment3DTask``: what the shared loop needs from 3D segmentation (see ``mixprec.vision.task``).

Batches are ``(image (B, C, *patch) float32, label (B, *patch) int64)`` random patches
(``sampler.PatchDataset``); the loss is Dice + CE in FP32 with items ``(ce, dice)``; validation
runs Gaussian sliding-window inference over whole volumes under the run's autocast and its
fitness is the mean foreground Dice; the checkpoint's model record keeps the U-Net config, the
class names and the training patch (the default window for val/predict).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from mixprec.keys import Key
from mixprec.vision.segment3d.config import Case, SegDataConfig, load_seg_data, nifti_files
from mixprec.vision.segment3d.dataset import (
    LoadedCase,
    SkipReport,
    _fg_sample,
    ct_stats,
    load_cases,
    normalize,
)
from mixprec.vision.segment3d.keys import PREDICT_KEYS, SEG_KEYS, VAL_KEYS
from mixprec.vision.segment3d.loss import DiceCELoss
from mixprec.vision.segment3d.metrics import SegMetrics
from mixprec.vision.segment3d.predict import net_info, predict_logits, predict_volume
from mixprec.vision.segment3d.resample import median_spacing, parse_spacing, resample_case
from mixprec.vision.segment3d.sampler import patch_loader
from mixprec.vision.segment3d.schedule import poly_decay
from mixprec.vision.segment3d.unet import UNet3D, load_unet_yaml
from mixprec.vision.task import Task, load_weights

__all__ = ["SegData", "SegResults", "Segment3DTask", "Segmentation", "parse_patch"]


def parse_patch(value: Any) -> tuple[int, int, int]:
    """``64`` / ``"64"`` / ``"96,96,64"`` / ``[96, 96, 64]`` -> ``(x, y, z)``."""
    items = value if isinstance(value, (list, tuple)) else str(value).replace(" ", "").split(",")
    try:
        sides = tuple(int(v) for v in items)
    except ValueError as err:
        raise ValueError(f"patch={value!r}: give one side (64) or three (96,96,64)") from err
    if len(sides) == 1:
        sides = sides * 3
    if len(sides) != 3 or min(sides) < 1:
        raise ValueError(f"patch={value!r}: give one side (64) or three (96,96,64), all positive")
    return sides  # type: ignore[return-value]


@dataclass
class SegData:
    """Resolved dataset: names, channel count and the cases of each split (loaded on first use).
    CT data (modality CT) is normalised with dataset-wide ``norm_stats`` from the training
    foreground (or those of the checkpoint being validated); other data per volume. ``spacing``:
    None (volumes as they are), ``"auto"`` (the per-axis median of the training cases, resolved
    on first use) or (x, y, z) mm: every case is resampled to it (``resample``)."""

    config: SegDataConfig
    verbose: bool = True
    norm_stats: list[tuple[float, float, float, float]] | None = None
    spacing: str | tuple[float, float, float] | None = None
    _loaded: dict[str, list[LoadedCase]] = field(default_factory=dict)
    _resampled: set[str] = field(default_factory=set)
    skips: dict[str, SkipReport] = field(default_factory=dict)

    @property
    def names(self) -> dict[int, str]:
        return self.config.names

    @property
    def nc(self) -> int:
        return self.config.nc

    def _load(self, split: str, raw: bool = False) -> list[LoadedCase]:
        if split not in self.config.splits:
            raise ValueError(f"data {self.config.source} has no '{split}' split; it has "
                             f"{', '.join(self.config.splits)}")
        hint = next((c[0].image.shape[0] for c in self._loaded.values() if c), None)
        cases, report = load_cases(self.config.splits[split], self.nc, self.config.modalities or hint,
                                   split, self.verbose, raw=raw,
                                   stats=self.norm_stats if self.config.ct else None)
        self.skips[split] = report
        return cases

    def cases(self, split: str) -> list[LoadedCase]:
        if self.config.ct and self.norm_stats is None:  # dataset-wide CT statistics first
            train = self._load("train", raw=True)
            self.norm_stats = ct_stats(train)
            for c in train:
                c.image = normalize(c.image, self.norm_stats)
            self._loaded["train"] = train
        target = self.target_spacing
        if split not in self._loaded:
            self._loaded[split] = self._load(split)
        if target is not None and split not in self._resampled:
            self._loaded[split] = [resample_case(c, target, self.nc, _fg_sample) for c in self._loaded[split]]
            self._resampled.add(split)
        return self._loaded[split]

    @property
    def target_spacing(self) -> tuple[float, float, float] | None:
        """The spacing every case is resampled to (``auto`` resolved from the raw training cases)."""
        if self.spacing == "auto":
            if "train" not in self._loaded:
                self._loaded["train"] = self._load("train")
            self.spacing = median_spacing([c.spacing for c in self._loaded["train"]])
            if self.verbose:
                print(f"segment3d: spacing auto -> {'x'.join(f'{v:g}' for v in self.spacing)} mm "
                      "(median of the training cases)")
        return self.spacing  # type: ignore[return-value]

    @property
    def channels(self) -> int:
        split = "train" if "train" in self.config.splits else next(iter(self.config.splits))
        return int(self.cases(split)[0].image.shape[0])


@dataclass
class SegResults:
    """Validation metrics; ``fitness`` (picks best.pt) is the mean foreground Dice."""

    metrics: SegMetrics
    cases: int

    @property
    def dice(self) -> float:
        return self.metrics.dice

    @property
    def per_class(self) -> dict[str, float]:
        return self.metrics.per_class_dice

    @property
    def hd95(self) -> dict[str, float]:
        return self.metrics.per_class_hd95

    @property
    def fitness(self) -> float:
        d = self.metrics.dice
        return -1.0 if np.isnan(d) else float(d)

    def table(self) -> str:
        has_hd = bool(self.metrics.hd95_rows)
        lines = [f"{'class':>14}{'Dice':>10}" + (f"{'HD95 mm':>10}" if has_hd else "")]
        hd = self.metrics.per_class_hd95
        for name, d in self.per_class.items():
            lines.append(f"{name:>14}{d:>10.4f}" + (f"{hd[name]:>10.2f}" if has_hd else ""))
        lines.append(f"{'mean':>14}{self.dice:>10.4f}" + (f"{self.metrics.hd95:>10.2f}" if has_hd else ""))
        return "\n".join(lines)


@dataclass
class Segmentation:
    """One predicted volume: ``labels`` (x, y, z) uint8, the input's ``affine``, where it was
    written (None when not saved)."""

    path: Path
    labels: np.ndarray
    affine: np.ndarray
    names: dict[int, str]
    saved: Path | None = None

    def voxels(self) -> dict[str, int]:
        counts = np.bincount(self.labels.ravel(), minlength=len(self.names))
        return {self.names[i]: int(counts[i]) for i in range(1, len(self.names))}


class Segment3DTask(Task):
    name: ClassVar[str] = "segment3d"
    keys: ClassVar[dict[str, Key]] = SEG_KEYS
    val_keys: ClassVar[dict[str, Key]] = VAL_KEYS
    predict_keys: ClassVar[dict[str, Key]] = PREDICT_KEYS  # mixprec predict runs predict_command
    loss_names: ClassVar[tuple[str, ...]] = ("ce", "dice")
    fitness_name: ClassVar[str] = "Dice"
    size_key: ClassVar[str] = "patch"
    progress_columns: ClassVar[tuple[str, ...]] = ("Patch",)
    compile_loss: ClassVar[bool] = True  # Dice + CE: static shapes, no data-dependent ops

    def __init__(self) -> None:
        self._in_channels = 1  # of the model being trained (for synthetic autobatch batches)
        self._names: dict[int, str] = {}  # of the data being trained on (results.csv columns)

    def claims(self, model: str) -> bool:
        return Path(model).name.startswith("unet3d")

    def check_args(self, args: dict[str, Any]) -> None:
        if args.get("patch") is not None:
            parse_patch(args["patch"])
        if "iterations" in args and int(args["iterations"]) < 1:
            raise ValueError(f"iterations={args['iterations']}: give at least 1 batch per epoch")
        if "spacing" in args:
            parse_spacing(args["spacing"])
        if "overlap" in args and not 0 <= float(args["overlap"]) < 1:
            raise ValueError(f"overlap={args['overlap']}: must be in [0, 1), e.g. 0.5")

    def lr_decay(self, args: dict[str, Any]) -> Callable[[float], float] | None:
        return poly_decay

    # ---- data and model -------------------------------------------------------------------
    def load_data(self, args: dict[str, Any]) -> SegData:
        cfg = load_seg_data(args["data"], args.get("datasets_dir", "datasets"),
                            float(args.get("val_fraction", 0.2)), int(args.get("seed", 0)))
        stats, spacing = None, parse_spacing(args.get("spacing"))
        if str(args.get("model", "")).endswith(".pt") and Path(args["model"]).is_file():
            from mixprec.io import load_checkpoint

            record = load_checkpoint(args["model"])["model"]
            stats = record.get("norm")  # normalise and resample as in training
            if "spacing" not in args and record.get("spacing"):
                spacing = tuple(float(v) for v in record["spacing"])
        elif str(args.get("model", "")).endswith(".onnx") and Path(args["model"]).is_file():
            from mixprec.vision.task import onnx_metadata

            meta = onnx_metadata(args["model"])
            stats = meta.get("norm")  # an exported model's training stats and spacing
            if "spacing" not in args and meta.get("spacing"):
                spacing = tuple(float(v) for v in meta["spacing"])
        return SegData(cfg, bool(args.get("verbose", True)),
                       [tuple(s) for s in stats] if stats else None, spacing)

    def new_model(self, source: str, nc: int | None = None, in_channels: int | None = None) -> nn.Module:
        model = UNet3D(load_unet_yaml(source, nc=nc, in_channels=in_channels))
        model.patch = model.norm_stats = model.spacing = None  # type: ignore[assignment]
        return model

    def build_model(self, args: dict[str, Any], data: Any, model: nn.Module | None) -> nn.Module:
        if model is None:
            src = str(args["model"])
            model = load_weights(src)[0] if src.endswith(".pt") else \
                self.new_model(src, data.nc, data.channels)
        cfg = model.cfg  # type: ignore[attr-defined]
        ds = args.get("deep_supervision")
        ds_changed = ds is not None and ds != cfg.deep_supervision
        if cfg.nc != data.nc or cfg.in_channels != data.channels or ds_changed:
            print(f"segment3d: a new {cfg.name} for {data.nc} classes, {data.channels} channel(s)")
            model = UNet3D(load_unet_yaml(cfg.as_dict(), nc=data.nc, in_channels=data.channels,
                                          deep_supervision=ds))
        patch = parse_patch(args["patch"])
        d = model.cfg.divisor
        if any(p % d or p < 2 * d for p in patch):
            raise ValueError(f"patch={args['patch']}: each side must be a multiple of {d} and at least "
                             f"{2 * d} for {model.cfg.name}, e.g. patch={max(2 * d, 64)}")
        model.names = dict(data.names)
        model.patch = patch
        model.norm_stats = data.norm_stats if data.config.ct else None
        model.spacing = data.target_spacing  # predict resamples inputs to it and back
        self._in_channels, self._names = model.cfg.in_channels, dict(data.names)
        return model

    def model_record(self, model: nn.Module) -> dict[str, Any]:
        return {"task": self.name, "yaml": model.cfg.as_dict(), "names": model.names,
                "patch": list(model.patch) if model.patch else None,
                "norm": [list(x) for x in model.norm_stats] if getattr(model, "norm_stats", None) else None,
                "spacing": list(model.spacing) if getattr(model, "spacing", None) else None}

    def model_from_record(self, record: dict[str, Any]) -> nn.Module:
        model = UNet3D(load_unet_yaml(record["yaml"]))
        model.names = {int(k): v for k, v in record["names"].items()}
        model.patch = tuple(record["patch"]) if record.get("patch") else None
        model.norm_stats = [tuple(x) for x in record["norm"]] if record.get("norm") else None
        model.spacing = tuple(float(v) for v in record["spacing"]) if record.get("spacing") else None
        return model

    def loaders(self, args: dict[str, Any], data: Any, batch: int, world: int) -> tuple[Any, Any]:
        # an epoch is `iterations` global batches: iterations * batch patches, which the loop's
        # DistributedSampler splits into `iterations` batches of batch // world per rank
        train = patch_loader(data.cases("train"), parse_patch(args["patch"]), batch // world,
                             int(args["iterations"]) * world, int(args["seed"]), int(args["workers"]),
                             bool(args["augment"]))
        return train, data.cases("val")

    def val_loader(self, args: dict[str, Any], data: Any, split: str) -> Any:
        return data.cases(split)

    def inputs(self, batch: Any, device: torch.device) -> tuple[Any, Any]:
        x, y = batch
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    def batch_stats(self, batch: Any, inputs: Any) -> tuple[Any, ...]:
        return ("x".join(str(s) for s in inputs.shape[2:]),)

    def synthetic_batch(self, args: dict[str, Any], batch: int, nc: int) -> tuple[Any, Any]:
        p = parse_patch(args["patch"])
        return torch.randn(batch, self._in_channels, *p), torch.randint(0, nc, (batch, *p))

    # ---- loss and metrics -----------------------------------------------------------------
    def build_loss(self, args: dict[str, Any], model: nn.Module) -> Callable[[Any, Any], Any]:
        criterion = DiceCELoss(model.cfg.nc, float(args.get("ce", 1.0)), float(args.get("dice", 1.0)))

        def loss_fn(outputs: Any, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            loss, (ce, dice) = criterion(outputs, targets)
            return loss, torch.stack([ce, dice])

        return loss_fn

    def validate(self, model: nn.Module, loader: Any, data: Any, autocast: Callable[[], Any] | None,
                 loss_fn: Callable | None, args: dict[str, Any], save_dir: Path | None,
                 final: bool) -> SegResults:
        patch = parse_patch(args["patch"]) if args.get("patch") is not None else net_info(model).patch
        hd95 = final and bool(args.get("hd95", True))
        if hd95 and importlib.util.find_spec("monai") is None:
            print("segment3d: HD95 needs MONAI (pip install monai); reporting Dice only")
            hd95 = False
        metrics = SegMetrics(dict(data.names))
        for case in loader:  # a UNet3D or a backend (an exported .onnx): the same inference
            logits = predict_logits(model, case.image, patch, autocast, float(args.get("overlap", 0.5)))
            metrics.add(logits.argmax(0).cpu().numpy(), case.label, case.spacing, hd95=hd95)
        results = SegResults(metrics, len(loader))
        if final and args.get("verbose", True):
            print(f"{len(loader)} volumes, sliding window {patch}\n{results.table()}")
        return results

    def metric_columns(self, metrics: SegResults | None) -> dict[str, float]:
        """``metrics/dice`` (mean foreground) and ``metrics/dice_<name>`` per class."""
        names = list(metrics.per_class) if metrics is not None else \
            [n for i, n in sorted(self._names.items()) if i > 0]
        row = {"metrics/dice": metrics.dice if metrics is not None else float("nan")}
        for n in names:
            row[f"metrics/dice_{n}"] = metrics.per_class[n] if metrics is not None else float("nan")
        return row

    def summary(self, metrics: SegResults) -> str:
        per_class = ", ".join(f"{k} {v:.3f}" for k, v in metrics.per_class.items())
        return f"Dice={metrics.dice:.4f} ({per_class})"

    # ---- prediction and tools -------------------------------------------------------------
    def predict(self, model: nn.Module, source: Any, save_dir: Path | None = None,
                autocast: Callable[[], Any] | None = None, patch: Any = None, overlap: float = 0.5,
                probabilities: bool = False, **_detection_keys: Any) -> list[Segmentation]:
        """Label maps for a NIfTI path, a folder of them or a list; with ``save_dir`` each is
        written there as ``<name>.nii.gz`` with its input's affine and shape."""
        items = source if isinstance(source, (list, tuple)) else [source]
        paths = nifti_files([Path(p) for p in items])
        if not paths:
            raise FileNotFoundError(f"no .nii/.nii.gz volume at {source}")
        info = net_info(model)  # a UNet3D or a backend (an exported .onnx)
        window = parse_patch(patch) if patch is not None else info.patch
        if window is None:
            raise ValueError("this model has no training patch: give patch=... (e.g. patch=64)")
        out = []
        for p in paths:
            target = save_dir / f"{Case(p, None).name}.nii.gz" if save_dir is not None else None
            labels, affine = predict_volume(model, p, window, target, autocast, probabilities, overlap)
            out.append(Segmentation(p, labels, affine, dict(info.names), target))
        return out

    def predict_command(self, model: nn.Module, config: dict[str, Any]) -> int:
        """``mixprec predict`` for a segment3d checkpoint: NIfTI label maps into the run folder."""
        from mixprec.io import increment_path

        if not config["source"]:
            raise ValueError("give source=case.nii.gz or a folder of volumes")
        save_dir = None
        if config["save"]:
            save_dir = increment_path(config["project"], config["name"], bool(config["exist_ok"]))
            save_dir.mkdir(parents=True, exist_ok=True)
        results = self.predict(model, config["source"], save_dir, None, config["patch"],  # FP32
                               float(config["overlap"]), bool(config["probabilities"]))
        for r in results:
            found = ", ".join(f"{k} {v}" for k, v in r.voxels().items() if v)
            print(f"{r.path}: {found or 'no foreground'} voxels" + (f" -> {r.saved}" if r.saved else ""))
        return 0

    def memory_probe(self, args: dict[str, Any], model: nn.Module) -> tuple[dict[str, Any], float, str]:
        """Probe at patch sides of at most 32 (the model's divisor rules kept); the ratio is the
        voxel count's."""
        patch = parse_patch(args["patch"])
        d = model.cfg.divisor  # type: ignore[attr-defined]
        side = max(2 * d, -(-32 // d) * d)
        probe = tuple(min(p, side) for p in patch)
        words = f"patch {patch[0]}" if len(set(patch)) == 1 else f"patch {'x'.join(map(str, patch))}"
        return ({**args, "patch": ",".join(map(str, probe))}, math.prod(patch) / math.prod(probe), words)

    def workload(self, model: str, size: int, data: str | None = None) -> Any:
        """``model`` (e.g. ``unet3d-s.yaml``) at patch ``size``^3 on synthetic volumes (5 classes,
        1 channel; ``data`` gives its classes and channels) with the training loss."""
        from mixprec.bench.tasks import BenchTask

        nc, ch = 5, 1
        if data is not None:
            d = self.load_data({"data": data})
            nc, ch = d.nc, d.channels
        cfg = load_unet_yaml(model, nc=nc, in_channels=ch)
        if size % cfg.divisor or size < 2 * cfg.divisor:
            raise ValueError(f"patch {size} must be a multiple of {cfg.divisor} and at least "
                             f"{2 * cfg.divisor}")
        criterion = DiceCELoss(nc)

        def batch_fn(b: int) -> tuple[torch.Tensor, torch.Tensor]:
            return torch.randn(b, ch, size, size, size), torch.randint(0, nc, (b, size, size, size))

        return BenchTask(f"{model} (patch {size}^3, synthetic volumes)", lambda: UNet3D(cfg), batch_fn,
                         lambda out, t: criterion(out, t)[0])
