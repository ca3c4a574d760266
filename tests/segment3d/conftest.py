"""Fixtures for the 3D segmentation tests: tiny NIfTI datasets written into tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from mixprec.vision.segment3d.builtin import generate


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_organs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """organs3d at 32x32x24, 4 train + 2 val cases (its data YAML)."""
    return generate("organs3d", tmp_path_factory.mktemp("organs") / "organs3d", 4, 2, (32, 32, 24))
