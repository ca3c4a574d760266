"""``export_model``: a PyTorch model -> a checked ONNX file (FP32, FP16 or INT8) with metadata.

Pipeline: ``torch.onnx.export(..., dynamo=True)`` (the ``torch.export``-based exporter, the
default and maintained path since torch 2.9; the TorchScript exporter is deprecated and warns
that it will be removed) -> FP16 (the model is exported in half, inputs and outputs FP32) or
INT8 (``mixprec.export.quantize``) -> metadata -> ``onnx.checker`` -> the agreement check
through onnxruntime -> the file is moved into place. A file that fails a check is never left at
the requested path: it is kept beside it as ``*.failed.onnx`` and ``ExportError`` says why.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from mixprec.export.config import ExportConfig, ExportError
from mixprec.export.metadata import set_metadata
from mixprec.export.tasks import ExportTask, task_for_model

__all__ = ["TOLERANCE", "export_model", "max_relative_error"]

# Largest |onnxruntime - PyTorch FP32| over an output, relative to that output's largest |value|.
# FP32: the same math in a different order (Conv+BN folded, other kernels). FP16: 11-bit
# mantissa through ~30 layers. INT8 is judged by the task's accuracy instead (INT8_MAX_DROP).
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}
INT8_MAX_DROP = 0.01  # largest drop of the task's score (mAP50-95, Dice) of INT8 vs FP32 (ONNX)
CHECK_IMAGES = 200  # the INT8 check scores at most this many val images (evenly spaced)


def _outputs(out: Any) -> list[torch.Tensor]:
    """A model's outputs as a list (a detector returns a list of maps, the U-Net one tensor)."""
    return [out] if isinstance(out, torch.Tensor) else list(out)


class _Half(torch.nn.Module):
    """The model in FP16 between an FP32 input cast and FP32 output casts."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model.half()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [o.float() for o in _outputs(self.model(x.half()))]


def max_relative_error(got: list[np.ndarray], ref: list[np.ndarray]) -> float:
    """max over outputs of max|got - ref| / max|ref| (FP64)."""
    errs = [np.abs(g.astype(np.float64) - r).max() / max(np.abs(r).max(), 1e-12)
            for g, r in zip(got, ref, strict=True)]
    return float(max(errs))


def _default_path(source: str | None, precision: str) -> Path:
    src = Path(source) if source else Path("model.pt")
    suffix = {"fp32": "", "fp16": "_fp16", "int8": "_int8"}[precision]
    folder = src.parent if src.suffix == ".pt" else Path.cwd()
    return folder / f"{src.stem}{suffix}.onnx"


def _torch_to_onnx(model: torch.nn.Module, task: ExportTask, cfg: ExportConfig,
                   imgsz: tuple[int, ...], stride: int, names: list[str]) -> onnx.ModelProto:
    """Trace ``model`` with torch's exporter; the exporter's progress lines are not printed."""
    batch = max(cfg.batch, 2) if cfg.dynamic else cfg.batch  # torch.export specialises size 1
    x = task.example_input(getattr(model, "model", model), imgsz, batch)
    dynamic = task.dynamic_shapes(imgsz, stride) if cfg.dynamic else None
    with contextlib.redirect_stdout(io.StringIO()):
        program = torch.onnx.export(model, (x,), None, dynamo=True, opset_version=cfg.opset,
                                    input_names=["images"], output_names=names,
                                    dynamic_shapes=dynamic, optimize=cfg.simplify, verbose=False)
    return program.model_proto


def _save(model: onnx.ModelProto, path: Path) -> None:
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path), full_check=True)


def _check_numerics(path: Path, model: torch.nn.Module, task: ExportTask, cfg: ExportConfig,
                    imgsz: tuple[int, ...], stride: int) -> dict[str, Any]:
    """Relative error of the ONNX outputs against the FP32 PyTorch model on seeded inputs (and
    on a second batch and size when the export is dynamic)."""
    from mixprec.export.backend import session

    sess = session(path, "cpu", threads=1)
    shapes = [(cfg.batch, imgsz)]
    if cfg.dynamic:
        shapes.append((cfg.batch + 1, tuple(s + (i + 1) * stride for i, s in enumerate(imgsz))))
    tol = TOLERANCE[cfg.precision]
    worst = 0.0
    for b, size in shapes:
        x = task.example_input(model, size, b)
        with torch.no_grad():
            ref = [o.float().numpy() for o in _outputs(model(x))]
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
        err = max_relative_error(got, ref)
        worst = max(worst, err)
        if not err <= tol:
            raise ExportError(f"{cfg.precision} ONNX outputs differ from PyTorch FP32 by {err:.3g} "
                              f"(relative, input {'x'.join(map(str, (b, *size)))}; allowed {tol:g})")
    return {"max_rel_err": worst, "tolerance": tol, "inputs": [[b, *s] for b, s in shapes]}


def _check_int8(int8: Path, fp32: Path, task: ExportTask, cfg: ExportConfig,
                imgsz: tuple[int, ...], n_images: int) -> dict[str, Any]:
    """The task's score (mAP50-95, Dice) of the INT8 and the FP32 ONNX model on the same val
    images (segment3d: the volumes of those tiles). Check keys: ``<key>_fp32``, ``<key>_int8``
    with ``key`` the task's score (``map``, ``dice``)."""
    from mixprec.export.backend import OnnxBackend
    from mixprec.export.quantize import calibration_indices

    idx = calibration_indices(n_images, min(1.0, CHECK_IMAGES / n_images))
    s32 = task.score(OnnxBackend(fp32), cfg.data, imgsz, idx, cfg.datasets_dir)
    s8 = task.score(OnnxBackend(int8), cfg.data, imgsz, idx, cfg.datasets_dir)
    key, name = task.score_columns[0][0], task.score_name
    drop = s32["score"] - s8["score"]
    result = {"images": len(idx), "unit": getattr(task, "input_unit", "images"), "score": name,
              f"{key}_fp32": s32["score"], f"{key}_int8": s8["score"], "drop": drop,
              "max_drop": INT8_MAX_DROP}
    if not drop <= INT8_MAX_DROP:
        hint = "/".join(k for k in task.keep_float if k != "none")
        raise ExportError(f"INT8 {name} {s8['score']:.4f} is {drop:.4f} below FP32 "
                          f"{s32['score']:.4f} on {len(idx)} val images (allowed {INT8_MAX_DROP}); "
                          f"try keep_float={hint}, a larger fraction=, or check=False to keep it")
    return result


