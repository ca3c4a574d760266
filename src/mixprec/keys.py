"""The one key schema: every command and ``Model`` method declares its keys as ``Key``s.

``check_keys`` (library calls) and the CLI's ``parse_keys`` (argv) share the unknown-key check
with its "did you mean" and the deprecated spellings (``precisions=``, ``policy=``). Schema
only: nothing here reads argv or the environment.
"""

from __future__ import annotations

import difflib
import sys
from dataclasses import dataclass
from typing import Any

import yaml

__all__ = ["DEPRECATED", "Key", "check_keys", "parse_value", "rename_deprecated", "unknown_key"]


@dataclass(frozen=True)
class Key:
    """One accepted key: its default and a one-line meaning. ``kind`` is ``"list"`` for
    comma-separated values, ``"str"`` for text kept as typed; otherwise the value is read as
    YAML (True, 0.01, None, text)."""

    default: Any
    help: str
    kind: str = "auto"


#: old spelling -> the key that replaced it (kept working for one release, with a message)
DEPRECATED: dict[str, str] = {"precisions": "precision", "policy": "precision"}


def parse_value(text: str, kind: str = "auto") -> Any:
    """A typed value from command-line text: YAML scalars, ``"list"`` splits on commas."""
    if kind == "list":
        return [parse_value(part) for part in text.split(",") if part.strip()]
    if kind == "str":
        return text
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return text if isinstance(value, (dict, list)) and kind != "auto" else value


def unknown_key(name: str, keys: dict[str, Key], what: str) -> ValueError:
    """The error for a key ``what`` does not accept, with the nearest valid key."""
    old = [k for k, new in DEPRECATED.items() if new in keys and k not in keys]
    close = difflib.get_close_matches(name, [*keys, *old], n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    if close and close[0] in old:
        hint += f" ('{close[0]}=' is now '{DEPRECATED[close[0]]}=')"
    return ValueError(f"unknown {what} argument '{name}'{hint}")


def rename_deprecated(name: str, keys: dict[str, Key], what: str) -> str:
    """``name``, or the key that replaced it (printing a deprecation message to stderr)."""
    new = DEPRECATED.get(name)
    if new is None or name in keys or new not in keys:
        return name
    print(f"{what}: '{name}=' is deprecated and will be removed; use '{new}='", file=sys.stderr)
    return new


def check_keys(given: dict[str, Any], keys: dict[str, Key], what: str) -> dict[str, Any]:
    """Defaults overlaid with ``given``; an unknown key raises ValueError with the nearest key;
    a deprecated spelling is renamed (with a message)."""
    out = {k: v.default for k, v in keys.items()}
    for k, v in given.items():
        name = rename_deprecated(k, keys, what)
        if name not in keys:
            raise unknown_key(k, keys, what)
        out[name] = v
    return out
