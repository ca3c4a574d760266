"""Pictures of a run: annotated images (PIL) and ``results.png`` (matplotlib, Agg backend)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mixprec.io import atomic_write

__all__ = ["annotate", "plot_results", "save_image"]

_COLORS = [(255, 56, 56), (50, 205, 50), (0, 114, 255), (255, 178, 29), (207, 0, 255),
           (0, 204, 204), (255, 112, 31), (146, 204, 23), (61, 219, 134), (132, 56, 255)]


def annotate(image: np.ndarray, boxes: np.ndarray, classes: np.ndarray, names: dict[int, str],
             scores: np.ndarray | None = None) -> Image.Image:
    """Draw xyxy pixel ``boxes`` with class names (and scores) on a uint8 HWC RGB image."""
    im = Image.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(im)
    for k, (box, c) in enumerate(zip(boxes, classes, strict=True)):
        color = _COLORS[int(c) % len(_COLORS)]
        draw.rectangle([float(v) for v in box], outline=color, width=2)
        text = names.get(int(c), str(int(c)))
        if scores is not None:
            text += f" {float(scores[k]):.2f}"
        x, y = float(box[0]), max(float(box[1]) - 10, 0)
        draw.rectangle([x, y, x + 6 * len(text), y + 10], fill=color)
        draw.text((x + 1, y), text, fill=(255, 255, 255))
    return im


def save_image(im: Image.Image, path: str | Path) -> Path:
    """Write a PIL image atomically (format from the suffix)."""
    fmt = "JPEG" if Path(path).suffix.lower() in (".jpg", ".jpeg") else "PNG"
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return atomic_write(path, lambda f: f.write(buf.getvalue()))


def plot_results(csv_path: str | Path, out: str | Path | None = None) -> Path:
    """One small panel per numeric column of ``results.csv`` (except epoch/time), vs epoch."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    csv_path = Path(csv_path)
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    cols = [c for c in (rows[0] if rows else {}) if c not in ("epoch", "time")]
    n = max(len(cols), 1)
    ncol = 5
    nrow = (n + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(3 * ncol, 2.4 * nrow), squeeze=False)
    epochs = [int(r["epoch"]) for r in rows]
    for ax, c in zip(axes.ravel(), cols, strict=False):
        ys = [float(r[c]) if r[c] not in ("", "nan") else np.nan for r in rows]
        ax.plot(epochs, ys, marker=".")
        ax.set_title(c, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(cols):]:
        ax.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    out = Path(out) if out else csv_path.with_name("results.png")
    return atomic_write(out, lambda f: f.write(buf.getvalue()))
