"""Data YAML resolution, as YOLO does it.

A data YAML has ``path`` (dataset root; relative roots are taken against the YAML's folder,
then the datasets folder), ``train`` and ``val`` (required), optional ``test``, and ``names``
(a list, or a dict {id: name}; ``nc`` if given must agree). Each split is a folder of images,
a ``.txt`` file listing image paths, or a list of either. ``shapes8.yaml``/``shapes.yaml``
resolve to the built-in generated datasets when no such file exists locally.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mixprec.io import read_yaml
from mixprec.vision.data.shapes import BUILTIN, generate

__all__ = ["IMAGE_SUFFIXES", "DataConfig", "image_files", "label_path", "load_data_config"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class DataConfig:
    yaml_path: Path
    root: Path
    splits: dict[str, list[Path]]  # split name -> folders, list files or image files
    names: dict[int, str]

    @property
    def nc(self) -> int:
        return len(self.names)


def _fail(path: Path, message: str) -> ValueError:
    return ValueError(f"data YAML {path}: {message}")


def load_data_config(data: str | Path, datasets_dir: str | Path = "datasets") -> DataConfig:
    """Read and check a data YAML. Raises FileNotFoundError (missing file, with the built-in
    names) or ValueError naming the file and the missing or bad key."""
    path = Path(data)
    if not path.is_file():
        stem = path.stem
        if path.suffix in (".yaml", ".yml", "") and stem in BUILTIN and path.parent == Path("."):
            path = generate(stem, Path(datasets_dir) / stem)
        else:
            raise FileNotFoundError(f"data YAML not found: {data} (built-in datasets: "
                                    f"{', '.join(n + '.yaml' for n in BUILTIN)})")
    cfg: Any = read_yaml(path, "data YAML")  # a syntax error: one line with file:line:column
    if not isinstance(cfg, dict):
        raise _fail(path, "expected a mapping with keys path, train, val, names")
    if "validation" in cfg and "val" not in cfg:
        cfg["val"] = cfg.pop("validation")
    for key in ("train", "val"):
        if not cfg.get(key):
            raise _fail(path, f"missing key '{key}' (a folder of images, a .txt list or a list)")
    if "nc" in cfg:
        nc = cfg["nc"]
        if isinstance(nc, bool) or not isinstance(nc, int) or nc < 1:
            raise _fail(path, f"nc: {nc!r} must be a positive integer (the number of classes)")
    if "names" not in cfg:
        if "nc" in cfg:
            cfg["names"] = [f"class{i}" for i in range(int(cfg["nc"]))]
        else:
            raise _fail(path, "missing key 'names' (a list of class names or {id: name})")
    names = cfg["names"]
    if isinstance(names, list):
        names = dict(enumerate(names))
    elif isinstance(names, dict):
        bad = [k for k in names if isinstance(k, bool)
               or (not isinstance(k, int) and not (isinstance(k, str) and k.strip().isdigit()))]
        if bad:
            raise _fail(path, f"'names' key {bad[0]!r} is not a class id: use integer ids "
                              f"0..{len(names) - 1} ({{0: person, 1: car}}) or a list of names")
        names = {int(k): str(v) for k, v in names.items()}
        if sorted(names) != list(range(len(names))):
            raise _fail(path, f"'names' ids must be 0..{len(names) - 1}, got {sorted(names)}")
    else:
        raise _fail(path, f"'names' must be a list or a dict, got {type(names).__name__}")
    if not names:
        raise _fail(path, "'names' is empty")
    if "nc" in cfg and int(cfg["nc"]) != len(names):
        raise _fail(path, f"nc={cfg['nc']} but 'names' has {len(names)} entries")
    root = Path(cfg.get("path") or path.parent)
    if not root.is_absolute():
        root = (path.parent / root) if (path.parent / root).exists() else Path(datasets_dir) / root
    splits: dict[str, list[Path]] = {}
    for key in ("train", "val", "test"):
        value = cfg.get(key)
        if not value:
            continue
        items = value if isinstance(value, list) else [value]
        resolved = [Path(v) if Path(v).is_absolute() else root / v for v in items]
        missing = [str(p) for p in resolved if not p.exists()]
        if missing:
            raise FileNotFoundError(f"data YAML {path}: '{key}' path not found: {missing[0]} "
                                    f"(root '{root}')")
        splits[key] = resolved
    return DataConfig(path, root, splits, names)


def image_files(sources: list[Path]) -> list[Path]:
    """Sorted image paths from folders (searched recursively), ``.txt`` lists (paths relative to
    the list's folder) and image files."""
    files: list[Path] = []
    for src in sources:
        if src.is_dir():
            files += [p for p in src.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES]
        elif src.suffix == ".txt":
            for line in src.read_text().splitlines():
                line = line.strip()
                if line:
                    p = Path(line)
                    files.append(p if p.is_absolute() else (src.parent / p))
        else:
            files.append(src)
    return sorted(set(files))


def label_path(image: Path) -> Path:
    """YOLO convention: replace the last ``images`` folder with ``labels``, suffix ``.txt``."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")
