"""Built-in 3D datasets, generated locally on first use (never downloaded), deterministic by seed.

``organs3d``: CT-like volumes 96x96x64 at 0.8x0.8x2.5 mm (anisotropic): air, a body outline
(fat with a muscle wall), four organ-shaped blobs (smooth random deformations of rotated
ellipsoids) of different sizes and intensities -- liver (large), spleen, two kidneys, bladder
(small, low contrast to the surrounding tissue) -- and Gaussian noise, in Hounsfield-like units,
stored as int16. 32 train + 8 val cases, about 30 MB.

``lesions3d``: MRI-like two-channel volumes (4D, channel last) 80x80x48 at 1x1x2 mm: a head-like
ellipsoid of tissue, a smooth multiplicative bias field that differs per channel, thin winding
vessels (radius 1-1.5 voxels, class 2) and a few small low-contrast lesions (class 1). The
character differs from organs3d on purpose: tiny structures, low contrast, intensity drift.
24 train + 6 val cases.

Layout, Decathlon style: ``imagesTr``/``labelsTr`` (train), ``imagesVa``/``labelsVa`` (val),
``<name>.yaml`` (path/train/val/names) and a ``dataset.json`` with a ``validation`` list.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mixprec.io import atomic_write_text
from mixprec.vision.segment3d.nifti import write_nifti

__all__ = ["BUILTIN", "generate", "make_case"]

BUILTIN: dict[str, dict] = {
    "organs3d": {"train": 32, "val": 8, "seed": 3, "shape": (96, 96, 64), "spacing": (0.8, 0.8, 2.5),
                 "names": ["background", "liver", "spleen", "kidney", "bladder"], "modality": ["CT"]},
    "lesions3d": {"train": 24, "val": 6, "seed": 7, "shape": (80, 80, 48), "spacing": (1.0, 1.0, 2.0),
                  "names": ["background", "lesion", "vessel"], "modality": ["T1", "FLAIR"]},
}
_VERSION = 3


def _grid(shape: tuple[int, int, int], spacing: tuple[float, ...]) -> np.ndarray:
    """World coordinates in mm of every voxel centre, ``(3, x, y, z)`` float32, origin at the centre."""
    axes = [(np.arange(n, dtype=np.float32) - (n - 1) / 2) * s for n, s in zip(shape, spacing, strict=True)]
    return np.stack(np.meshgrid(*axes, indexing="ij"))


def _rotation(rng: np.random.Generator, max_angle: float) -> np.ndarray:
    a, b, c = rng.uniform(-max_angle, max_angle, 3)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return (rz @ ry @ rx).astype(np.float32)


def _blob(grid: np.ndarray, centre: np.ndarray, radii: np.ndarray, rng: np.random.Generator,
          wobble: float = 0.18) -> np.ndarray:
    """Mask of a rotated ellipsoid whose surface is deformed by low-frequency harmonics."""
    local = np.tensordot(_rotation(rng, 0.6).T, grid - centre.reshape(3, 1, 1, 1), axes=1)
    r = np.sqrt(sum((local[i] / radii[i]) ** 2 for i in range(3)))
    u = local / (np.linalg.norm(local, axis=0, keepdims=True) + 1e-6)
    bump = sum(rng.uniform(-wobble, wobble) * np.sin(k * u[i] + rng.uniform(0, 6.3))
               for k in (2, 3) for i in range(3))
    return r < 1.0 + bump / 3


def _smooth_field(shape: tuple[int, int, int], rng: np.random.Generator, strength: float) -> np.ndarray:
    """Smooth multiplicative field around 1 (a low-order polynomial), as an MRI bias field."""
    x, y, z = (np.linspace(-1, 1, n, dtype=np.float32) for n in shape)
    X, Y, Z = np.meshgrid(x, y, z, indexing="ij")
    c = rng.uniform(-1, 1, 7) * strength
    return np.exp(c[0] * X + c[1] * Y + c[2] * Z + c[3] * X * Y + c[4] * X * X + c[5] * Y * Y + c[6] * Z * Z)


def _organs_case(rng: np.random.Generator, shape: tuple[int, int, int],
                 spacing: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    g = _grid(shape, spacing)
    ext = np.array([n * s for n, s in zip(shape, spacing, strict=True)], dtype=np.float32)
    img = np.full(shape, -1000.0, np.float32)
    label = np.zeros(shape, np.uint8)
    body_r = ext[:2] / 2 * rng.uniform(0.78, 0.9, 2)
    body = (g[0] / body_r[0]) ** 2 + (g[1] / body_r[1]) ** 2
    img[body < 1.0] = -90.0  # subcutaneous fat
    img[body < 0.8] = 40.0  # muscle / soft tissue
    # organ -> (centre as a fraction of the body radii, radii in mm, HU)
    organs = {
        1: ((-0.25, -0.05, 0.05), (0.42, 0.32, 0.35), 100.0),  # liver, large (portal venous phase)
        2: ((0.38, 0.15, 0.05), (0.16, 0.13, 0.2), 125.0),     # spleen, close to the liver
        3: ((0.28, -0.35, -0.05), (0.09, 0.11, 0.18), 170.0),  # kidney (one side)
        4: ((0.0, 0.3, -0.3), (0.1, 0.09, 0.1), 18.0),         # bladder, small and low contrast
    }
    for cls, (cf, rf, hu) in organs.items():
        for side in ((1, -1) if cls == 3 else (1,)):
            centre = np.array([cf[0] * side * body_r[0], cf[1] * body_r[1], cf[2] * ext[2]], np.float32)
            centre += rng.normal(0, 3.0, 3).astype(np.float32)
            radii = np.array([rf[0] * body_r[0] * 1.4, rf[1] * body_r[1] * 1.4, rf[2] * ext[2]], np.float32)
            radii *= rng.uniform(0.8, 1.2, 3).astype(np.float32)
            mask = _blob(g, centre, radii, rng) & (body < 0.8)
            label[mask] = cls
            img[mask] = hu + rng.normal(0, 6)
    img += rng.normal(0, rng.uniform(12, 25), shape).astype(np.float32)
    return np.clip(img, -1024, 3000).astype(np.int16), label


def _tube(label: np.ndarray, cls: int, rng: np.random.Generator, radius: float) -> None:
    """Draw a winding tube of ``radius`` voxels as class ``cls`` into ``label`` (in place)."""
    shape = np.array(label.shape, dtype=np.float32)
    p = rng.uniform(0.25, 0.75, 3) * shape
    d = rng.normal(size=3)
    r = int(np.ceil(radius))
    off = np.argwhere(np.ones((2 * r + 1,) * 3)) - r
    off = off[(off ** 2).sum(1) <= radius ** 2]
    for _ in range(int(rng.integers(60, 120))):
        d = d / np.linalg.norm(d) + rng.normal(0, 0.25, 3)
        d /= np.linalg.norm(d)
        p = np.clip(p + d, 0, shape - 1)
        pts = np.clip(np.round(p).astype(int) + off, 0, np.array(label.shape) - 1)
        label[pts[:, 0], pts[:, 1], pts[:, 2]] = cls


def _lesions_case(rng: np.random.Generator, shape: tuple[int, int, int],
                  spacing: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    g = _grid(shape, spacing)
    ext = np.array([n * s for n, s in zip(shape, spacing, strict=True)], dtype=np.float32)
    head = _blob(g, np.zeros(3, np.float32), ext / 2 * rng.uniform(0.75, 0.88, 3).astype(np.float32),
                 rng, wobble=0.08)
    label = np.zeros(shape, np.uint8)
    for _ in range(int(rng.integers(2, 4))):
        _tube(label, 2, rng, float(rng.uniform(1.0, 1.5)))
    for _ in range(int(rng.integers(2, 5))):
        centre = rng.uniform(-0.3, 0.3, 3).astype(np.float32) * ext
        radii = rng.uniform(2.0, 5.0, 3).astype(np.float32)
        label[_blob(g, centre, radii, rng, wobble=0.3)] = 1
    label[~head] = 0
    # channel means per class: background outside, tissue, lesion, vessel
    means = {"t1": (0.0, 100.0, 88.0, 120.0), "flair": (0.0, 80.0, 104.0, 90.0)}
    chans = []
    for i, key in enumerate(("t1", "flair")):
        bg, tissue, lesion, vessel = means[key]
        ch = np.where(head, tissue, bg).astype(np.float32)
        ch[label == 1] = lesion
        ch[label == 2] = vessel
        ch *= _smooth_field(shape, np.random.default_rng(rng.integers(1 << 30) + i), 0.3)
        ch += rng.normal(0, 7.0, shape).astype(np.float32)
        chans.append(np.clip(ch, 0, None))
    return np.stack(chans).astype(np.int16), label


def make_case(name: str, index: int,
              shape: tuple[int, int, int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Case ``index`` of built-in ``name``: image (3D, or channel-first 4D) int16, label uint8 and
    the affine (diagonal spacing). Deterministic in (name, index, shape)."""
    spec = BUILTIN[name]
    shape = tuple(shape or spec["shape"])
    rng = np.random.default_rng([spec["seed"], index])
    make = _organs_case if name == "organs3d" else _lesions_case
    image, label = make(rng, shape, spec["spacing"])
    return image, label, np.diag([*spec["spacing"], 1.0])


