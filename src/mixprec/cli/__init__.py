"""The ``mixprec`` command line: one module per command, one key schema (``mixprec.keys``).

The only package that reads ``sys.argv``, the environment or torchrun's launcher; it passes
what it found to the library (``train(..., dist=ctx)``).
"""

from mixprec.cli.main import COMMANDS, main

__all__ = ["COMMANDS", "main"]
