"""The ``mixprec`` command: ``mixprec train|val|predict|bench|doctor|check|export|benchmark key=value ...``.

This is the only module that reads ``sys.argv``. Each command lives in its own module, which
exposes ``KEYS`` (dict of ``mixprec.cliargs.Key``), ``SUMMARY`` (one line) and
``run(config: dict) -> int``; the module is imported only when its command is used.
"""

from __future__ import annotations

import importlib
import sys

from mixprec.cliargs import format_help, parse_keys

COMMANDS: dict[str, str] = {
    "check": "mixprec.check_cli",
    "train": "mixprec.vision.commands.train",
    "val": "mixprec.vision.commands.val",
    "predict": "mixprec.vision.commands.predict",
    "bench": "mixprec.bench.command",
    "doctor": "mixprec.diagnose.command",
    "export": "mixprec.export.commands.export",
    "benchmark": "mixprec.export.commands.benchmark",
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
    return int(module.run(config) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
