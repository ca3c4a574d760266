"""Deployment: ONNX export (FP32, FP16, INT8 post-training quantization) and the onnxruntime
backend that ``val``/``predict`` use for ``.onnx`` files.

    from mixprec import Model
    path = Model("best.pt").export(format="onnx", int8=True, data="shapes.yaml", fraction=0.25)
    Model(path).val(data="shapes.yaml")

Task-specific code lives in ``mixprec.export.tasks`` (one hook class per task); everything else
here knows no task. Library only: no argv, no environment.
"""

from mixprec.export.backend import OnnxBackend
from mixprec.export.config import EXPORT_KEYS, ExportConfig, ExportError
from mixprec.export.exporter import TOLERANCE, export_model, max_relative_error
from mixprec.export.metadata import MetadataError, read_metadata

__all__ = ["EXPORT_KEYS", "TOLERANCE", "ExportConfig", "ExportError", "MetadataError",
           "OnnxBackend", "export_model", "max_relative_error", "read_metadata"]
