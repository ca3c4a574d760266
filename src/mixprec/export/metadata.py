"""The metadata an exported model carries (ONNX ``metadata_props``, every value JSON text).

Generic keys (every task): ``mixprec`` (version that wrote it), ``task``, ``names``, ``imgsz``
[h, w], ``batch``, ``dynamic``, ``precision`` (fp32/fp16/int8: what the file computes in),
``trained_precision`` (the policy the checkpoint was trained with, e.g. ``bf16-mixed``),
``data``, ``source``, ``date``, ``inputs``/``outputs`` (names); int8 adds ``int8`` (calibration
images, kept-float nodes). The task hook adds its own (detection: ``stride``, ``reg_max``, ``nc``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx

__all__ = ["MetadataError", "read_metadata", "set_metadata"]


class MetadataError(ValueError):
    """An ONNX file without mixprec's metadata (exported elsewhere), or not an ONNX file."""


def set_metadata(model: onnx.ModelProto, meta: dict[str, Any]) -> None:
    """Replace ``model``'s metadata_props with ``meta`` (values written as JSON)."""
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata dict of an exported ``.onnx`` (graph weights are not loaded). Raises
    ``MetadataError`` for an ONNX file that mixprec did not write."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError and others for a non-ONNX file
        raise MetadataError(f"{path} is not a readable ONNX model ({type(err).__name__}: {err})") \
            from err
    props = {p.key: p.value for p in model.metadata_props}
    if "mixprec" not in props or "task" not in props:
        found = ", ".join(sorted(props)) or "none"
        raise MetadataError(
            f"{path} has no mixprec metadata (task, names, stride, imgsz; found keys: {found}); "
            "mixprec can only run ONNX models it exported: mixprec export model=best.pt")
    try:
        return {k: json.loads(v) for k, v in props.items()}
    except json.JSONDecodeError as err:
        raise MetadataError(f"{path}: metadata is not mixprec's JSON ({err})") from err
