"""The per-task hook of the exporter: everything export, INT8 calibration and the ONNX backend
need to know about one task. ``DetectionTask`` is the only task-specific code in
``mixprec.export``; ``Segment3DTask`` (the 3D U-Net) is the second, with the same methods.

Hook methods: ``matches(model)``; ``stride(model)`` (input sizes must be multiples of it);
``input_size(value, model, args)`` (the export size from ``imgsz=``, else the training size);
``example_input(model, size, batch)``; ``dynamic_shapes(size, stride)`` (a ``torch.export``
spec for the one input); ``output_names(model)``; ``metadata(model, ckpt)``; ``head(meta)``
(what post-processing needs, from the metadata); ``keep_float`` (allowed values, default
first) and ``float_nodes(model_proto, keep)`` (ONNX nodes that stay FP32 under INT8);
``images(data, size, datasets_dir, meta)`` (the calibration inputs: ``names``, ``len``,
``get(i)``) and ``score(backend, data, size, indices, datasets_dir)`` (the task's accuracy
figures, ``score`` the main one, named ``score_name``; for the INT8 check and the benchmark).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import onnx
import torch

from mixprec.export.config import ExportError
from mixprec.export.seg3d_task import Segment3DTask

__all__ = ["TASKS", "DetectHead", "DetectionTask", "ExportTask", "Segment3DTask", "TaskImages",
           "task_for_model", "task_named"]


@dataclass(frozen=True)
class TaskImages:
    """The val images of a data YAML, preprocessed as validation does: ``get(i)`` returns a FP32
    tensor (C, H, W) in [0, 1]; ``names[i]`` is image ``i``'s file name."""

    names: list[str]
    dataset: Any

    def __len__(self) -> int:
        return len(self.names)

    def get(self, i: int) -> torch.Tensor:
        return self.dataset[i]["image"].float() / 255


class ExportTask(Protocol):
    name: str
    default_imgsz: int
    size_key: str  # the training arg holding the input size (imgsz, patch)
    score_name: str  # what score()["score"] is (mAP50-95, Dice)
    score_columns: tuple[tuple[str, str], ...]  # (score key, column title) for the benchmark table
    keep_float: tuple[str, ...]  # allowed keep_float values, the default first

    def matches(self, model: torch.nn.Module) -> bool: ...
    def stride(self, model: torch.nn.Module) -> int: ...
    def input_size(self, value: tuple[int, ...] | None, model: torch.nn.Module,
                   args: dict[str, Any]) -> tuple[int, ...]: ...
    def example_input(self, model: torch.nn.Module, size: tuple[int, ...], batch: int) -> torch.Tensor: ...
    def dynamic_shapes(self, size: tuple[int, ...], stride: int) -> dict[str, Any]: ...
    def output_names(self, model: torch.nn.Module) -> list[str]: ...
    def metadata(self, model: torch.nn.Module, ckpt: dict[str, Any] | None) -> dict[str, Any]: ...
    def head(self, meta: dict[str, Any]) -> Any: ...
    def float_nodes(self, model: onnx.ModelProto, keep: str) -> list[str]: ...
    def images(self, data: str, size: tuple[int, ...], datasets_dir: str,
               meta: dict[str, Any] | None = None) -> Any: ...
    def score(self, backend: Any, data: str, size: tuple[int, ...],
              indices: Sequence[int] | None, datasets_dir: str) -> dict[str, float]: ...


@dataclass(frozen=True)
class DetectHead:
    """What decoding needs (the same attributes as ``Detect``): FP32 ``stride`` per level,
    ``reg_max`` (DFL bins) and ``nc``."""

    stride: torch.Tensor
    reg_max: int
    nc: int


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def _ancestors(tensor: str, producers: dict[str, onnx.NodeProto]) -> set[str]:
    """Names of the nodes ``tensor`` depends on (initializers and graph inputs have none)."""
    seen: set[str] = set()
    stack = [tensor]
    while stack:
        node = producers.get(stack.pop())
        if node is not None and node.name not in seen:
            seen.add(node.name)
            stack.extend(node.input)
    return seen


