"""``python -m mixprec.cli ...`` (what torchrun re-enters for data-parallel runs)."""

from mixprec.cli.main import main

raise SystemExit(main())
