"""Two more built-in generated datasets, of a different character from ``shapes``.

``dense``: many small objects on busy backgrounds. 192x192 images, 12-40 objects of 4-14 px
radius (boxes ~7-28 px), ten classes (five outlines x filled/hollow), on gradient + stripe/checker +
blotchy low-frequency noise + pixel noise backgrounds, plus unlabelled distractor specks. Objects
may touch but a new one covers at most 25% of an earlier box.

``occlusion``: large scale variation and occlusion. 256x256 images, 2-9 objects whose radius is
log-uniform in 5-120 px (boxes from ~10 px to the whole image), six classes (the ``shapes``
outlines), drawn back to front so later objects and unlabelled occluder bars hide parts of earlier
ones. Labels are the full (amodal) box; an object stays only if at least 35% of its pixels are
still visible, and a new object or bar is rejected if it would push an earlier one below that.

Both are deterministic functions of a ``numpy.random.Generator`` (one per image).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from mixprec.vision.data.shapes import _background, _overlap_frac, _polygon

__all__ = ["DENSE_NAMES", "OCCLUSION_NAMES", "dense_image", "occlusion_image"]

_OUTLINES = ["circle", "square", "triangle", "star", "cross"]
DENSE_NAMES = [f"{o}_{f}" for f in ("solid", "hollow") for o in _OUTLINES]
OCCLUSION_NAMES = ["circle", "square", "triangle", "star", "hexagon", "cross"]
_SHAPE_ID = {"circle": 0, "square": 1, "triangle": 2, "star": 3, "hexagon": 4, "cross": 5}


def _points(name: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    if name == "circle":
        return [(cx - r, cy - r), (cx + r, cy + r)]
    return _polygon(_SHAPE_ID[name], cx, cy, r, rot)


def _draw(draw: ImageDraw.ImageDraw, name: str, pts: list, fill, outline=None, width: int = 1) -> None:
    if name == "circle":
        draw.ellipse(pts, fill=fill, outline=outline, width=width)
    else:
        draw.polygon(pts, fill=fill, outline=outline, width=width)


def _box(pts: list, size: int) -> tuple[float, float, float, float]:
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    return max(min(xs), 0), max(min(ys), 0), min(max(xs), size), min(max(ys), size)


def _blotches(rng: np.random.Generator, size: int, amp: float) -> np.ndarray:
    """Low-frequency noise: a coarse random grid upsampled bicubically, (size, size, 3) float."""
    g = int(rng.integers(4, 12))
    coarse = rng.normal(0, amp, (g, g, 3))
    out = np.stack([np.asarray(Image.fromarray(coarse[..., c].astype(np.float32), "F")
                               .resize((size, size), Image.BICUBIC)) for c in range(3)], -1)
    return out


def dense_image(rng: np.random.Generator, size: int = 192) -> tuple[Image.Image, list]:
    """One ``dense`` image and its labels ``(class, cx, cy, w, h)`` normalised."""
    bg = _background(rng, size).astype(np.float32) + _blotches(rng, size, rng.uniform(10, 30))
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(10, 40))):  # distractor specks: small unlabelled blobs
        x, y, r = *rng.uniform(0, size, 2), rng.uniform(1, 3)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    boxes, labels = [], []
    for _ in range(int(rng.integers(12, 41))):
        for _attempt in range(30):
            k = int(rng.integers(len(DENSE_NAMES)))
            name, hollow = _OUTLINES[k % 5], k >= 5
            r = float(np.exp(rng.uniform(math.log(4), math.log(14))))
            cx, cy = rng.uniform(r * 0.7, size - r * 0.7, 2)
            pts = _points(name, cx, cy, r, float(rng.uniform(0, 2 * math.pi)))
            box = _box(pts, size)
            if box[2] - box[0] < 5 or box[3] - box[1] < 5:
                continue
            if any(_overlap_frac(box, old) > 0.25 or _overlap_frac(old, box) > 0.25 for old in boxes):
                continue
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            if hollow:
                _draw(draw, name, pts, None, outline=color, width=max(1, round(r / 5)))
            else:
                _draw(draw, name, pts, color)
            boxes.append(box)
            labels.append((k, (box[0] + box[2]) / 2 / size, (box[1] + box[3]) / 2 / size,
                           (box[2] - box[0]) / size, (box[3] - box[1]) / size))
            break
    noisy = np.asarray(img).astype(np.float32) + rng.normal(0, rng.uniform(2, 10), (size, size, 3))
    img = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 0.8))))
    return img, labels


def occlusion_image(rng: np.random.Generator, size: int = 256,
                    min_visible: float = 0.35) -> tuple[Image.Image, list]:
    """One ``occlusion`` image and its labels ``(class, cx, cy, w, h)`` normalised."""
    img = Image.fromarray(_background(rng, size))
    owner = np.full((size, size), -1, np.int16)  # which object (or -2: occluder) each pixel shows
    areas: list[int] = []
    objects: list[tuple[int, tuple]] = []  # (class, box)
    n_obj, n_bars = int(rng.integers(2, 10)), int(rng.integers(0, 4))
    kinds = ["object"] * n_obj + ["bar"] * n_bars
    order = rng.permutation(len(kinds))
    for which in (kinds[j] for j in order):
        for _attempt in range(20):
            mask_img = Image.new("L", (size, size), 0)
            mdraw = ImageDraw.Draw(mask_img)
            if which == "object":
                cls = int(rng.integers(len(OCCLUSION_NAMES)))
                r = float(np.exp(rng.uniform(math.log(5), math.log(120))))
                cx, cy = rng.uniform(r * 0.5, size - r * 0.5, 2)
                pts = _points(OCCLUSION_NAMES[cls], cx, cy, r, float(rng.uniform(0, 2 * math.pi)))
                box = _box(pts, size)
                if box[2] - box[0] < 6 or box[3] - box[1] < 6:
                    continue
                _draw(mdraw, OCCLUSION_NAMES[cls], pts, 255)
            else:
                w, h = rng.uniform(6, 30), rng.uniform(size * 0.3, size * 1.2)
                cx, cy, ang = *rng.uniform(0, size, 2), rng.uniform(0, math.pi)
                c, s = math.cos(ang), math.sin(ang)
                pts = [(cx + x * c - y * s, cy + x * s + y * c)
                       for x, y in ((-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2))]
                mdraw.polygon(pts, fill=255)
            mask = np.asarray(mask_img) > 0
            if not mask.any():
                continue
            # would this hide too much of an earlier object?
            covered = np.bincount(owner[mask][owner[mask] >= 0], minlength=len(areas))
            visible = np.array([(owner == i).sum() for i in range(len(areas))]) - covered \
                if areas else np.zeros(0)
            if areas and (visible < min_visible * np.array(areas)).any():
                continue
            color = tuple(int(v) for v in rng.integers(0, 256, 3))
            if which == "object":
                _draw(ImageDraw.Draw(img), OCCLUSION_NAMES[cls], pts, color)
                owner[mask] = len(areas)
                areas.append(int(mask.sum()))
                objects.append((cls, box))
            else:
                ImageDraw.Draw(img).polygon(pts, fill=color)
                owner[mask] = -2
            break
    arr = np.asarray(img).astype(np.float32) + rng.normal(0, rng.uniform(2, 8), (size, size, 3))
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    labels = [(cls, (b[0] + b[2]) / 2 / size, (b[1] + b[3]) / 2 / size, (b[2] - b[0]) / size,
               (b[3] - b[1]) / size) for cls, b in objects]
    return img, labels
