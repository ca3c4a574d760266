"""The task seam: what differs between vision tasks, behind one small object.

The shared training loop (``mixprec.vision.trainer``) owns the optimizer, schedule, EMA,
``Precision``, checkpoints, ``results.csv``, resume and the precision record. A ``Task`` owns
everything the loop must not know: the data, the model family, the loss, the validation metric,
predictions and the ``mixprec bench`` workload. Detection (``mixprec.vision.detect``) is the
first task; adding one is a subclass plus one line in ``TASKS`` (see ``docs/tasks.md``).

Conventions the loop relies on:

- ``load_data(args)`` returns an object with ``names`` (``{index: name}``) and ``nc``.
- ``loaders`` return DataLoaders whose ``dataset`` and ``sampler`` have ``set_epoch(e)``.
- ``loss_fn(outputs, targets) -> (loss, items)``: ``loss`` an FP32 scalar to backpropagate,
  ``items`` a detached 1-D tensor with one entry per name in ``loss_names`` (results.csv
  ``train/<name>_loss``; their finiteness is how the loop notices a non-finite loss).
- ``validate(...)`` returns metrics with a ``fitness`` float (higher is better; picks best.pt).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from mixprec.io import load_checkpoint
from mixprec.keys import Key

__all__ = ["LOOP_KEYS", "TASKS", "Task", "get_task", "load_weights", "task_for_model",
           "train_keys"]

#: keys of the shared loop (optimizer, schedule, precision, run folder); a task adds its own
#: and may override a default (``Task.keys``). ``project``'s default is ``runs/<task.name>``.
LOOP_KEYS: dict[str, Key] = {
    "epochs": Key(100, "number of epochs"),
    "batch": Key(16, "samples per batch; -1 picks the largest batch that fits (mixprec.bench)"),
    "device": Key(None, "cpu, 0, cuda:0 ...; None picks cuda:0 when available, else cpu"),
    "workers": Key(2, "dataloader worker processes"),
    "optimizer": Key("auto", "SGD, AdamW, Adam or auto (AdamW for <= 10k steps, else SGD)"),
    "lr0": Key(0.01, "initial learning rate (ignored with optimizer=auto)"),
    "lrf": Key(0.01, "final learning rate as a fraction of lr0"),
    "momentum": Key(0.937, "SGD momentum / Adam beta1 (ignored with optimizer=auto)"),
    "weight_decay": Key(0.0005, "weight decay, scaled by batch * accumulate / nbs"),
    "warmup_epochs": Key(3.0, "warmup length in epochs (at most epochs - 1)"),
    "warmup_momentum": Key(0.8, "momentum at the start of warmup"),
    "warmup_bias_lr": Key(0.1, "bias LR at the start of warmup (Ultralytics forces 0 with auto)"),
    "cos_lr": Key(False, "cosine learning-rate decay (else linear)"),
    "nbs": Key(64, "nominal batch size: gradients accumulate over round(nbs / batch) batches"),
    "max_norm": Key(10.0, "gradient clipping max norm (after unscaling)"),
    "amp": Key(True, "True: auto policy (check_amp on CUDA); False: FP32; or a preset such as "
                     "bf16-mixed, 16-mixed, bf16-master (alias of precision=)"),
    "precision": Key(None, "a preset (bf16-mixed, 16-mixed, 16-master, 32, auto); overrides amp"),
    "emulate": Key(False, "emulate the policy's numerics in FP32 (mixprec.emulate)"),
    "ema": Key(True, "validate and save an EMA of the weights (False: the raw trained weights)"),
    "compile": Key(False, "torch.compile (inductor) the training forward, and the loss where the task's "
                          "compiles cleanly; compiled before the first step (docs/compile.md)"),
    "val": Key(True, "validate every epoch (False: only after the last epoch)"),
    "resume": Key(False, "True (latest run, or model=.../last.pt) or a path to last.pt"),
    "patience": Key(100, "stop after this many epochs without fitness improvement"),
    "nan_recovery": Key(25, "after this many optimizer steps in a row with an inf/NaN loss, act "
                            "(nan_action); 0: off"),
    "nan_action": Key("reload", "reload: restore the last good state and halve the LR (3 times at "
                                "most, then stop); stop: stop with the reason"),
    "seed": Key(0, "random seed (shuffling, augmentation, initialisation)"),
    "project": Key("runs/task", "folder that holds the runs"),
    "name": Key("train", "run name; train, train2, ... unless exist_ok"),
    "exist_ok": Key(False, "reuse the run folder if it exists"),
    "plots": Key(True, "write results.png and the task's validation plots"),
    "tensorboard": Key(False, "TensorBoard event files in the run folder (scale, skips, losses, metrics)"),
    "datasets_dir": Key("datasets", "where built-in datasets are generated"),
    "verbose": Key(True, "print progress bars and tables"),
}


def train_keys(task: str, keys: dict[str, Key]) -> dict[str, Key]:
    """The task's ``keys`` first, then the loop's it does not override; ``project`` defaults to
    ``runs/<task>``."""
    out = {**keys, **{k: v for k, v in LOOP_KEYS.items() if k not in keys}}
    if "project" not in keys:
        out["project"] = Key(f"runs/{task}", "folder that holds the runs")
    return out


class Task(ABC):
    """One vision task. Subclasses set the class attributes and implement the methods; the
    shared loop calls nothing else. Methods get ``args``: the run's full key dict."""

    name: ClassVar[str] = "task"             # run folders runs/<name>/..., checkpoint record
    keys: ClassVar[dict[str, Key]] = {}      # task keys (model, data, size, loss gains ...)
    val_keys: ClassVar[dict[str, Key]] = {}  # keys of ``Model.val`` / ``mixprec val``
    loss_names: ClassVar[tuple[str, ...]] = ("loss",)
    fitness_name: ClassVar[str] = "fitness"  # printed by early stopping
    size_key: ClassVar[str] = "imgsz"        # the input-size key ``Model.val`` takes from training
    compile_loss: ClassVar[bool] = False     # compile=True also compiles the loss (fullgraph=True)
    compile_loss_note: ClassVar[str] = ""    # why the loss stays eager under compile=True

    # ---- keys and checks ------------------------------------------------------------------
    def train_keys(self) -> dict[str, Key]:
        """Every key of ``train`` for this task: the loop's, overlaid with the task's."""
        return train_keys(self.name, self.keys)

    def claims(self, model: str) -> bool:
        """Whether ``model`` (a YAML name or path) is a model of this task."""
        return False

    def check_args(self, args: dict[str, Any]) -> None:
        """Raise ValueError (naming the key, the value and the fix) on values that cannot work.
        The default accepts everything."""
        return None

    # ---- data and model -------------------------------------------------------------------
    @abstractmethod
    def load_data(self, args: dict[str, Any]) -> Any:
        """The data config: an object with ``names`` (``{index: name}``) and ``nc``."""

    @abstractmethod
    def new_model(self, source: str, nc: int | None = None) -> nn.Module:
        """A fresh FP32 model from a model YAML (name or path); ``nc``: classes (None: the YAML's)."""

    @abstractmethod
    def build_model(self, args: dict[str, Any], data: Any, model: nn.Module | None) -> nn.Module:
        """The FP32 model to train: ``model`` (kept when it fits ``data``) or ``args['model']``."""

    @abstractmethod
    def model_record(self, model: nn.Module) -> dict[str, Any]:
        """What rebuilds ``model`` from a checkpoint, without its weights (plain data)."""

    @abstractmethod
    def model_from_record(self, record: dict[str, Any]) -> nn.Module:
        """An FP32 module built from ``model_record``'s output (weights loaded by the caller)."""

    @abstractmethod
    def loaders(self, args: dict[str, Any], data: Any, batch: int, world: int) -> tuple[Any, Any]:
        """``(train_loader, val_loader)``; ``batch`` is the global batch, ``world`` processes."""

    def val_loader(self, args: dict[str, Any], data: Any, split: str) -> Any:
        """A loader over ``split`` for ``Model.val`` (optional: tasks without it cannot ``val``)."""
        raise NotImplementedError(f"task {self.name!r} has no val loader")

    def on_epoch_start(self, loader: Any, epoch: int, args: dict[str, Any]) -> None:
        """Per-epoch data switches (e.g. mosaic off for the last epochs); default: none."""
        return None

    @abstractmethod
    def inputs(self, batch: Any, device: torch.device) -> tuple[Any, Any]:
        """``(model inputs on device, targets)`` from a loader batch."""

    def batch_stats(self, batch: Any, inputs: Any) -> tuple[Any, ...]:
        """Extra progress-bar columns (``progress_columns``) for one batch."""
        return ()

    progress_columns: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def synthetic_batch(self, args: dict[str, Any], batch: int, nc: int) -> tuple[Any, Any]:
        """``(inputs, targets)`` of random data at the run's size (autobatch probes, bench)."""

    def num_classes(self, data: Any) -> int:
        return int(data.nc)

    def lr_decay(self, args: dict[str, Any]) -> Callable[[float], float] | None:
        """The LR factor after warmup as a function of progress in [0, 1] (e.g. nnU-Net's poly);
        None: the loop's linear/cosine decay to ``lrf``."""
        return None

    # ---- loss and metrics -----------------------------------------------------------------
    @abstractmethod
    def build_loss(self, args: dict[str, Any], model: nn.Module) -> Callable[[Any, Any], Any]:
        """``loss_fn(outputs, targets) -> (FP32 scalar loss, detached items per loss_names)``."""

    @abstractmethod
    def validate(self, model: nn.Module, loader: Any, data: Any, autocast: Callable[[], Any] | None,
                 loss_fn: Callable | None, args: dict[str, Any], save_dir: Path | None,
                 final: bool) -> Any:
        """Metrics of ``model`` on ``loader`` with a ``fitness`` float. ``final``: the full report
        (per-class table, saved files) after training or for ``val``; else the per-epoch check."""

    @abstractmethod
    def metric_columns(self, metrics: Any | None) -> dict[str, float]:
        """results.csv columns for ``metrics`` (NaN for every column when None)."""

    def summary(self, metrics: Any) -> str:
        """One line for the end of ``mixprec train``."""
        return f"fitness={metrics.fitness:.4f}"

    # ---- prediction and tools -------------------------------------------------------------
    def predict(self, model: nn.Module, source: Any, **kwargs: Any) -> list[Any]:
        """Predictions for ``source`` (optional: tasks without it cannot ``predict``)."""
        raise NotImplementedError(f"task {self.name!r} has no predict")

    probe_side: ClassVar[int] = 128  # largest size the out-of-memory report measures at

    def memory_probe(self, args: dict[str, Any], model: nn.Module) -> tuple[dict[str, Any], float, str]:
        """For the out-of-memory report (``mixprec.vision.oom``): ``(args at a probe size no
        larger than the run's, the run's pixels per sample / the probe's, the run's size in
        words)``; a step is measured at the probe and its activations scaled by the ratio.
        Default: square images of side ``args[size_key]``, probed at ``min(side, probe_side)``."""
        side = int(args[self.size_key])
        probe = min(side, self.probe_side)
        return {**args, self.size_key: probe}, (side / probe) ** 2, f"{self.size_key} {side}"

    def workload(self, model: str, size: int, data: str | None = None) -> Any:
        """The ``mixprec bench model=...`` workload (a ``mixprec.bench.BenchTask``; optional)."""
        raise NotImplementedError(f"task {self.name!r} has no bench workload")


