import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: small models train faster than with threads fighting for cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
