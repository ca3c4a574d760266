"""The run folder: ``runs/detect/train{,2,...}``, ``args.yaml``, ``results.csv``, the
precision record. Every file is written atomically."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import yaml

from mixprec._tree import map_leaves
from mixprec.io import atomic_write_text, increment_path

__all__ = ["ResultsLog", "increment_path", "write_yaml"]


def _plain(v: Any) -> Any:
    return map_leaves(lambda x: str(x) if isinstance(x, Path) else x, v, plain=True)


def write_yaml(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, yaml.safe_dump(_plain(data), sort_keys=False))


class ResultsLog:
    """``results.csv``: one row per epoch, rewritten whole (atomically) after each epoch."""

    def __init__(self, path: Path, keep_until_epoch: int = 0):
        self.path, self.rows = path, []
        if path.is_file() and keep_until_epoch > 0:
            with open(path, newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= keep_until_epoch]

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(self.rows[-1]))
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, buf.getvalue())