class DetectionTask:
    """``DetectionModel``: input ``images`` FP32 (B, 3, H, W) in [0, 1], H and W multiples of
    the largest stride; outputs the raw head maps ``p3, p4, ...`` (B, 4*reg_max + nc, H/s, W/s),
    decoded by ``mixprec.vision.postprocess`` exactly as for the PyTorch model."""

    name = "detect"
    default_imgsz = 640
    size_key = "imgsz"
    score_name = "mAP50-95"
    score_columns = (("map", "mAP50-95"), ("map50", "mAP50"))
    keep_float = ("dfl", "box", "none")

    def matches(self, model: torch.nn.Module) -> bool:
        from mixprec.vision.models import DetectionModel

        return isinstance(model, DetectionModel)

    def stride(self, model: torch.nn.Module) -> int:
        return int(model.head.stride.max())

    def input_size(self, value: tuple[int, ...] | None, model: torch.nn.Module,
                   args: dict[str, Any]) -> tuple[int, int]:
        """(h, w) from ``imgsz=`` (one size or h,w), else the training imgsz, else 640."""
        value = value or _as_tuple(args.get("imgsz")) or (self.default_imgsz,)
        if len(value) > 2:
            raise ExportError(f"imgsz={','.join(map(str, value))}: a detector takes one size or h,w")
        return (value[0], value[0]) if len(value) == 1 else (value[0], value[1])

    def example_input(self, model: torch.nn.Module, imgsz: tuple[int, ...], batch: int) -> torch.Tensor:
        return torch.rand(batch, 3, *imgsz, generator=torch.Generator().manual_seed(0))

    def dynamic_shapes(self, imgsz: tuple[int, int], stride: int) -> dict[str, Any]:
        from torch.export import Dim

        h, w = (Dim(n, min=1, max=max(256, 2 * s // stride)) for n, s in zip("hw", imgsz, strict=True))
        return {"x": {0: Dim("batch", min=1, max=4096), 2: stride * h, 3: stride * w}}

    def output_names(self, model: torch.nn.Module) -> list[str]:
        return [f"p{int(s).bit_length() - 1}" for s in model.head.stride.tolist()]  # 8 -> p3

    def metadata(self, model: torch.nn.Module, ckpt: dict[str, Any] | None = None) -> dict[str, Any]:
        h = model.head
        return {"stride": [float(s) for s in h.stride.tolist()], "reg_max": int(h.reg_max),
                "nc": int(h.nc), "names": {int(k): str(v) for k, v in model.names.items()}}

    def head(self, meta: dict[str, Any]) -> DetectHead:
        return DetectHead(torch.tensor(meta["stride"], dtype=torch.float32), int(meta["reg_max"]),
                          int(meta["nc"]))

    def float_nodes(self, model: onnx.ModelProto, keep: str) -> list[str]:
        """Nodes left in FP32 by INT8 quantization. Each output is ``Concat(box logits, class
        logits)``: that concat always stays FP32 (one INT8 scale for both would coarsen the
        box-distribution logits). ``dfl`` also keeps the conv that makes the box-distribution
        logits; ``box`` keeps every node only the box branch uses (found from the graph: the
        ancestors of the box input that the class input does not share); ``none`` keeps only
        the concat."""
        producers = _producers(model.graph)
        keep_nodes: list[str] = []
        for out in model.graph.output:
            cat = producers.get(out.name)
            if cat is None or cat.op_type != "Concat" or len(cat.input) != 2:
                raise ExportError(f"output {out.name}: expected Concat(box, cls) at the head, "
                                  f"found {cat.op_type if cat else 'nothing'}; cannot place the "
                                  "FP32 head layers (use keep_float=none to skip)")
            keep_nodes.append(cat.name)
            box, cls = cat.input
            if keep == "dfl":
                keep_nodes.append(producers[box].name)
            elif keep == "box":
                keep_nodes += sorted(_ancestors(box, producers) - _ancestors(cls, producers))
        return keep_nodes

    def images(self, data: str, imgsz: tuple[int, ...], datasets_dir: str,
               meta: dict[str, Any] | None = None) -> TaskImages:
        from pathlib import Path

        from mixprec.vision.data import build_dataloader, load_data_config

        if imgsz[0] != imgsz[1]:
            raise ExportError(f"imgsz={imgsz}: detection calibration and validation use square "
                              "letterboxed images; give one size")
        cfg = load_data_config(data, datasets_dir)
        ds = build_dataloader(cfg, "val", imgsz[0], 1, False, cache=False).dataset
        return TaskImages([Path(p).name for p in ds.index.images], ds)

    def score(self, backend: Any, data: str, imgsz: tuple[int, int],
              indices: Sequence[int] | None, datasets_dir: str) -> dict[str, float]:
        """COCO mAP50-95 / mAP50 of ``backend`` on the val images (``indices``: a subset)."""
        from torch.utils.data import DataLoader, Subset

        from mixprec.vision.data import collate
        from mixprec.vision.validate import validate

        imgs = self.images(data, imgsz, datasets_dir)
        ds = imgs.dataset if indices is None else Subset(imgs.dataset, list(indices))
        loader = DataLoader(ds, batch_size=16, collate_fn=collate)
        loader.dataset.index = imgs.dataset.index  # validate reads the labels through it
        res = validate(backend, loader, backend.names, verbose=False)
        return {"score": float(res.box.map), "map": float(res.box.map), "map50": float(res.box.map50)}


def _as_tuple(value: Any) -> tuple[int, ...] | None:
    """A training size arg (64, "64", "96,96,64", [96, 96, 64]) as a tuple of ints; None: None."""
    if value is None:
        return None
    items = value if isinstance(value, (list, tuple)) else str(value).replace("x", ",").split(",")
    return tuple(int(v) for v in items if str(v).strip())


TASKS: dict[str, ExportTask] = {"detect": DetectionTask(), "segment3d": Segment3DTask()}


def task_for_model(model: torch.nn.Module) -> ExportTask:
    for task in TASKS.values():
        if task.matches(model):
            return task
    raise ExportError(f"no export hook for {type(model).__name__}; known tasks: {', '.join(TASKS)} "
                      "(add one to mixprec.export.tasks.TASKS)")


def task_named(name: str) -> ExportTask:
    if name not in TASKS:
        raise ExportError(f"task {name!r} in the ONNX metadata is not known to this mixprec; "
                          f"known: {', '.join(TASKS)}")
    return TASKS[name]
