"""``key=value`` command-line arguments, as YOLO users type them.

A command declares its keys as a dict of ``Key``; ``parse_keys`` turns ``["epochs=5", ...]``
into a dict of typed values with every default filled in. Unknown keys fail with the nearest
valid key suggested. This module only parses: ``mixprec.cli`` is what reads ``sys.argv``.
"""

from __future__ import annotations

from typing import Any

from mixprec.keys import Key, parse_value, rename_deprecated, unknown_key

__all__ = ["Key", "format_help", "given_value", "parse_keys", "parse_value"]


def given_value(args: list[str], name: str, default: Any = None) -> Any:
    """The value of ``name=...`` among ``args`` (the last one given), or ``default``."""
    for arg in reversed(args):
        key, sep, text = arg.partition("=")
        if sep and key.strip().lstrip("-").replace("-", "_") == name:
            return parse_value(text)
    return default


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
        name = rename_deprecated(name, keys, f"mixprec {command}")
        if name not in keys:
            raise ValueError(f"{unknown_key(name, keys, f'mixprec {command}')} "
                             f"(see 'mixprec {command} --help')")
        values[name] = parse_value(text, keys[name].kind)
    return values


def format_help(command: str, summary: str, keys: dict[str, Key]) -> str:
    width = max(len(k) for k in keys) if keys else 0
    lines = [f"usage: mixprec {command} key=value ...", "", summary, "", "keys (default):"]
    for name, key in keys.items():
        lines.append(f"  {name.ljust(width)}  {key.help} (default: {key.default!r})")
    return "\n".join(lines)
