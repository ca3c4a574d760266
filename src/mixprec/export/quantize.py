"""INT8 post-training static quantization with onnxruntime's tools (``quantize_static``).

QDQ format (QuantizeLinear/DequantizeLinear pairs around each quantized op, which onnxruntime's
CPU and CUDA/TensorRT providers fuse into integer kernels), unsigned 8-bit activations (per
tensor, asymmetric, MinMax ranges from calibration) and signed 8-bit weights per output channel
(symmetric): U8S8. Why not S8S8 (onnxruntime's documented default): with onnxruntime 1.32's x86
CPU provider, U8S8 QDQ fuses into QLinearConv for 66 of det-n's 69 convs, S8S8 for 3 (the rest
run as DequantizeLinear -> FP32 Conv -> QuantizeLinear, slower than FP32). U8S8 can saturate on
x86 CPUs without VNNI (onnxruntime's note); this CPU has VNNI. Nodes listed by the task hook
stay FP32.

Calibration runs the FP32 ONNX model on ``fraction`` of the val images, evenly spaced over the
sorted split (``calibration_indices``), preprocessed exactly as validation preprocesses them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

from mixprec.export.tasks import TaskImages

__all__ = ["CalibrationReader", "calibration_indices", "quantize_int8"]


def calibration_indices(n: int, fraction: float) -> list[int]:
    """``max(1, round(fraction * n))`` indices of ``n`` images, evenly spaced, first and last
    included (fraction=1: all of them)."""
    k = min(n, max(1, round(fraction * n)))
    return sorted({int(i) for i in np.linspace(0, n - 1, k).round()})


class CalibrationReader(CalibrationDataReader):
    """Feeds the images ``indices`` of ``images`` to onnxruntime's calibrator in batches of
    ``batch`` (a fixed-batch model: the last batch is padded by repeating its last image).
    ``used`` lists the file names fed so far, in order."""

    def __init__(self, images: TaskImages, indices: Sequence[int], input_name: str, batch: int = 1):
        self.images, self.indices, self.input_name, self.batch = images, list(indices), input_name, batch
        self.used: list[str] = []
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self.indices):
            return None
        chunk = self.indices[self._next:self._next + self.batch]
        self._next += len(chunk)
        self.used += [self.images.names[i] for i in chunk]
        x = np.stack([self.images.get(i).numpy() for i in chunk])
        if len(chunk) < self.batch:
            x = np.concatenate([x, np.repeat(x[-1:], self.batch - len(chunk), 0)])
        return {self.input_name: x.astype(np.float32)}

    def rewind(self) -> None:
        self._next = 0


def quantize_int8(fp32: str | Path, out: str | Path, reader: CalibrationReader,
                  keep_float: Sequence[str], options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Quantize the FP32 ONNX ``fp32`` into ``out`` (QDQ, U8S8, per-channel weights), nodes in
    ``keep_float`` excluded. ``options``: ``quantize_static`` arguments that replace these
    settings (``benchmarks/int8_profile.py`` compares some). Returns what was done, for the
    model's metadata."""
    kwargs: dict[str, Any] = dict(quant_format=QuantFormat.QDQ, per_channel=True,
                                  activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                  nodes_to_exclude=list(keep_float),
                                  calibrate_method=CalibrationMethod.MinMax)
    kwargs.update(options or {})
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its "consider pre-processing" advice: the graph is optimised
    try:
        quantize_static(str(fp32), str(out), reader, **kwargs)
    finally:
        root.setLevel(level)
    return {"format": "QDQ", "activations": "uint8 per tensor (MinMax calibration)",
            "weights": "int8 per output channel", "float_nodes": list(keep_float),
            "images": list(reader.used)}
