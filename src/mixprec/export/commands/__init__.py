"""``mixprec export|benchmark`` command modules (see ``mixprec.cli``); the logic lives in
``mixprec.export``."""
