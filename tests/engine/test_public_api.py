import subprocess
import sys

import mixprec as mp


def test_every_public_name_resolves():
    for name in mp.__all__:
        assert getattr(mp, name) is not None, name


def test_subpackage_names_stay_callable_after_submodule_import():
    """mp.emulate / mp.bench / mp.diagnose are subpackages and functions at once."""
    code = """
import mixprec.emulate, mixprec.bench, mixprec.diagnose
import mixprec as mp
for name in ("emulate", "bench", "diagnose"):
    assert callable(getattr(mp, name)), name
with mp.emulate("16-mixed"):
    pass
import mixprec.bench.autobatch as autobatch  # module attributes still walk after mp.bench
assert autobatch.largest_batch
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
