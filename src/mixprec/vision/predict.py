"""Prediction on an image path, a folder of images, or a numpy array (HWC, RGB, uint8)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mixprec.vision.backend import Backend, as_backend
from mixprec.vision.data.augment import letterbox, read_rgb
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


def _sources(source: Any) -> list[tuple[str, Any]]:
    """(name, array or path) per image; files are read later, one at a time (``_read``)."""
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
        return [(str(f), f) for f in files]
    if path.is_file():
        return [(str(path), path)]
    raise FileNotFoundError(f"predict source not found: {source}")


def _read(item: Any) -> np.ndarray:
    """An array as it is; a file as RGB with its EXIF orientation applied (as in training)."""
    if isinstance(item, np.ndarray):
        return item
    return np.asarray(read_rgb(item))


def predict(model: torch.nn.Module | Backend, source: Any, imgsz: int = 640, conf: float = 0.25,
            iou: float = 0.7, max_det: int = 300, save_dir: Path | None = None) -> list[Detections]:
    """Detect objects in ``source``; with ``save_dir``, also write annotated images there.
    Files are read one at a time with their EXIF orientation applied; in a folder or list an
    unreadable file is skipped with a warning (counted at the end); a single unreadable file
    raises ValueError. ``model``: a module (runs FP32 on its device) or a backend
    (``mixprec.vision.backend``, e.g. an ONNX model); one host synchronisation per image (NMS)."""
    with as_backend(model) as run:
        return _predict(run, source, imgsz, conf, iou, max_det, save_dir)


def _predict(run: Backend, source: Any, imgsz: int, conf: float, iou: float, max_det: int,
             save_dir: Path | None) -> list[Detections]:
    device, head = run.device, run.head
    results: list[Detections] = []
    skipped: list[str] = []
    sources = _sources(source)
    for k, (path, item) in enumerate(sources):
        try:
            img = _read(item)
        except Exception as err:  # any decoder error: skip this file, go on
            if len(sources) == 1:
                raise ValueError(f"cannot read image {path}: {type(err).__name__}: {err}") from None
            print(f"WARNING skipped {path}: unreadable image ({type(err).__name__}: {err})")
            skipped.append(path)
            continue
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
    if skipped:
        print(f"predict: {len(results)} images predicted, {len(skipped)} unreadable skipped")
    return results