def generate(name: str, root: str | Path, n_train: int | None = None, n_val: int | None = None,
             shape: tuple[int, int, int] | None = None) -> Path:
    """Generate the built-in dataset ``name`` into ``root`` (unless already complete) and return
    its data YAML. ``n_train``/``n_val``/``shape`` override the sizes (tests use tiny ones)."""
    if name not in BUILTIN:
        raise ValueError(f"no built-in 3D dataset '{name}'; built-in: {', '.join(BUILTIN)}")
    spec = BUILTIN[name]
    n_train = spec["train"] if n_train is None else n_train
    n_val = spec["val"] if n_val is None else n_val
    root = Path(root)
    yaml_path, stamp = root / f"{name}.yaml", root / ".complete"
    key = f"{_VERSION} {n_train} {n_val} {tuple(shape or spec['shape'])}"
    if yaml_path.is_file() and stamp.is_file() and stamp.read_text().strip() == key:
        return yaml_path
    print(f"Generating built-in 3D dataset '{name}' in {root} ...")
    training, validation = [], []
    for split, start, n, out in (("Tr", 0, n_train, training), ("Va", n_train, n_val, validation)):
        for i in range(start, start + n):
            image, label, affine = make_case(name, i, shape)
            img_rel, lab_rel = f"images{split}/{name}_{i:03d}.nii.gz", f"labels{split}/{name}_{i:03d}.nii.gz"
            write_nifti(root / img_rel, image, affine)
            write_nifti(root / lab_rel, label, affine)
            out.append({"image": f"./{img_rel}", "label": f"./{lab_rel}"})
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(spec["names"]))
    atomic_write_text(yaml_path, f"# built-in 3D dataset generated by mixprec (seed {spec['seed']})\n"
                                 f"path: {root.resolve()}\ntrain: imagesTr\nval: imagesVa\n"
                                 f"channels: {len(spec['modality'])}\nmodality: {spec['modality']}\n"
                                 f"names:\n{names}\n")
    atomic_write_text(root / "dataset.json", json.dumps({
        "name": name, "description": "generated by mixprec",
        "tensorImageSize": "4D" if len(spec["modality"]) > 1 else "3D",
        "modality": dict(enumerate(spec["modality"])), "labels": dict(enumerate(spec["names"])),
        "numTraining": n_train, "training": training, "validation": validation}, indent=1))
    atomic_write_text(stamp, key)
    return yaml_path
