"""Let a subpackage also be the function it is named after.

``mixprec.emulate``, ``mixprec.bench`` and ``mixprec.diagnose`` are subpackages and, by the
public API, callables. Once a subpackage is imported Python binds the *module* to that name on
``mixprec``, so the module itself forwards calls to the function of the same name.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any


def make_module_callable(module_name: str, function: Callable[..., Any]) -> None:
    """Make ``sys.modules[module_name](...)`` call ``function(...)``."""

    class CallableModule(types.ModuleType):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            return function(*args, **kwargs)

    CallableModule.__doc__ = function.__doc__
    sys.modules[module_name].__class__ = CallableModule
