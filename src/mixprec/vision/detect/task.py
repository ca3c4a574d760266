"""``DetectTask``: what the shared loop needs from detection (see ``mixprec.vision.task``).

The parts it assembles stay where they are (``vision.data``, ``vision.models``, ``vision.loss``,
``vision.validate``, ``vision.predict``); this module is the only place that knows how they fit
the loop: batches are ``{"images": uint8 (B, 3, S, S), "targets": (N, 6) [image, class, cx, cy,
w, h]}``, the model sees FP32 images in [0, 1], the loss returns (box, cls, dfl) items and the
fitness is COCO mAP50-95.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from mixprec.keys import Key
from mixprec.vision import data as vdata
from mixprec.vision.cfg import DETECT_KEYS, VAL_KEYS
from mixprec.vision.loss import DetectionLoss
from mixprec.vision.models import DetectionModel, load_model_yaml
from mixprec.vision.task import Task, load_weights
from mixprec.vision.validate import ValResults, validate

__all__ = ["DetectTask", "synthetic_boxes"]


def synthetic_boxes(b: int, nc: int, per_image: int = 4) -> torch.Tensor:
    """(b * per_image, 6) rows [image, class, cx, cy, w, h], normalised, boxes inside the image."""
    n = b * per_image
    wh = 0.05 + 0.35 * torch.rand(n, 2)
    centre = wh / 2 + (1 - wh) * torch.rand(n, 2)
    image = torch.arange(b).repeat_interleave(per_image).float()
    cls = torch.randint(0, nc, (n,)).float()
    return torch.cat([image[:, None], cls[:, None], centre, wh], 1)


class DetectTask(Task):
    name: ClassVar[str] = "detect"
    keys: ClassVar[dict[str, Key]] = DETECT_KEYS
    val_keys: ClassVar[dict[str, Key]] = VAL_KEYS
    loss_names: ClassVar[tuple[str, ...]] = ("box", "cls", "dfl")
    fitness_name: ClassVar[str] = "mAP50-95"
    progress_columns: ClassVar[tuple[str, ...]] = ("Instances", "Size")
    compile_loss_note: ClassVar[str] = ("the assigner's data-dependent shapes (nonzero, bincount, "
                                        ".item()) break the graph")

    def claims(self, model: str) -> bool:
        return Path(model).name.startswith("det-")

    def check_args(self, args: dict[str, Any]) -> None:
        imgsz = args.get("imgsz")
        if imgsz is not None and int(imgsz) % 32:
            raise ValueError(f"imgsz={imgsz} must be a multiple of 32, the detector's largest stride "
                             "(e.g. 640)")

    def load_data(self, args: dict[str, Any]) -> vdata.DataConfig:
        return vdata.load_data_config(args["data"], args["datasets_dir"])

    def new_model(self, source: str, nc: int | None = None) -> nn.Module:
        return DetectionModel(load_model_yaml(source), nc=nc)

    def build_model(self, args: dict[str, Any], data: Any, model: nn.Module | None) -> nn.Module:
        if model is None:
            src = str(args["model"])
            model = load_weights(src)[0] if src.endswith(".pt") else self.new_model(src, data.nc)
        if model.nc != data.nc:  # a new head for this data's classes
            model = DetectionModel(model.yaml, nc=data.nc)
        model.names = dict(data.names)
        return model

    def model_record(self, model: nn.Module) -> dict[str, Any]:
        return {"task": self.name, "yaml": model.yaml, "names": model.names}

    def model_from_record(self, record: dict[str, Any]) -> nn.Module:
        model = DetectionModel(record["yaml"], nc=len(record["names"]))
        model.names = {int(k): v for k, v in record["names"].items()}
        return model

    def loaders(self, args: dict[str, Any], data: Any, batch: int, world: int) -> tuple[Any, Any]:
        aug = vdata.AugmentConfig(args["mosaic"], args["degrees"], args["translate"], args["scale"],
                                  args["hsv_h"], args["hsv_s"], args["hsv_v"], args["fliplr"])
        imgsz, workers, seed = int(args["imgsz"]), int(args["workers"]), args["seed"]
        train = vdata.build_dataloader(data, "train", imgsz, batch // world, True, workers, seed, aug)
        val = vdata.build_dataloader(data, "val", imgsz, batch * 2, False, workers, seed)
        return train, val

    def val_loader(self, args: dict[str, Any], data: Any, split: str) -> Any:
        return vdata.build_dataloader(data, split, int(args["imgsz"]), int(args["batch"]), False,
                                      int(args["workers"]))

    def on_epoch_start(self, loader: Any, epoch: int, args: dict[str, Any]) -> None:
        ds = loader.dataset
        ds.mosaic_on = ds.aug is not None and ds.aug.mosaic > 0 and \
            epoch < int(args["epochs"]) - args["close_mosaic"]

    def inputs(self, batch: Any, device: torch.device) -> tuple[Any, Any]:
        """FP32 images in [0, 1], channels-last (NHWC) like the detector's weights, so oneDNN's
        convolutions run NHWC end to end from the first layer (the uint8 batch is converted,
        a quarter of the bytes of the FP32 one)."""
        images = batch["images"].to(device, non_blocking=True, memory_format=torch.channels_last)
        return images.float() / 255, batch["targets"]

    def batch_stats(self, batch: Any, inputs: Any) -> tuple[Any, ...]:
        return len(batch["targets"]), inputs.shape[-1]

    def synthetic_batch(self, args: dict[str, Any], batch: int, nc: int) -> tuple[Any, Any]:
        s = int(args["imgsz"])
        images = torch.rand(batch, 3, s, s).contiguous(memory_format=torch.channels_last)
        return images, synthetic_boxes(batch, nc)

    def build_loss(self, args: dict[str, Any], model: nn.Module) -> Callable[[Any, Any], Any]:
        return DetectionLoss(model, args["box"], args["cls"], args["dfl"])

    def validate(self, model: nn.Module, loader: Any, data: Any, autocast: Callable[[], Any] | None,
                 loss_fn: Callable | None, args: dict[str, Any], save_dir: Path | None,
                 final: bool) -> ValResults:
        if not final:
            return validate(model, loader, data.names, autocast, loss_fn, args["conf"], args["iou"],
                            args["max_det"], save_dir, plots=False, verbose=args["verbose"])
        return validate(model, loader, data.names, autocast, loss_fn, args["conf"], args["iou"],
                        args["max_det"], save_dir, args["save_json"], args["plots"], per_class=True,
                        verbose=args["verbose"])

    def metric_columns(self, metrics: ValResults | None) -> dict[str, float]:
        nan, m = float("nan"), metrics
        row = {"metrics/precision(B)": m.box.mp if m else nan,
               "metrics/recall(B)": m.box.mr if m else nan,
               "metrics/mAP50(B)": m.box.map50 if m else nan,
               "metrics/mAP50-95(B)": m.box.map if m else nan}
        vl = m.loss.tolist() if m is not None and m.loss is not None else [nan] * 3
        for k, v in zip(self.loss_names, vl, strict=True):
            row[f"val/{k}_loss"] = v
        return row

    def summary(self, metrics: ValResults) -> str:
        return f"mAP50={metrics.box.map50:.4f} mAP50-95={metrics.box.map:.4f}"

    def predict(self, model: nn.Module, source: Any, **kwargs: Any) -> list[Any]:
        from mixprec.vision.predict import predict

        return predict(model, source, **kwargs)

    def workload(self, model: str, size: int, data: str | None = None) -> Any:
        """The detector ``model`` (e.g. ``det-n.yaml``) with its training loss for ``mixprec
        bench``. Synthetic batches: uniform random images and 4 random boxes per image;
        ``data``: real letterboxed training images of that dataset YAML (no augmentation)."""
        from mixprec.bench.tasks import BenchTask

        self.check_args({"imgsz": size})

        def model_fn() -> nn.Module:
            return DetectionModel(model)

        probe = model_fn()
        nc = int(probe.nc)
        criterion = DetectionLoss(probe)
        del probe

        def loss_fn(maps: Any, targets: torch.Tensor) -> torch.Tensor:
            return criterion(maps, targets)[0]

        if data is not None:
            batch_fn = _real_batches(data, size)
        else:
            def batch_fn(b: int) -> tuple[torch.Tensor, torch.Tensor]:
                return self.synthetic_batch({"imgsz": size}, b, nc)

        source = f"data {data}" if data else "synthetic images"
        return BenchTask(f"{model} (imgsz {size}, {source})", model_fn, batch_fn, loss_fn)


def _real_batches(data: str, imgsz: int) -> Callable[[int], tuple[torch.Tensor, torch.Tensor]]:
    loader = vdata.build_dataloader(vdata.load_data_config(data), "train", imgsz, batch=1,
                                    train=False)
    dataset = loader.dataset

    def batch_fn(b: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, len(dataset), (b,)).tolist()  # seeded by bench per step
        batch = vdata.collate([dataset[i] for i in idx])
        return batch["images"].float() / 255.0, batch["targets"]

    return batch_fn

