"""One walker for nested containers: dicts, lists, tuples and namedtuples of leaves.

``map_leaves(fn, obj)`` rebuilds the containers around ``fn(leaf)``; ``leaves(obj)`` yields the
leaves. Everything that is not a dict/list/tuple is a leaf (tensors, numbers, paths ...).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["leaves", "map_leaves"]


def map_leaves(fn: Callable[[Any], Any], obj: Any, *, plain: bool = False) -> Any:
    """``obj`` with every leaf replaced by ``fn(leaf)``; containers keep their type (namedtuples
    included), or become plain lists and dicts with ``plain=True`` (for YAML/JSON)."""
    if isinstance(obj, dict):
        return {k: map_leaves(fn, v, plain=plain) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [map_leaves(fn, v, plain=plain) for v in obj]
        if plain:
            return items
        return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
    return fn(obj)


def leaves(obj: Any) -> Iterator[Any]:
    """Every leaf inside ``obj``, depth first, in container order."""
    if isinstance(obj, dict):
        for v in obj.values():
            yield from leaves(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from leaves(v)
    else:
        yield obj
