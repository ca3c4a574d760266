"""Built-in datasets, generated locally on first use (never downloaded), deterministic by seed.

``shapes8``: 8 images (train and val are the same 8, a smoke test in the spirit of coco8: a
working trainer overfits them). ``shapes``: 1,000 train + 200 val images. ``dense`` (many small
objects, busy backgrounds) and ``occlusion`` (large scale range, occlusion): 400 train + 120 val
each, drawn by ``mixprec.vision.data.scenes``. Images are 256x256
RGB JPEGs with textured backgrounds (gradients, stripes, noise) and 1-8 filled shapes of six
classes, from ~10 px to ~140 px, that may overlap (a new shape may cover at most 40% of an
earlier one's box, so every label stays visible). Labels are YOLO ``.txt`` files.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from mixprec.io import atomic_write_text

__all__ = ["BUILTIN", "NAMES", "generate"]

NAMES = ["circle", "square", "triangle", "star", "hexagon", "cross"]
# name -> (train images, val images, seed, generator kind); "same" reuses the train images as val.
# "dense" and "occlusion" are drawn by mixprec.vision.data.scenes.
BUILTIN: dict[str, dict] = {
    "shapes8": {"train": 8, "val": 0, "seed": 8, "same": True, "kind": "shapes"},
    "shapes": {"train": 1000, "val": 200, "seed": 0, "same": False, "kind": "shapes"},
    "dense": {"train": 400, "val": 120, "seed": 1, "same": False, "kind": "dense"},
    "occlusion": {"train": 400, "val": 120, "seed": 2, "same": False, "kind": "occlusion"},
}
SIZE = 256
_VERSION = 1


def _background(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0, c1 = rng.uniform(40, 215, 3), rng.uniform(40, 215, 3)
    t = (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1)) * 0.5 + 0.5
    img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    kind = rng.integers(3)
    if kind == 0:  # stripes
        f, ang = rng.uniform(4, 24), rng.uniform(0, math.pi)
        s = np.sin((xx * math.cos(ang) + yy * math.sin(ang)) * size / f * 2 * math.pi)
        img += (s[..., None] * rng.uniform(10, 35))
    elif kind == 1:  # checker
        f = int(rng.integers(8, 40))
        chk = ((np.arange(size)[:, None] // f + np.arange(size)[None] // f) % 2) * 2 - 1
        img += chk[..., None] * rng.uniform(8, 25)
    img += rng.normal(0, rng.uniform(3, 14), img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _polygon(cls: int, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    if cls == 1:
        n, radii = 4, [r]
    elif cls == 2:
        n, radii = 3, [r]
    elif cls == 3:
        n, radii = 10, [r, r * 0.45]
    elif cls == 4:
        n, radii = 6, [r]
    else:  # cross: 12-gon outline
        a = r * 0.35
        pts = [(-a, -r), (a, -r), (a, -a), (r, -a), (r, a), (a, a), (a, r), (-a, r), (-a, a),
               (-r, a), (-r, -a), (-a, -a)]
        c, s = math.cos(rot), math.sin(rot)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]
    return [(cx + radii[i % len(radii)] * math.cos(rot + 2 * math.pi * i / n),
             cy + radii[i % len(radii)] * math.sin(rot + 2 * math.pi * i / n)) for i in range(n)]


def _overlap_frac(a: tuple, b: tuple) -> float:
    """Fraction of box ``b``'s area covered by box ``a`` (xyxy)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return iw * ih / max((b[2] - b[0]) * (b[3] - b[1]), 1e-9)


def _image(rng: np.random.Generator) -> tuple[Image.Image, list[tuple[int, float, float, float, float]]]:
    img = Image.fromarray(_background(rng))
    draw = ImageDraw.Draw(img)
    boxes: list[tuple] = []
    labels = []
    for _ in range(int(rng.integers(1, 9))):
        for _attempt in range(20):
            cls = int(rng.integers(len(NAMES)))
            r = float(np.exp(rng.uniform(math.log(6), math.log(70))))
            cx, cy = rng.uniform(r * 0.6, SIZE - r * 0.6, 2)
            rot = float(rng.uniform(0, 2 * math.pi))
            pts = [(cx - r, cy - r), (cx + r, cy + r)] if cls == 0 else \
                _polygon(cls, cx, cy, r, rot)
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            box = (max(min(xs), 0), max(min(ys), 0), min(max(xs), SIZE), min(max(ys), SIZE))
            if box[2] - box[0] < 6 or box[3] - box[1] < 6:
                continue
            if any(_overlap_frac(box, old) > 0.4 for old in boxes):
                continue
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            if cls == 0:
                draw.ellipse(pts, fill=color)
            else:
                draw.polygon(pts, fill=color)
            boxes.append(box)
            labels.append((cls, (box[0] + box[2]) / 2 / SIZE, (box[1] + box[3]) / 2 / SIZE,
                           (box[2] - box[0]) / SIZE, (box[3] - box[1]) / SIZE))
            break
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0))))
    return img, labels


def _generator(kind: str) -> tuple[Callable[[np.random.Generator], tuple], list[str]]:
    """The image function and class names of a generator kind."""
    if kind == "shapes":
        return _image, NAMES
    from mixprec.vision.data import scenes  # scenes reuses this module's drawing helpers

    if kind == "dense":
        return scenes.dense_image, scenes.DENSE_NAMES
    return scenes.occlusion_image, scenes.OCCLUSION_NAMES


def _write_split(root: Path, split: str, n: int, seed: int, start: int, kind: str = "shapes") -> None:
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    make = _generator(kind)[0]
    for i in range(start, start + n):
        rng = np.random.default_rng([seed, i])
        img, labels = make(rng)
        img.save(root / "images" / split / f"{i:06d}.jpg", quality=92)
        text = "".join(f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, x, y, w, h in labels)
        (root / "labels" / split / f"{i:06d}.txt").write_text(text)


def generate(name: str, root: str | Path) -> Path:
    """Generate the built-in dataset ``name`` into ``root`` (if not already complete) and return
    the path of its data YAML. Deterministic: same name -> same bytes of labels and images."""
    if name not in BUILTIN:
        raise ValueError(f"no built-in dataset '{name}'; built-in: {', '.join(BUILTIN)}")
    spec = BUILTIN[name]
    root = Path(root)
    yaml_path = root / f"{name}.yaml"
    stamp = root / ".complete"
    if yaml_path.is_file() and stamp.is_file() and stamp.read_text().strip() == str(_VERSION):
        return yaml_path
    print(f"Generating built-in dataset '{name}' in {root} ...")
    _write_split(root, "train", spec["train"], spec["seed"], 0, spec["kind"])
    if not spec["same"]:
        _write_split(root, "val", spec["val"], spec["seed"], spec["train"], spec["kind"])
    val = "images/train" if spec["same"] else "images/val"
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(_generator(spec["kind"])[1]))
    atomic_write_text(yaml_path, f"# built-in dataset generated by mixprec (seed {spec['seed']})\n"
                                 f"path: {root.resolve()}\ntrain: images/train\nval: {val}\n"
                                 f"names:\n{names}\n")
    atomic_write_text(stamp, str(_VERSION))
    return yaml_path
