"""Vision tasks as workloads for the task-agnostic tools (``mixprec.bench``, ``mixprec.diagnose``).

The tools take a model, batches and a loss; this module builds them from the task a model
belongs to, so that bench and diagnose never import a task. The CLI composes the two.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import torch

from mixprec._tree import map_leaves
from mixprec.keys import check_keys
from mixprec.vision.precision_choice import select_device
from mixprec.vision.task import task_for_model

__all__ = ["bench_workload", "doctor_workload"]


def bench_workload(model: str, size: int, data: str | None = None) -> Any:
    """The ``mixprec.bench.BenchTask`` of a vision model YAML (e.g. ``det-n.yaml``) at ``size``
    (pixels, or voxels per side for a volume task); ``data``: real batches of that data YAML."""
    return task_for_model(model).workload(model, size, data)


def doctor_workload(config: dict[str, Any]) -> tuple[torch.nn.Module, Iterator[Any],
                                                     Callable[[torch.nn.Module, Any], torch.Tensor],
                                                     torch.device]:
    """``(model, batches, forward(model, batch) -> loss, device)`` for ``mixprec.diagnose``:
    the task's FP32 model on its training batches (endless, epoch after epoch: new shuffles and
    augmentations). ``config``: keys of the task's ``train`` (others are ignored). The forward
    pass runs under the caller's autocast; the loss in FP32 on the outputs cast to FP32, as the
    trainer computes it. Seed the global RNG first (the CLI does, under ``fork_rng``)."""
    task = task_for_model(str(config["model"]))
    keys = task.train_keys()
    args = check_keys({k: v for k, v in config.items() if k in keys}, keys, "doctor")
    task.check_args(args)
    device = select_device(args["device"])
    data = task.load_data(args)
    model = task.build_model(args, data, None).to(device)
    loss_fn = task.build_loss(args, model)
    loader, _ = task.loaders(args, data, int(args["batch"]), 1)

    def batches() -> Iterator[Any]:
        for epoch in itertools.count():
            loader.sampler.set_epoch(epoch)
            loader.dataset.set_epoch(epoch)
            task.on_epoch_start(loader, epoch, args)
            for b in loader:
                yield task.inputs(b, device)

    def forward(net: torch.nn.Module, batch: Any) -> torch.Tensor:
        inputs, targets = batch
        outputs = net(inputs)
        with torch.autocast(device.type, enabled=False):
            fp32 = map_leaves(lambda t: t.float() if torch.is_tensor(t) else t, outputs)
            return loss_fn(fp32, targets)[0]

    return model, batches(), forward, device
