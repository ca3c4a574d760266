"""``python -m mixprec ...`` (and ``torchrun -m mixprec train ...``) run the CLI."""

from mixprec.cli import main

raise SystemExit(main())
