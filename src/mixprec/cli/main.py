"""The ``mixprec`` command: ``mixprec train|val|predict|bench|doctor|check key=value ...``.

This is the only module that reads ``sys.argv``. Each command lives in its own module, which
exposes ``KEYS`` (dict of ``mixprec.keys.Key``), ``SUMMARY`` (one line) and
``run(config: dict) -> int``; the module is imported only when its command is used.
"""

from __future__ import annotations

import importlib
import sys

from mixprec.cli.args import format_help, parse_keys

COMMANDS: dict[str, str] = {
    "check": "mixprec.cli.check",
    "train": "mixprec.cli.train",
    "val": "mixprec.cli.val",
    "predict": "mixprec.cli.predict",
    "bench": "mixprec.cli.bench",
    "doctor": "mixprec.cli.doctor",
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
    try:  # a command whose keys depend on the model named (the task's keys) has keys_for(argv)
        keys = module.keys_for(rest) if hasattr(module, "keys_for") else module.KEYS
    except (ValueError, FileNotFoundError) as err:
        print(f"mixprec {command}: {err}", file=sys.stderr)
        return 2
    if any(a in ("-h", "--help", "help") for a in rest):
        print(format_help(command, module.SUMMARY, keys))
        return 0
    try:
        config = parse_keys(rest, keys, command)
    except ValueError as err:
        print(f"mixprec {command}: {err}", file=sys.stderr)
        return 2
    return int(module.run(config) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
