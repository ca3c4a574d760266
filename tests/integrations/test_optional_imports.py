"""The integrations are optional: importing mixprec loads none of the frameworks, and an
integration whose framework is missing says which extra to install."""

import importlib
import subprocess
import sys

import pytest


def test_import_mixprec_loads_no_framework():
    code = ("import sys, mixprec, mixprec.integrations; mixprec.Precision; print(sorted(m for m in "
            "('lightning', 'accelerate', 'timm', 'tensorboard') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_missing_lightning_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "lightning.fabric.plugins.precision", None)  # import fails
    monkeypatch.delitem(sys.modules, "mixprec.integrations.lightning", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'mixprec\[lightning\]'"):
        importlib.import_module("mixprec.integrations.lightning")
