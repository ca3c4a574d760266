"""``ExportConfig``: the export keys (named as in Ultralytics' export), validated once."""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass
from typing import Any

from mixprec.keys import Key

__all__ = ["EXPORT_KEYS", "FORMATS", "KEEP_FLOAT", "ExportConfig", "ExportError"]

FORMATS = ("onnx",)
# what stays FP32 in an INT8 model; each task allows some of these (tasks.py)
KEEP_FLOAT = ("dfl", "box", "norm", "none")
MIN_OPSET, DEFAULT_OPSET = 17, 18  # 18: torch's exporter's own opset (17 is converted down)


class ExportError(ValueError):
    """An export that cannot be done, or whose result failed its checks (the message says why
    and what to do)."""


EXPORT_KEYS: dict[str, Key] = {
    "model": Key("runs/detect/train/weights/best.pt", "a .pt checkpoint (or a model YAML)"),
    "format": Key("onnx", "export format: onnx"),
    "imgsz": Key(None, "input size (int, h,w, or x,y,z for segment3d; multiples of the stride); None: "
                       "the training size (segment3d: the training patch)"),
    "batch": Key(1, "batch size of the exported input (the dynamic axis's example with dynamic=True)"),
    "dynamic": Key(False, "dynamic batch and image size"),
    "half": Key(False, "FP16 weights and compute (inputs and outputs stay FP32)"),
    "int8": Key(False, "INT8 static quantization (QDQ, per-channel weights); needs data="),
    "data": Key(None, "data YAML whose val images calibrate int8 (and check it)"),
    "fraction": Key(1.0, "fraction of the val images used for int8 calibration (evenly spaced)"),
    "keep_float": Key(None, "int8: what stays FP32; None: the task's default. detect: dfl (default; "
                            "box-distribution conv + output concat), box (the whole box branch), none; "
                            "segment3d: norm (default; InstanceNorm), none"),
    "opset": Key(None, f"ONNX opset (>= {MIN_OPSET}); None: {DEFAULT_OPSET}"),
    "simplify": Key(True, "optimise the graph (onnxscript: constant folding, Conv+BN fusion)"),
    "check": Key(True, "compare outputs with PyTorch through onnxruntime (int8: mAP on val)"),
    "file": Key(None, "output path; None: next to the checkpoint (best.onnx, best_fp16.onnx, "
                      "best_int8.onnx)"),
    "datasets_dir": Key("datasets", "where built-in datasets are generated"),
}


def _imgsz(value: Any) -> tuple[int, ...] | None:
    """``imgsz=`` as given: one size, h,w or (3D) x,y,z -> a tuple of 1 to 3 ints; the task
    turns it into its input size (``tasks.*.input_size``)."""
    if value is None:
        return None
    items = value if isinstance(value, (list, tuple)) else \
        [v for v in str(value).replace("x", ",").split(",") if v.strip()]
    if not 1 <= len(items) <= 3:
        raise ExportError(f"imgsz={value!r}: give one size, h,w, or x,y,z (3D)")
    try:
        return tuple(int(v) for v in items)
    except ValueError as err:
        raise ExportError(f"imgsz={value!r}: sizes must be integers") from err


@dataclass(frozen=True)
class ExportConfig:
    """What to export; ``imgsz`` is the size as given (1 to 3 ints) or None (the checkpoint's
    training size); ``keep_float`` None: the task's default."""

    format: str = "onnx"
    imgsz: tuple[int, ...] | None = None
    batch: int = 1
    dynamic: bool = False
    half: bool = False
    int8: bool = False
    data: str | None = None
    fraction: float = 1.0
    keep_float: str | None = None
    opset: int = DEFAULT_OPSET
    simplify: bool = True
    check: bool = True
    file: str | None = None
    datasets_dir: str = "datasets"

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ExportError(f"format={self.format!r} is not supported; supported: "
                              f"{', '.join(FORMATS)}")
        if self.batch < 1:
            raise ExportError(f"batch={self.batch}: use a positive batch size")
        if self.half and self.int8:
            raise ExportError("half=True and int8=True: choose one (int8 keeps FP32 where it "
                              "does not quantize)")
        if self.int8 and not self.data:
            raise ExportError("int8=True needs data=... (a data YAML whose val images calibrate "
                              "the activation ranges), e.g. data=shapes.yaml")
        if not 0.0 < self.fraction <= 1.0:
            raise ExportError(f"fraction={self.fraction}: use a fraction in (0, 1]")
        if self.keep_float is not None and self.keep_float not in KEEP_FLOAT:
            raise ExportError(f"keep_float={self.keep_float!r}: use one of {', '.join(KEEP_FLOAT)}")
        if self.opset < MIN_OPSET:
            raise ExportError(f"opset={self.opset}: use {MIN_OPSET} or newer")
        if self.imgsz is not None and min(self.imgsz) < 1:
            raise ExportError(f"imgsz={self.imgsz}: use positive sizes")

    @property
    def precision(self) -> str:
        """``fp32``, ``fp16`` or ``int8``: what the exported file computes in."""
        return "int8" if self.int8 else "fp16" if self.half else "fp32"

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> ExportConfig:
        """From export keys (as ``Model.export`` and ``mixprec export`` take them); an unknown
        key raises with the nearest known one. ``model`` is not part of the config."""
        known = set(EXPORT_KEYS) - {"model"}
        for k in kwargs:
            if k not in known:
                close = difflib.get_close_matches(k, sorted(known), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise ExportError(f"unknown export argument '{k}'{hint}")
        kw = {k: v for k, v in kwargs.items() if v is not None or k in ("data", "file")}
        if "format" in kw:
            kw["format"] = str(kw["format"]).lower()
        if "imgsz" in kw:
            kw["imgsz"] = _imgsz(kw["imgsz"])
        for k in ("batch", "opset"):
            if k in kw:
                kw[k] = int(kw[k])
        if "fraction" in kw:
            kw["fraction"] = float(kw["fraction"])
        if kw.get("keep_float") is not None:
            kw["keep_float"] = str(kw["keep_float"]).lower()
        for k in ("data", "file", "datasets_dir"):
            if kw.get(k) is not None:
                kw[k] = str(kw[k])
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
