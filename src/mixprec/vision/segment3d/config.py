"""Where the volumes are: a Medical Segmentation Decathlon ``dataset.json`` (or its folder), or a
data YAML (``path``, ``train``, ``val``, ``names``), resolved to lists of ``Case(image, label)``.

Decathlon: ``training`` is a list of ``{image, label}`` (paths relative to the json's folder);
``labels`` maps id -> name (0 = background). Without a ``validation`` list, a seeded
``val_fraction`` of ``training`` is held out (the same split for the same seed and file list).

Data YAML: each of ``train``/``val`` is a folder of NIfTI files, a ``.txt`` listing them, or a
list of files; the label of an image is found by the Decathlon rule (the last ``imagesTr``
folder -> ``labelsTr``, same file name) or else the YOLO rule (``images`` -> ``labels``).
``organs3d.yaml`` and ``lesions3d.yaml`` resolve to the built-in generated datasets.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mixprec.vision.segment3d.nifti import is_nifti

__all__ = ["Case", "SegDataConfig", "label_for", "load_seg_data", "nifti_files"]


@dataclass(frozen=True)
class Case:
    """One volume: its image file and label file (None where no label was found)."""

    image: Path
    label: Path | None

    @property
    def name(self) -> str:
        n = self.image.name
        return n[: -len(".nii.gz")] if n.endswith(".nii.gz") else self.image.stem


@dataclass(frozen=True)
class SegDataConfig:
    source: Path
    splits: dict[str, list[Case]]
    names: dict[int, str]  # 0 = background
    modalities: int | None = None  # channels the json/YAML declares (None: taken from the files)
    ct: bool = False  # modality CT: nnU-Net's dataset-wide CT normalisation (else per-volume z-score)

    @property
    def nc(self) -> int:
        """Number of classes including background."""
        return len(self.names)


def _names(raw: Any, where: str) -> dict[int, str]:
    if isinstance(raw, list):
        names = dict(enumerate(str(n) for n in raw))
    elif isinstance(raw, dict):
        try:
            names = {int(k): str(v) for k, v in raw.items()}
        except ValueError as err:
            raise ValueError(f"{where}: label ids must be integers, got {list(raw)}") from err
    else:
        raise ValueError(f"{where}: 'names'/'labels' must be a list or a mapping id -> name, got "
                         f"{type(raw).__name__}")
    if sorted(names) != list(range(len(names))) or len(names) < 2:
        raise ValueError(f"{where}: class ids must be 0..N-1 with N >= 2 (0 = background), got "
                         f"{sorted(names)}")
    return names


def nifti_files(sources: list[Path]) -> list[Path]:
    """Sorted NIfTI files from folders (not recursive), ``.txt`` lists (paths relative to the
    list's folder) and files."""
    files: list[Path] = []
    for src in sources:
        if src.is_dir():
            files += [p for p in src.iterdir() if is_nifti(p) and not p.name.startswith(".")]
        elif src.suffix == ".txt":
            for line in src.read_text().splitlines():
                if line.strip():
                    p = Path(line.strip())
                    files.append(p if p.is_absolute() else src.parent / p)
        else:
            files.append(src)
    return sorted(set(files))


def label_for(image: Path) -> Path | None:
    """The label file of ``image``: the last folder named ``images<suffix>`` becomes
    ``labels<suffix>``, same file name -- the Decathlon rule (``imagesTr`` -> ``labelsTr``) and the
    YOLO rule (``images`` -> ``labels``); None if no such folder is in the path."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i].startswith("images"):
            return Path(*parts[:i], "labels" + parts[i][len("images"):], *parts[i + 1:])
    return None


def _split(cases: list[Case], val_fraction: float, seed: int) -> tuple[list[Case], list[Case]]:
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction}: must be between 0 and 1 (exclusive)")
    if len(cases) < 2:
        raise ValueError(f"need at least 2 training cases to hold out a validation split, got {len(cases)}")
    order = np.random.default_rng(seed).permutation(len(cases))
    n_val = min(max(1, round(val_fraction * len(cases))), len(cases) - 1)
    val = sorted(order[:n_val].tolist())
    val_set = set(val)
    return [c for i, c in enumerate(cases) if i not in val_set], [cases[i] for i in val]


def _load_decathlon(path: Path, val_fraction: float, seed: int) -> SegDataConfig:
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(cfg, dict) or not cfg.get("training"):
        raise ValueError(f"{path}: a Decathlon dataset.json needs a non-empty 'training' list of "
                         "{\"image\": ..., \"label\": ...}")
    root = path.parent

    def cases(items: list[Any], key: str) -> list[Case]:
        out = []
        for i, item in enumerate(items):
            if not isinstance(item, dict) or "image" not in item:
                raise ValueError(f"{path}: '{key}'[{i}] must be {{\"image\": ..., \"label\": ...}}, "
                                 f"got {item!r}")
            label = item.get("label")
            out.append(Case(root / item["image"], root / label if label else None))
        return out

    names = _names(cfg.get("labels", {0: "background", 1: "foreground"}), str(path))
    modality = cfg.get("modality")
    train = cases(cfg["training"], "training")
    if cfg.get("validation"):
        val = cases(cfg["validation"], "validation")
    else:
        train, val = _split(train, val_fraction, seed)
    mods = [str(m).upper() for m in modality.values()] if isinstance(modality, dict) else []
    return SegDataConfig(path, {"train": train, "val": val}, names, len(mods) or None, "CT" in mods)


def _load_yaml(path: Path, datasets_dir: Path) -> SegDataConfig:
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"data YAML {path}: not valid YAML ({err})") from err
    if not isinstance(cfg, dict):
        raise ValueError(f"data YAML {path}: expected a mapping with keys path, train, val, names")
    for key in ("train", "val", "names"):
        if not cfg.get(key):
            raise ValueError(f"data YAML {path}: missing key '{key}'")
    root = Path(cfg.get("path") or path.parent)
    if not root.is_absolute():
        root = (path.parent / root) if (path.parent / root).exists() else datasets_dir / root
    splits: dict[str, list[Case]] = {}
    for key in ("train", "val", "test"):
        if not cfg.get(key):
            continue
        items = cfg[key] if isinstance(cfg[key], list) else [cfg[key]]
        sources = [Path(v) if Path(v).is_absolute() else root / v for v in items]
        missing = [str(p) for p in sources if not p.exists()]
        if missing:
            raise FileNotFoundError(f"data YAML {path}: '{key}' path not found: {missing[0]} (root '{root}')")
        files = nifti_files(sources)
        if not files:
            raise ValueError(f"data YAML {path}: '{key}' has no .nii/.nii.gz files ({sources[0]})")
        splits[key] = [Case(f, label_for(f)) for f in files]
    ch = cfg.get("channels")
    mod = cfg.get("modality", [])
    mods = [str(m).upper() for m in (mod if isinstance(mod, list) else [mod])]
    return SegDataConfig(path, splits, _names(cfg["names"], f"data YAML {path}"),
                         int(ch) if ch else None, "CT" in mods)


def load_seg_data(data: str | Path, datasets_dir: str | Path = "datasets", val_fraction: float = 0.2,
                  seed: int = 0) -> SegDataConfig:
    """Resolve ``data`` (a dataset.json, a Decathlon folder holding one, a data YAML, or a
    built-in name such as ``organs3d.yaml``) to the train/val cases and class names. Raises
    FileNotFoundError or ValueError naming the file and the problem."""
    from mixprec.vision.segment3d.builtin import BUILTIN, generate

    path, datasets_dir = Path(data), Path(datasets_dir)
    if path.is_dir():
        if not (path / "dataset.json").is_file():
            raise FileNotFoundError(f"{path}: a Decathlon folder must hold dataset.json")
        path = path / "dataset.json"
    if not path.is_file():
        if path.parent == Path(".") and path.stem in BUILTIN and path.suffix in (".yaml", ".yml", ""):
            path = generate(path.stem, datasets_dir / path.stem)
        else:
            raise FileNotFoundError(f"segmentation data not found: {data} (a dataset.json, a Decathlon "
                                    f"folder, a data YAML, or built in: "
                                    f"{', '.join(n + '.yaml' for n in BUILTIN)})")
    if path.suffix == ".json":
        return _load_decathlon(path, val_fraction, seed)
    return _load_yaml(path, datasets_dir)
