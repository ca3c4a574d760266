"""The ``mixprec`` command: ``mixprec train|val|predict|bench|doctor|check|export|benchmark key=value ...``.

The only module that reads ``sys.argv``. Each command is one module of this package exposing
``KEYS`` (dict of ``mixprec.keys.Key``; or ``keys(argv) -> dict`` when the keys depend on the
model, as a task's do), ``SUMMARY`` (one line) and ``run(config: dict) -> int``; it is imported
only when its command is used. Adding a command is adding its module and one
line to ``COMMANDS``. A ``ValueError`` or ``OSError`` (bad input, a missing file, a full disk)
out of a command is one line on stderr, ``mixprec <cmd>: <message>``, with exit status 2;
``MIXPREC_DEBUG=1`` re-raises it (traceback).
"""

from __future__ import annotations

import importlib
import os
import sys

from mixprec.cli.args import format_help, parse_keys

COMMANDS: dict[str, str] = {
    "train": "mixprec.cli.train",
    "val": "mixprec.cli.val",
    "predict": "mixprec.cli.predict",
    "bench": "mixprec.cli.bench",
    "doctor": "mixprec.cli.doctor",
    "check": "mixprec.cli.check",
    "export": "mixprec.cli.export",
    "benchmark": "mixprec.cli.benchmark",
}


def _usage() -> str:
    return ("usage: mixprec {" + "|".join(COMMANDS) + "} key=value ...\n"
            "       mixprec COMMAND --help   lists every key with its default")


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"mixprec: unknown command '{command}'\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command])
    try:
        keys = module.keys(rest) if hasattr(module, "keys") else module.KEYS
        if any(a in ("-h", "--help", "help") for a in rest):
            print(format_help(command, module.SUMMARY, keys))
            return 0
        config = parse_keys(rest, keys, command)
        return int(module.run(config) or 0)
    except (ValueError, OSError) as err:  # bad input, missing file, disk full: one line
        if os.environ.get("MIXPREC_DEBUG", "") not in ("", "0"):
            raise
        print(f"mixprec {command}: {err}  (MIXPREC_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