#: ``name -> "module:Class"``, imported on first use. A new task is one line here.
TASKS: dict[str, str] = {
    "detect": "mixprec.vision.detect:DetectTask",
    "segment3d": "mixprec.vision.segment3d:Segment3DTask",
}
DEFAULT_TASK = "detect"
_LOADED: dict[str, Task] = {}


def get_task(task: str | Task | None = None) -> Task:
    """The registered task called ``task`` (a Task is returned as is); None: detection."""
    if isinstance(task, Task):
        return task
    name = DEFAULT_TASK if task is None else str(task)
    if name not in TASKS:
        raise ValueError(f"task={name!r} is not a task; use one of {', '.join(TASKS)}")
    if name not in _LOADED:
        module, _, cls = TASKS[name].partition(":")
        _LOADED[name] = getattr(importlib.import_module(module), cls)()
    return _LOADED[name]


def load_weights(path: str | Path, task: Task | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The FP32 model (EMA weights) of a run's checkpoint, built by ``task`` (default: the task
    its record names), and the checkpoint dict (loaded with ``weights_only=True``)."""
    from mixprec.vision.train_args import check_checkpoint

    ckpt = check_checkpoint(load_checkpoint(path), path)
    record = ckpt["model"]
    model = (task or task_for_model(path, record)).model_from_record(record)
    model.load_state_dict(record["state_dict"])
    return model, ckpt


def onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of an exported ``.onnx`` (empty when it has none; weights are not
    loaded). ``mixprec.export.read_metadata`` is the checked reader; this is for picking the task."""
    import json

    import onnx

    props = onnx.load(str(path), load_external_data=False).metadata_props
    try:
        return {p.key: json.loads(p.value) for p in props}
    except json.JSONDecodeError:
        return {}


def task_for_model(model: str | Path, record: dict[str, Any] | None = None) -> Task:
    """The task of a model: a checkpoint's model record names it; a YAML is claimed by its
    task (detection when no other task claims it)."""
    if record is None and str(model).endswith(".pt") and Path(model).is_file():
        record = load_checkpoint(model).get("model", {})
    if record is None and str(model).endswith(".onnx") and Path(model).is_file():
        record = onnx_metadata(model)  # an exported model names its task in its metadata
    if record is not None:
        return get_task(record.get("task", DEFAULT_TASK))
    for name in TASKS:
        if name != DEFAULT_TASK and get_task(name).claims(str(model)):
            return get_task(name)
    return get_task(DEFAULT_TASK)
