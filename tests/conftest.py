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


class CountingBackend:
    """A ``torch.compile`` backend for wiring tests: counts the graphs dynamo hands it (with the
    names of their ops) and their calls, and runs each graph unchanged (no inductor)."""

    __name__ = "counting"

    def __init__(self) -> None:
        self.graphs: list[list[str]] = []
        self.calls = 0

    def __call__(self, gm, example_inputs):
        self.graphs.append([getattr(n.target, "__name__", str(n.target))
                            for n in gm.graph.nodes if n.op == "call_function"])

        def run(*args):
            self.calls += 1
            return gm.forward(*args)

        return run


@pytest.fixture
def counting_compile(monkeypatch):
    """compile=True runs through a ``CountingBackend`` (``mixprec.vision.compiled.BACKEND``)."""
    import mixprec.vision.compiled as compiled

    backend = CountingBackend()
    monkeypatch.setattr(compiled, "BACKEND", backend)
    torch._dynamo.reset()
    yield backend
    torch._dynamo.reset()
