"""Prediction on an image path, a folder of images, or a numpy array (HWC, RGB, uint8)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mixprec.vision.backend import Backend, as_backend
from mixprec.vision.data.augment import letterbox
from mixprec.vision.data.config import IMAGE_SUFFIXES
from mixprec.vision.plotting import annotate, save_image
from mixprec.vision.postprocess import non_max_suppression, scale_boxes

__all__ = ["Detections", "predict"]


@dataclass
class Detections:
    """Detections of one image, in its original pixels: ``boxes`` (n, 4) xyxy FP32,
    ``scores`` (n,), ``classes`` (n,) int64; ``names`` maps class ids to names."""

    path: str
    image: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    names: dict[int, str]

    def __len__(self) -> int:
        return len(self.boxes)

    def plot(self) -> Image.Image:
        """The image with its boxes, class names and scores drawn."""
        return annotate(self.image, self.boxes, self.classes, self.names, self.scores)

    def __repr__(self) -> str:
        return f"Detections({self.path!r}, {len(self)} boxes)"


def _sources(source: Any) -> list[tuple[str, np.ndarray]]:
    if isinstance(source, np.ndarray):
        if source.ndim != 3 or source.shape[2] != 3:
            raise ValueError(f"array source must be HWC RGB with 3 channels, got {source.shape}")
        return [("array", source.astype(np.uint8))]
    if isinstance(source, (list, tuple)):
        return [s for item in source for s in _sources(item)]
    path = Path(str(source))
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"no images in folder {path}")
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"predict source not found: {source}")
    out = []
    for f in files:
        with Image.open(f) as im:
            out.append((str(f), np.asarray(im.convert("RGB"))))
    return out


def predict(model: torch.nn.Module | Backend, source: Any, imgsz: int = 640, conf: float = 0.25,
            iou: float = 0.7, max_det: int = 300, save_dir: Path | None = None) -> list[Detections]:
    """Detect objects in ``source``; with ``save_dir``, also write annotated images there.
    ``model``: a module (runs FP32 on its device) or a backend (``mixprec.vision.backend``,
    e.g. an ONNX model); one host synchronisation per image (NMS)."""
    with as_backend(model) as run:
        return _predict(run, source, imgsz, conf, iou, max_det, save_dir)


def _predict(run: Backend, source: Any, imgsz: int, conf: float, iou: float, max_det: int,
             save_dir: Path | None) -> list[Detections]:
    device, head = run.device, run.head
    results = []
    for k, (path, img) in enumerate(_sources(source)):
        boxed, r, pad = letterbox(img, imgsz)
        x = torch.from_numpy(boxed).permute(2, 0, 1)[None].to(device).float() / 255
        det = non_max_suppression(run(x), head.stride, head.reg_max, head.nc, conf, iou,
                                  max_det)[0].cpu()
        h, w = img.shape[:2]
        boxes = scale_boxes(det[:, :4], (r, pad), (w, h))
        res = Detections(path, img, boxes.numpy(), det[:, 4].numpy(), det[:, 5].long().numpy(),
                         dict(run.names))
        if save_dir is not None:
            name = Path(path).name if path != "array" else f"image{k}.jpg"
            save_image(res.plot(), Path(save_dir) / name)
        results.append(res)
    return results
