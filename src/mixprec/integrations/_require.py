"""One clear message when an optional framework is missing."""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module`` or raise ImportError naming the pip extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{what} needs the '{module.split('.')[0]}' package, which is not installed: "
                          f"pip install 'mixprec[{extra}]'") from err
