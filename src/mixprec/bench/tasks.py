"""What ``mixprec bench model=...`` measures: a model factory, a batch source and a loss.

bench knows no task: a vision model YAML (``model=det-n.yaml``) is a workload the vision task
defines (``mixprec.vision.task.Task.workload``); the CLI composes the two.

- ``model=convnet``: a small built-in conv classifier (Conv-BN-SiLU blocks) on synthetic images;
  quick, and what the tests use.
- ``model=package.module:function``: your own; ``function(imgsz=...)`` returns a ``BenchTask``
  (or a ``(model_fn, batch_fn, loss_fn)`` tuple).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["BenchTask", "convnet", "resolve_task"]


@dataclass(frozen=True)
class BenchTask:
    """``model_fn() -> nn.Module``, ``batch_fn(batch_size) -> (inputs, targets)`` and
    ``loss_fn(outputs, targets) -> scalar``, as ``mixprec.bench.bench`` takes them."""

    name: str
    model_fn: Callable[[], nn.Module]
    batch_fn: Callable[[int], tuple[Any, Any]]
    loss_fn: Callable[[Any, Any], torch.Tensor]


def _conv_block(c1: int, c2: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c1, c2, 3, stride, 1, bias=False), nn.BatchNorm2d(c2), nn.SiLU())


def convnet(imgsz: int = 32, width: int = 16, nc: int = 10) -> BenchTask:
    """A 4-block Conv-BN-SiLU classifier (stride 2 after the first block) with cross-entropy on
    random images (FP32, [0, 1]) and labels."""
    if imgsz < 8:
        raise ValueError(f"convnet needs imgsz >= 8, got {imgsz}")

    def model_fn() -> nn.Module:
        return nn.Sequential(
            _conv_block(3, width, 1), _conv_block(width, 2 * width, 2),
            _conv_block(2 * width, 2 * width, 1), _conv_block(2 * width, 4 * width, 2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, nc))

    def batch_fn(b: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.rand(b, 3, imgsz, imgsz), torch.randint(0, nc, (b,))

    return BenchTask(f"convnet (imgsz {imgsz}, width {width})", model_fn, batch_fn,
                     nn.functional.cross_entropy)


def resolve_task(model: str, imgsz: int, data: str | None = None) -> BenchTask:
    """The task ``model=...`` names; raises ValueError listing the accepted forms."""
    spec = str(model).strip()
    if spec.endswith((".yaml", ".yml")):
        raise ValueError(f"model={spec} is a vision model: its workload comes from the vision task "
                         "(mixprec.vision.task.task_for_model(model).workload(...))")
    if data is not None:
        raise ValueError(f"data={data} needs a detector model (model=det-n.yaml), not model={spec}")
    if spec == "convnet":
        return convnet(imgsz)
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"model={spec}: cannot import {attr!r} from {module_name!r} ({err})") from err
        task = factory(imgsz=imgsz)
        if isinstance(task, BenchTask):
            return task
        if isinstance(task, (tuple, list)) and len(task) == 3:
            return BenchTask(spec, *task)
        raise ValueError(f"model={spec}: {attr}(imgsz=...) must return a BenchTask or "
                         f"(model_fn, batch_fn, loss_fn), got {type(task).__name__}")
    raise ValueError(f"model={spec!r} is not a detector YAML (e.g. det-n.yaml), 'convnet', or "
                     "'package.module:function'")
