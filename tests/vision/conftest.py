"""Fixtures for the vision tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from vision_helpers import make_tiny_dataset


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    return make_tiny_dataset(tmp_path / "tiny")


@pytest.fixture(autouse=True)
def _one_thread():
    """The test machine is shared by several jobs; torch's intra-op threads then spin against
    each other (20x slower here). One thread gives the same numerics; restored afterwards."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
