"""The fault suite's ledger: every test injects faults and records how each ended.

``survived``: the run went on with its state intact, or stopped with a named one-line error, or
the bad input was skipped and counted. ``lost``: a parameter or checkpoint got inf/NaN, a file was
left half-written, a run could not resume bit-identically, or an unnamed exception escaped.
At the end of the session pytest prints ``faults: N injected, N survived, N lost``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "vision"))  # vision_helpers, det-t.yaml


@dataclass
class Ledger:
    injected: int = 0
    survived: int = 0
    lost: list[str] = field(default_factory=list)

    def record(self, ok: bool, what: str) -> bool:
        """One injected fault; ``ok``: it was survived. Returns ``ok`` (assert it in the test)."""
        self.injected += 1
        if ok:
            self.survived += 1
        else:
            self.lost.append(what)
        return ok


LEDGER = Ledger()


@pytest.fixture
def faults() -> Ledger:
    return LEDGER


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)  # shared test machine: one intra-op thread, same numerics
    yield
    torch.set_num_threads(n)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if LEDGER.injected:
        terminalreporter.write_line(f"faults: {LEDGER.injected} injected, {LEDGER.survived} survived, "
                                    f"{len(LEDGER.lost)} lost")
        for what in LEDGER.lost[:20]:
            terminalreporter.write_line(f"  lost: {what}")
