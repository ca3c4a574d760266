"""Safe file writing and checkpoint loading.

Files are written atomically (temp file in the same folder, flushed, then ``os.replace``), so a
crash never leaves a half-written ``last.pt``. Checkpoints load with ``weights_only=True``: a
model file is data, never code.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
import yaml

__all__ = ["atomic_write", "atomic_write_text", "increment_path", "load_checkpoint", "read_yaml",
           "save_checkpoint"]


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(file)`` on a temp file beside ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def save_checkpoint(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically. Keep ``obj`` to tensors, numbers, strings and
    containers of them, so that ``load_checkpoint`` (weights_only=True) can read it back."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``. Every failure is one line naming the file:
    FileNotFoundError (missing), ``ValueError`` for a truncated or corrupt file (with its size)
    and for a pickle that holds code (refused, never run)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "global" in str(err).lower():  # a class or function to import: code, refused
            first = next((ln.strip() for ln in str(err).splitlines() if "GLOBAL" in ln), "")
            detail = f" ({first})" if first else ""
            raise ValueError(f"{path} is not a mixprec checkpoint: refused to unpickle code or objects "
                             f"(checkpoints load with weights_only=True){detail}") from None
        raise _corrupt(path) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError, AttributeError):
        raise _corrupt(path) from None


def _corrupt(path: Path) -> ValueError:
    size = path.stat().st_size
    return ValueError(f"{path} is truncated or corrupt ({size} bytes); use best.pt or an earlier "
                      "checkpoint")


def read_yaml(path: str | os.PathLike, what: str = "YAML") -> Any:
    """Parse a YAML file; a syntax error is one ``ValueError`` line: the file, line, column and
    the problem (not yaml's multi-line traceback)."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"{what} {path}{where}: not valid YAML ({problem})") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{what} {path}: not a text file ({err.reason})") from None


def increment_path(project: str | os.PathLike, name: str, exist_ok: bool = False) -> Path:
    """``project/name``, or ``project/name2``, ``name3``... the first that does not exist
    (``project/name`` itself when ``exist_ok``). Creates nothing."""
    base = Path(project) / name
    if exist_ok or not base.exists():
        return base
    n = 2
    while (Path(project) / f"{name}{n}").exists():
        n += 1
    return Path(project) / f"{name}{n}"
