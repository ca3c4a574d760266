"""Deprecated location, kept for one release: the key schema is ``mixprec.keys`` and the
command-line parser ``mixprec.cli.args``."""

from mixprec.cli.args import format_help, parse_keys
from mixprec.keys import Key, parse_value

__all__ = ["Key", "format_help", "parse_keys", "parse_value"]
