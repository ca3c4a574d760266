import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed_and_restore_torch_state():
    """Every test starts from the same seed and leaves torch's global state as it found it."""
    torch.manual_seed(0)
    dtype = torch.get_default_dtype()
    yield
    assert torch.get_default_dtype() == dtype, "test leaked a default-dtype change"
    assert not torch.is_autocast_enabled("cpu"), "test leaked an enabled CPU autocast"
