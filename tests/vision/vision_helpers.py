"""Helpers for the vision tests: a tiny model YAML and a tiny YOLO-format dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

TINY_MODEL = str(Path(__file__).with_name("det-t.yaml"))


def make_tiny_dataset(root: Path, n: int = 8, size: int = 64, seed: int = 0) -> Path:
    """``n`` images of ``size`` px with 1-2 large circles/squares on plain grey; train == val."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        im = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(90, 160, 3)))
        d = ImageDraw.Draw(im)
        rows = []
        k = int(rng.integers(1, 3))
        for j in range(k):
            cls = int(rng.integers(2))
            r = float(rng.uniform(0.15, 0.22)) * size
            cx = (0.3 + 0.4 * j if k == 2 else rng.uniform(0.3, 0.7)) * size
            cy = float(rng.uniform(0.3, 0.7)) * size
            box = [cx - r, cy - r, cx + r, cy + r]
            color = (230, 30, 30) if cls == 0 else (30, 30, 230)
            (d.ellipse if cls == 0 else d.rectangle)(box, fill=color)
            rows.append(f"{cls} {cx / size:.6f} {cy / size:.6f} {2 * r / size:.6f} {2 * r / size:.6f}")
        im.save(root / "images" / f"{i}.png")
        (root / "labels" / f"{i}.txt").write_text("\n".join(rows) + "\n")
    yaml_path = root / "tiny.yaml"
    yaml_path.write_text(f"path: {root}\ntrain: images\nval: images\nnames: [circle, square]\n")
    return yaml_path

