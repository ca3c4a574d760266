"""Scanning and checking YOLO labels, with a cache so that a second run starts fast.

Every image is decoded once, fully (so a truncated JPEG is found here, not mid-training; its size
is taken after its EXIF orientation, as the loaders apply it) and its label file parsed. A file with a problem
(malformed line, class id out of range, coordinate outside [0, 1], duplicate rows, unreadable
or missing image) is reported once with the reason and skipped; a summary is printed and the
run goes on. An empty or absent label file makes a background image. The scan result is cached
in ``<labels folder>.mixprec.cache`` (JSON), keyed by the paths, sizes and modification times.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from mixprec.io import atomic_write_text
from mixprec.vision.data.config import label_path

__all__ = ["LabelIndex", "parse_label_text", "scan"]

_CACHE_VERSION = 2  # 2: full decode, EXIF-oriented sizes, non-finite values rejected


def parse_label_text(text: str, nc: int) -> np.ndarray:
    """Rows ``class cx cy w h`` -> (N, 5) float32 array. Raises ValueError with the reason:
    malformed line, a value that is not a finite number (nan, inf, 1e400), class id out of range,
    coordinates outside [0, 1] or non-positive size, duplicate rows; always with the line number."""
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 5:
            raise ValueError(f"line {n}: expected 5 values 'class cx cy w h', got {len(parts)}")
        try:
            values = [float(v) for v in parts]
        except ValueError:
            raise ValueError(f"line {n}: not a number in {line.strip()!r}") from None
        if not all(np.isfinite(values)):
            raise ValueError(f"line {n}: not a finite number (nan/inf) in {line.strip()!r}")
        cls = values[0]
        if cls != int(cls) or not 0 <= cls < nc:
            raise ValueError(f"line {n}: class id {parts[0]} out of range 0..{nc - 1}")
        if not all(np.isfinite(values)) or min(values[1:]) < 0 or max(values[1:]) > 1:
            raise ValueError(f"line {n}: coordinates outside [0, 1]: {' '.join(parts[1:])}")
        if values[3] <= 0 or values[4] <= 0:
            raise ValueError(f"line {n}: box width and height must be > 0")
        rows.append(values)
    arr = np.array(rows, dtype=np.float32).reshape(-1, 5)
    if len(np.unique(arr, axis=0)) != len(arr):
        raise ValueError("duplicate rows")
    return arr


@dataclass
class LabelIndex:
    """The usable images of one split: paths, (width, height), labels (N, 5) per image, and the
    skipped files with their reasons."""

    images: list[Path] = field(default_factory=list)
    shapes: list[tuple[int, int]] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    backgrounds: int = 0

    @property
    def instances(self) -> int:
        return sum(len(x) for x in self.labels)


def _check(image: Path, nc: int) -> tuple[tuple[int, int], np.ndarray]:
    if not image.is_file():
        raise ValueError("image file missing")
    try:
        with Image.open(image) as im:
            im.verify()  # structure (PNG CRCs, ...)
        with Image.open(image) as im:
            im.load()  # every pixel: a truncated file fails here
            size = ImageOps.exif_transpose(im).size if _exif_rotates(im) else im.size
    except Exception as err:
        raise ValueError(f"unreadable image ({type(err).__name__}: {err})") from None
    lp = label_path(image)
    text = lp.read_text() if lp.is_file() else ""
    try:
        return size, parse_label_text(text, nc)
    except ValueError as err:
        raise ValueError(f"label {lp}: {err}") from None


def _exif_rotates(im: Image.Image) -> bool:
    """Whether the image's EXIF orientation (tag 0x0112) turns or flips it."""
    return im.getexif().get(0x0112, 1) not in (1, None)


def _fingerprint(images: list[Path], nc: int) -> str:
    h = hashlib.sha256(f"{_CACHE_VERSION}:{nc}".encode())
    for p in images:
        for q in (p, label_path(p)):
            st = q.stat() if q.exists() else None
            h.update(f"{q}:{st.st_size if st else -1}:{st.st_mtime_ns if st else -1};".encode())
    return h.hexdigest()


def scan(images: list[Path], nc: int, cache_path: Path | None = None,
         prefix: str = "") -> LabelIndex:
    """Check every image and label, print the skipped files and a summary, use/refresh the cache."""
    key = _fingerprint(images, nc)
    data = None
    if cache_path is not None and cache_path.is_file():
        try:
            data = json.loads(cache_path.read_text())
            if data.get("key") != key:
                data = None
        except (OSError, ValueError):
            data = None
    cached = data is not None
    if data is None:
        entries = []
        for image in images:
            try:
                size, labels = _check(image, nc)
                entries.append({"image": str(image), "size": size, "labels": labels.tolist()})
            except ValueError as err:
                entries.append({"image": str(image), "error": str(err)})
        data = {"key": key, "entries": entries}
        if cache_path is not None:
            try:
                atomic_write_text(cache_path, json.dumps(data))
            except OSError as err:
                print(f"{prefix}WARNING cache not written to {cache_path}: {err}")
    index = LabelIndex()
    for e in data["entries"]:
        if "error" in e:
            index.skipped[e["image"]] = e["error"]
            continue
        index.images.append(Path(e["image"]))
        index.shapes.append(tuple(e["size"]))
        lab = np.array(e["labels"], dtype=np.float32).reshape(-1, 5)
        index.labels.append(lab)
        index.backgrounds += len(lab) == 0
    for image, reason in index.skipped.items():
        print(f"{prefix}WARNING skipped {image}: {reason}")
    print(f"{prefix}{'cached ' if cached else 'scanned '}{len(images)} images: "
          f"{len(index.images)} used ({index.instances} instances, {index.backgrounds} "
          f"backgrounds), {len(index.skipped)} skipped")
    return index
