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

from mixprec.vision.cfg import VAL_KEYS, check_keys
from mixprec.vision.data import build_dataloader, load_data_config
from mixprec.vision.loss import DetectionLoss
from mixprec.vision.models import DetectionModel, load_model_yaml, model_info
from mixprec.vision.precision_choice import choose_precision, select_device
from mixprec.vision.predict import Detections, predict
from mixprec.vision.run import increment_path
from mixprec.vision.trainer import TrainResult, load_weights, train
from mixprec.vision.validate import ValResults, validate

__all__ = ["Model"]


class Model:
    def __init__(self, source: str | Path = "det-n.yaml", nc: int | None = None):
        self.source = str(source)
        self.backend: Any = None  # an OnnxBackend for .onnx files
        if self.source.endswith(".pt"):
            self.model, self.ckpt = load_weights(self.source)
        elif self.source.endswith(".onnx"):
            from mixprec.export import OnnxBackend

            self.model, self.ckpt = None, None
            self.backend = OnnxBackend(self.source)
        else:
            self.model, self.ckpt = DetectionModel(load_model_yaml(self.source), nc=nc), None
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

    def train(self, callbacks: dict[str, Callable] | None = None, **kwargs: Any) -> ValResults | None:
        """Train (keys as ``mixprec train --help``); afterwards this Model holds best.pt."""
        self._torch_only("train()")
        kwargs.setdefault("model", self.source)
        result = train(kwargs, callbacks=callbacks)
        self.last_train = result
        if result.best.is_file():
            self.model, self.ckpt = load_weights(result.best)
            self.source = str(result.best)
        return result.metrics

    def val(self, **kwargs: Any) -> ValResults:
        """Validate (keys as ``mixprec val --help``); ``data``, ``imgsz`` and ``datasets_dir``
        default to those the checkpoint was trained with (for an ``.onnx``: its metadata's
        data and imgsz; it runs in the precision it was exported in, ``amp`` is ignored)."""
        a = check_keys({"model": self.source, **kwargs}, VAL_KEYS, "val")
        trained = self.ckpt["args"] if self.ckpt is not None else {}
        if self.backend is not None:
            trained = {"data": self.backend.meta.get("data"), "imgsz": self.backend.meta["imgsz"][0]}
        for key in ("data", "imgsz", "datasets_dir"):  # default: as the model was trained
            if kwargs.get(key) is None and trained.get(key) is not None:
                a[key] = trained[key]
        if a["data"] is None or a["imgsz"] is None:
            raise ValueError("give data=... and imgsz=... (this model has no training record)")
        device = select_device(a["device"])
        data = load_data_config(a["data"], a["datasets_dir"])
        nc = len(self.names)
        if nc != data.nc:
            raise ValueError(f"model has {nc} classes, data {a['data']} has {data.nc}")
        loader = build_dataloader(data, a["split"], int(a["imgsz"]), int(a["batch"]), False,
                                  int(a["workers"]))
        save_dir = None
        if a["save_json"] or a["plots"]:
            save_dir = increment_path(a["project"], a["name"], a["exist_ok"])
            save_dir.mkdir(parents=True, exist_ok=True)
        if self.backend is not None:  # onnxruntime: CUDA provider when the device is CUDA
            if device.type != "cpu":
                from mixprec.export import OnnxBackend

                self.backend = OnnxBackend(self.source, str(device))
            runner, autocast = self.backend, None
        else:
            prec, _ = choose_precision(a["amp"], device, a["emulate"])
            runner, autocast = self.model.to(device), prec.autocast
        return validate(runner, loader, data.names, autocast, None, a["conf"], a["iou"],
                        a["max_det"], save_dir, a["save_json"], a["plots"], per_class=True,
                        verbose=a["verbose"])

    def predict(self, source: Any, imgsz: int | None = None, conf: float = 0.25, iou: float = 0.7,
                max_det: int = 300, save: bool = False, project: str = "runs/detect",
                name: str = "predict", exist_ok: bool = False) -> list[Detections]:
        """Detections for an image path, a folder, an array or a list of them; ``save=True``
        writes annotated images to ``project/name``. ``imgsz`` None: an ``.onnx`` model's
        export size, else 640."""
        if imgsz is None:
            imgsz = self.backend.meta["imgsz"][0] if self.backend is not None else 640
        save_dir = increment_path(project, name, exist_ok) if save else None
        if save_dir is not None:
            save_dir.mkdir(parents=True, exist_ok=True)
        return predict(self.backend if self.backend is not None else self.model, source, imgsz,
                       conf, iou, max_det, save_dir)

    def export(self, **kwargs: Any) -> Path:
        """Export to ONNX (keys as ``mixprec export --help``: ``format``, ``half``, ``int8``,
        ``dynamic``, ``imgsz``, ``batch``, ``data``, ``fraction``, ``opset``, ``simplify``...);
        returns the path of the checked file (see ``mixprec.export``)."""
        self._torch_only("export()")
        from mixprec.export import export_model

        return export_model(self.model, self.ckpt, self.source, **kwargs)

    def __repr__(self) -> str:
        return f"Model({self.source!r}, nc={len(self.names)})"
