"""``mixprec train|val|predict`` command modules (see ``mixprec.cli``)."""
