"""Makers of bad files for the fault suite: truncated and EXIF-rotated JPEGs, corrupt checkpoints,
data YAMLs with one thing wrong."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def noise_jpeg(path: Path, w: int = 64, h: int = 48, seed: int = 0,
               exif_orientation: int | None = None) -> Path:
    """A JPEG of random pixels (so that it has many bytes to cut), optionally with an EXIF
    Orientation tag."""
    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    kwargs = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, quality=95, **kwargs)
    return path


def truncate(path: Path, keep: float | int) -> Path:
    data = path.read_bytes()
    n = keep if isinstance(keep, int) else int(len(data) * keep)
    path.write_bytes(data[:n])
    return path


class Evil:
    """A pickle that would run code when loaded without weights_only."""

    def __reduce__(self):
        return (os.system, ("echo this-should-never-run",))


def evil_checkpoint(path: Path) -> Path:
    buf = io.BytesIO()
    torch.save({"model": Evil()}, buf)
    path.write_bytes(buf.getvalue())
    return path
