"""``OnnxBackend``: an exported ``.onnx`` behind the same seam as a PyTorch model
(``mixprec.vision.backend``), so ``validate`` and ``predict`` run it with the same pre- and
post-processing. onnxruntime's CPU provider; the CUDA provider when ``device`` asks for CUDA and
onnxruntime has it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mixprec.export.config import ExportError
from mixprec.export.metadata import read_metadata
from mixprec.export.tasks import task_named

__all__ = ["OnnxBackend", "session"]


def session(path: str | Path, device: str | None = "cpu", threads: int = 0) -> Any:
    """An onnxruntime ``InferenceSession`` for ``path``: CUDA provider first when ``device``
    names CUDA (``cuda``, ``0``, ``cuda:1``) and onnxruntime offers it, else CPU.
    ``threads``: intra-op threads (0: onnxruntime's default, one per physical core)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.log_severity_level = 3  # errors only
    providers: list[Any] = ["CPUExecutionProvider"]
    dev = str(device or "cpu")
    if dev != "cpu" and "CUDAExecutionProvider" in ort.get_available_providers():
        index = int(dev.split(":")[1]) if ":" in dev else int(dev) if dev.isdigit() else 0
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": index}))
    return ort.InferenceSession(str(path), opts, providers=providers)


class OnnxBackend:
    """Runs a mixprec-exported ``.onnx``: FP32 images (B, C, H, W) in [0, 1] -> the raw head
    outputs as FP32 CPU tensors (one device-to-host copy per call). A model exported with a
    fixed batch runs larger batches in chunks (the last one padded); a fixed image size must
    match. ``meta``: the model's metadata; ``head``: what decoding needs."""

    def __init__(self, path: str | Path, device: str | None = "cpu", threads: int = 0):
        self.path = Path(path)
        self.meta = read_metadata(self.path)  # raises MetadataError for a foreign .onnx
        self.task = task_named(self.meta["task"])
        self.session = session(self.path, device, threads)
        self.input_name = self.session.get_inputs()[0].name
        self.names: dict[int, str] = {int(k): v for k, v in self.meta["names"].items()}
        self.head = self.task.head(self.meta)
        shape = self.session.get_inputs()[0].shape
        self.batch = shape[0] if isinstance(shape[0], int) else None
        self.size = tuple(shape[2:]) if all(isinstance(s, int) for s in shape[2:]) else None

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def precision(self) -> str:
        return str(self.meta.get("precision", "fp32"))

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = images.detach().to("cpu", torch.float32).contiguous().numpy()
        if self.size is not None and tuple(x.shape[2:]) != self.size:
            raise ExportError(f"{self.path.name} was exported for input {self.size} (no dynamic "
                              f"size); got {tuple(x.shape[2:])}: use imgsz={self.size[0]} or "
                              "export with dynamic=True")
        if self.batch is None or x.shape[0] == self.batch:
            outs = self.session.run(None, {self.input_name: x})
            return [torch.from_numpy(o).float() for o in outs]
        chunks = []
        for i in range(0, x.shape[0], self.batch):
            part = x[i:i + self.batch]
            n = part.shape[0]
            if n < self.batch:
                part = np.concatenate([part, np.zeros((self.batch - n, *part.shape[1:]), part.dtype)])
            chunks.append([o[:n] for o in self.session.run(None, {self.input_name: part})])
        return [torch.from_numpy(np.concatenate(o)).float() for o in zip(*chunks, strict=True)]

    @contextlib.contextmanager
    def running(self) -> Iterator[OnnxBackend]:
        yield self

    def __repr__(self) -> str:
        return f"OnnxBackend({str(self.path)!r}, {self.precision}, task={self.task.name})"
