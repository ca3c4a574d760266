"""``key=value`` command-line arguments, as YOLO users type them.

A command declares its keys as a dict of ``Key``; ``parse_keys`` turns ``["epochs=5", ...]``
into a dict of typed values with every default filled in. Unknown keys fail with the nearest
valid key suggested. This module only parses: ``mixprec.cli`` is what reads ``sys.argv``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

import yaml

__all__ = ["Key", "format_help", "parse_keys", "parse_value"]


@dataclass(frozen=True)
class Key:
    """One accepted key: its default and a one-line meaning. ``kind`` is ``"list"`` for
    comma-separated values; otherwise the value is read as YAML (True, 0.01, None, text)."""

    default: Any
    help: str
    kind: str = "auto"


def parse_value(text: str, kind: str = "auto") -> Any:
    if kind == "list":
        return [parse_value(part) for part in text.split(",") if part.strip()]
    if kind == "str":
        return text
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return text if isinstance(value, (dict, list)) and kind != "auto" else value


def parse_keys(args: list[str], keys: dict[str, Key], command: str) -> dict[str, Any]:
    """Typed values for every key in ``keys`` (defaults for those not given).

    Raises ValueError naming the bad argument: not ``key=value``, or an unknown key (with the
    closest valid key suggested)."""
    values = {name: key.default for name, key in keys.items()}
    for arg in args:
        name, sep, text = arg.partition("=")
        name = name.strip().lstrip("-").replace("-", "_")
        if not sep:
            raise ValueError(f"'{arg}' is not key=value; for example: mixprec {command} "
                             f"{next(iter(keys))}=...  (see 'mixprec {command} --help')")
        if name not in keys:
            close = difflib.get_close_matches(name, list(keys), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"unknown key '{name}' for 'mixprec {command}'{hint} "
                             f"(see 'mixprec {command} --help')")
        values[name] = parse_value(text, keys[name].kind)
    return values


def format_help(command: str, summary: str, keys: dict[str, Key]) -> str:
    width = max(len(k) for k in keys) if keys else 0
    lines = [f"usage: mixprec {command} key=value ...", "", summary, "", "keys (default):"]
    for name, key in keys.items():
        lines.append(f"  {name.ljust(width)}  {key.help} (default: {key.default!r})")
    return "\n".join(lines)
