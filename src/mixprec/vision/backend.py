"""The backend seam: what maps a batch of images to the raw head outputs.

``validate`` and ``predict`` do the pre- and post-processing (letterbox, /255, decode, NMS,
mapping to original pixels) once, for every kind of model; a backend only runs the network:

    with as_backend(model_or_backend, autocast) as run:
        maps = run(images)        # FP32 images (B, 3, H, W) in [0, 1] -> list of head maps

``TorchBackend`` wraps a ``torch.nn.Module`` (eval mode inside the ``with``, restored after);
``mixprec.export.OnnxBackend`` runs an exported ``.onnx`` file through onnxruntime. A backend
exposes ``names``, ``device`` (where the input should live) and ``head`` (an object with the
``stride``, ``reg_max`` and ``nc`` that decoding needs).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["Backend", "TorchBackend", "as_backend"]


@runtime_checkable
class Backend(Protocol):
    names: dict[int, str]

    @property
    def device(self) -> torch.device: ...

    @property
    def head(self) -> Any: ...

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]: ...

    def running(self) -> contextlib.AbstractContextManager[Backend]: ...


class TorchBackend:
    """A PyTorch model as a backend; ``autocast``: a context factory such as ``prec.autocast``
    (None: FP32). Maps come back in the compute dtype, on the model's device."""

    def __init__(self, model: torch.nn.Module, autocast: Callable[[], Any] | None = None):
        self.model, self.autocast = model, autocast

    @property
    def names(self) -> dict[int, str]:
        return self.model.names

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def head(self) -> Any:
        return self.model.head

    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        with self.autocast() if self.autocast else contextlib.nullcontext():
            return self.model(images)

    @contextlib.contextmanager
    def running(self) -> Iterator[TorchBackend]:
        """Eval mode and no autograd inside; the model's mode is restored after."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                yield self
        finally:
            self.model.train(was_training)


def as_backend(model: torch.nn.Module | Backend,
               autocast: Callable[[], Any] | None = None) -> contextlib.AbstractContextManager:
    """``with as_backend(m) as run``: a module is wrapped in ``TorchBackend``; a backend is
    used as it is (``autocast`` is then ignored: the backend's precision is fixed)."""
    backend = TorchBackend(model, autocast) if isinstance(model, torch.nn.Module) else model
    return backend.running()