def export_model(model: torch.nn.Module, ckpt: dict[str, Any] | None = None,
                 source: str | None = None, **kwargs: Any) -> Path:
    """Export ``model`` (its checkpoint dict ``ckpt`` supplies the training args) with the keys
    of ``ExportConfig`` (``format``, ``half``, ``int8``, ``dynamic``, ``imgsz``, ``batch``,
    ``data``, ``fraction``, ``keep_float``, ``opset``, ``simplify``, ``check``, ``file``);
    returns the path of the checked ``.onnx``. Runs on the CPU; raises ``ExportError``."""
    cfg = ExportConfig.from_kwargs(**kwargs)
    task = task_for_model(model)
    args = (ckpt or {}).get("args", {})
    if cfg.keep_float is not None and cfg.keep_float not in task.keep_float:
        raise ExportError(f"keep_float={cfg.keep_float!r} is not for {task.name}; use one of "
                          f"{', '.join(task.keep_float)}")
    model = copy.deepcopy(model).float().eval().cpu()
    imgsz = task.input_size(cfg.imgsz, model, args)
    stride = task.stride(model)
    if any(s % stride for s in imgsz):
        raise ExportError(f"imgsz={imgsz}: sizes must be multiples of the stride {stride}")
    out = Path(cfg.file) if cfg.file else _default_path(source, cfg.precision)
    out.parent.mkdir(parents=True, exist_ok=True)
    names = task.output_names(model)
    meta: dict[str, Any] = {
        "mixprec": _version(), "task": task.name, **task.metadata(model, ckpt),
        "imgsz": list(imgsz), task.size_key: list(imgsz), "batch": cfg.batch, "dynamic": cfg.dynamic,
        "precision": cfg.precision, "opset": cfg.opset,
        "trained_precision": args.get("precision", "unknown" if ckpt else "untrained"),
        "data": args.get("data"), "source": source, "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "inputs": ["images"], "outputs": names,
    }
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out.parent) as tmp:
        work = Path(tmp) / "model.onnx"
        proto = _torch_to_onnx(_Half(copy.deepcopy(model)).eval() if cfg.half else model, task,
                               cfg, imgsz, stride, names)
        if cfg.int8:
            meta = {**meta, "precision": "fp32"}
            fp32 = Path(tmp) / "fp32.onnx"
            set_metadata(proto, meta)
            _save(proto, fp32)
            meta = {**meta, "precision": "int8", "int8": _quantize(fp32, work, proto, task, cfg,
                                                                   imgsz, meta)}
            proto = onnx.load(str(work))
        set_metadata(proto, meta)
        _save(proto, work)
        if cfg.check:
            try:
                if cfg.int8:
                    n = len(task.images(cfg.data, imgsz, cfg.datasets_dir, meta))
                    meta["check"] = _check_int8(work, fp32, task, cfg, imgsz, n)
                else:
                    meta["check"] = _check_numerics(work, model, task, cfg, imgsz, stride)
            except ExportError as err:
                failed = out.with_suffix(".failed.onnx")
                os.replace(work, failed)
                raise ExportError(f"export check failed, model kept as {failed}: {err}") from err
            set_metadata(proto, meta)
            _save(proto, work)
        os.replace(work, out)
    return out


def _quantize(fp32: Path, out: Path, proto: onnx.ModelProto, task: ExportTask, cfg: ExportConfig,
              imgsz: tuple[int, ...], meta: dict[str, Any]) -> dict[str, Any]:
    from mixprec.export.quantize import CalibrationReader, calibration_indices, quantize_int8

    images = task.images(cfg.data, imgsz, cfg.datasets_dir, meta)
    if len(images) == 0:
        raise ExportError(f"int8: data={cfg.data} has no val images to calibrate on")
    idx = calibration_indices(len(images), cfg.fraction)
    reader = CalibrationReader(images, idx, "images", cfg.batch)
    keep_float = cfg.keep_float or task.keep_float[0]
    keep = task.float_nodes(proto, keep_float)
    info = quantize_int8(fp32, out, reader, keep)
    return {"data": cfg.data, "split": "val", "fraction": cfg.fraction,
            "keep_float": keep_float, **info}


def _version() -> str:
    from mixprec._version import __version__

    return __version__
