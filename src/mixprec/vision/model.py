"""``Model``: the public facade, in the conventions YOLO users know.

    model = Model("det-n.yaml")                      # or a run's weights/best.pt
    model.train(data="shapes8.yaml", epochs=5, imgsz=640, amp=True)
    metrics = model.val(data="shapes8.yaml")        # metrics.box.map50, metrics.box.map
    results = model.predict("image.jpg")             # boxes, scores, classes per image
    path = model.export(format="onnx", int8=True, data="shapes8.yaml")   # -> best_int8.onnx
    Model(path).val(data="shapes8.yaml")             # .onnx runs through onnxruntime

``model.model`` is the ``torch.nn.Module`` (None for an ``.onnx`` file, whose
``model.backend`` is a ``mixprec.export.OnnxBackend``); ``model.loss()`` its loss callable;
``model.dataloader(...)`` a batch iterator; ``model.info()`` prints layers, parameters, GFLOPs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from mixprec.keys import check_keys
from mixprec.precision import Precision
from mixprec.vision.data import build_dataloader, load_data_config
from mixprec.vision.loss import DetectionLoss
from mixprec.vision.models import model_info
from mixprec.vision.precision_choice import choose_precision, select_device
from mixprec.vision.predict import Detections
from mixprec.vision.run import increment_path
from mixprec.vision.task import Task, get_task, load_weights, task_for_model
from mixprec.vision.trainer import TrainResult, train
from mixprec.vision.validate import ValResults

__all__ = ["Model"]


class Model:
    def __init__(self, source: str | Path = "det-n.yaml", nc: int | None = None):
        self.source = str(source)
        self.backend: Any = None  # an OnnxBackend for .onnx files
        if self.source.endswith(".pt"):
            self.model, self.ckpt = load_weights(self.source)
            self.task: Task = task_for_model(self.source, self.ckpt["model"])
        elif self.source.endswith(".onnx"):
            from mixprec.export import OnnxBackend

            self.model, self.ckpt = None, None
            self.backend = OnnxBackend(self.source)
            self.task = get_task(self.backend.meta["task"])
        else:
            self.task = task_for_model(self.source)
            self.model, self.ckpt = self.task.new_model(self.source, nc), None
        self.last_train: TrainResult | None = None

    @property
    def names(self) -> dict[int, str]:
        return self.backend.names if self.backend is not None else self.model.names

    def _torch_only(self, what: str) -> None:
        if self.model is None:
            raise ValueError(f"{what} needs a PyTorch model (.yaml or .pt); {self.source} is "
                             "an exported ONNX model (val and predict only)")

    def info(self, imgsz: int = 640, verbose: bool = True) -> dict[str, Any]:
        """Print (and return) layers, parameters, gradients and GFLOPs at ``imgsz``."""
        self._torch_only("info()")
        return model_info(self.model, imgsz, verbose)

    def loss(self, **gains: float) -> DetectionLoss:
        """The loss callable: ``loss(maps, targets) -> (scalar, (box, cls, dfl))``."""
        self._torch_only("loss()")
        return DetectionLoss(self.model, **gains)

    def dataloader(self, data: str = "shapes8.yaml", split: str = "train", imgsz: int = 640,
                   batch: int = 16, augment: bool = True, workers: int = 0, seed: int = 0,
                   datasets_dir: str = "datasets") -> DataLoader:
        """Batches of ``data``/``split`` (see ``mixprec.vision.data.build_dataloader``)."""
        cfg = load_data_config(data, datasets_dir)
        return build_dataloader(cfg, split, imgsz, batch, augment, workers, seed)

    def train(self, callbacks: dict[str, Callable] | None = None, dist: Any = None,
              **kwargs: Any) -> ValResults | None:
        """Train (keys as ``mixprec train --help``); afterwards this Model holds best.pt.
        ``dist``: this rank's ``mixprec.distributed.DistContext`` under torchrun."""
        self._torch_only("train()")
        kwargs.setdefault("model", self.source)
        result = train(kwargs, callbacks=callbacks, task=self.task, dist=dist)
        self.last_train = result
        if result.best.is_file():
            self.model, self.ckpt = load_weights(result.best)
            self.source = str(result.best)
        return result.metrics

    def val(self, **kwargs: Any) -> ValResults:
        """Validate (keys as ``mixprec val --help``); ``data``, ``imgsz`` and ``datasets_dir``
        default to those the checkpoint was trained with (for an ``.onnx``: its metadata's
        data and imgsz; it runs in the precision it was exported in, ``amp`` is ignored)."""
        a = check_keys({"model": self.source, **kwargs}, self.task.val_keys, "val")
        trained = self.ckpt["args"] if self.ckpt is not None else {}
        size = self.task.size_key
        if self.backend is not None:  # the export size (detection: imgsz; segment3d: the patch)
            meta = self.backend.meta
            export_size = meta["imgsz"][0] if size == "imgsz" else meta.get(size)
            trained = {"data": meta.get("data"), size: export_size}
        for key in ("data", size, "datasets_dir"):  # default: as the model was trained
            if kwargs.get(key) is None and trained.get(key) is not None:
                a[key] = trained[key]
        if a["data"] is None or a[size] is None:
            raise ValueError(f"give data=... and {size}=... (this model has no training record)")
        task = self.task
        task.check_args(a)
        device = select_device(a["device"])
        data = task.load_data(a)
        if task.num_classes(data) != len(self.names):
            raise ValueError(f"model has {len(self.names)} classes, data {a['data']} has "
                             f"{task.num_classes(data)}")
        loader = task.val_loader(a, data, a["split"])
        save_dir = None
        if a.get("save_json") or a["plots"]:
            save_dir = increment_path(a["project"], a["name"], a["exist_ok"])
            save_dir.mkdir(parents=True, exist_ok=True)
        if self.backend is not None:  # onnxruntime: CUDA provider when the device is CUDA
            if device.type != "cpu":
                from mixprec.export import OnnxBackend

                self.backend = OnnxBackend(self.source, str(device))
            runner, autocast = self.backend, None
        else:
            choice = a["precision"] if a.get("precision") is not None else a["amp"]
            policy, _ = choose_precision(choice, device, a["emulate"])
            prec = Precision(policy, device=device, emulate=a["emulate"])
            runner, autocast = self.model.to(device), prec.autocast
        return task.validate(runner, loader, data, autocast, None, a, save_dir, final=True)

    def predict(self, source: Any, imgsz: int | None = None, conf: float = 0.25, iou: float = 0.7,
                max_det: int = 300, save: bool = False, project: str | None = None,
                name: str = "predict", exist_ok: bool = False) -> list[Detections]:
        """Detections for an image path, a folder, an array or a list of them; ``save=True``
        writes annotated images to ``project/name`` (default project: ``runs/<task>``). A
        segment3d model returns label maps and, with ``save=True``, writes NIfTI files.
        ``imgsz`` None: an ``.onnx`` model's export size, else 640."""
        if imgsz is None:
            imgsz = self.backend.meta["imgsz"][0] if self.backend is not None else 640
        save_dir = increment_path(project or f"runs/{self.task.name}", name, exist_ok) if save else None
        if save_dir is not None:
            save_dir.mkdir(parents=True, exist_ok=True)
        runner = self.backend if self.backend is not None else self.model
        return self.task.predict(runner, source, imgsz=imgsz, conf=conf, iou=iou,
                                 max_det=max_det, save_dir=save_dir)

    def export(self, **kwargs: Any) -> Path:
        """Export to ONNX (keys as ``mixprec export --help``: ``format``, ``half``, ``int8``,
        ``dynamic``, ``imgsz``, ``batch``, ``data``, ``fraction``, ``opset``, ``simplify``...);
        returns the path of the checked file (see ``mixprec.export``)."""
        self._torch_only("export()")
        from mixprec.export import export_model

        return export_model(self.model, self.ckpt, self.source, **kwargs)

    def __repr__(self) -> str:
        return f"Model({self.source!r}, nc={len(self.names)})"
