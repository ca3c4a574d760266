"""The ``mixprec`` command: ``mixprec train|val|predict|bench|doctor|check key=value ...``.

This is the only module that reads ``sys.argv``. Each command lives in its own module, which
exposes ``KEYS`` (dict of ``mixprec.cliargs.Key``), ``SUMMARY`` (one line) and
``run(config: dict) -> int``; the module is imported only when its command is used.
A ``ValueError`` or ``OSError`` (bad input, a missing file, a full disk) out of a command is one line,
``mixprec <cmd>: <message>``, with exit status 2; ``MIXPREC_DEBUG=1`` re-raises it (traceback).
"""

from __future__ import annotations

import importlib
import os
import sys

from mixprec.cliargs import format_help, parse_keys

COMMANDS: dict[str, str] = {
    "check": "mixprec.check_cli",
    "train": "mixprec.vision.commands.train",
    "val": "mixprec.vision.commands.val",
    "predict": "mixprec.vision.commands.predict",
    "bench": "mixprec.bench.command",
    "doctor": "mixprec.diagnose.command",
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
    if any(a in ("-h", "--help", "help") for a in rest):
        print(format_help(command, module.SUMMARY, module.KEYS))
        return 0
    try:
        config = parse_keys(rest, module.KEYS, command)
    except ValueError as err:
        print(f"mixprec {command}: {err}", file=sys.stderr)
        return 2
    try:
        return int(module.run(config) or 0)
    except (ValueError, OSError) as err:  # bad input, missing file, disk full: one line
        if os.environ.get("MIXPREC_DEBUG", "") not in ("", "0"):
            raise
        print(f"mixprec {command}: {err}  (MIXPREC_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
