"""``mixprec bench key=value ...``: does mixed precision pay on this model and this machine?

Prints the table, then writes ``bench.json``, ``bench.md``, ``bench_speed_memory.png`` and
``bench_loss.png`` into ``<project>/<name>`` (``runs/bench/bench``, ``bench2``, ...).
"""

from __future__ import annotations

from typing import Any

import torch

from mixprec.io import increment_path
from mixprec.keys import Key

SUMMARY = ("Measure step time, memory, energy, largest batch and convergence per precision, side "
           "by side (e.g. mixprec bench model=det-n.yaml imgsz=640 batch=16 device=cpu)")

KEYS: dict[str, Key] = {
    "model": Key("det-n.yaml", "detector YAML, 'convnet', or package.module:function"),
    "data": Key(None, "dataset YAML for real batches (default: synthetic)"),
    "imgsz": Key(640, "image size in pixels"),
    "patch": Key(None, "cubic patch side of a 3D segmentation model (unet3d-*.yaml); replaces imgsz"),
    "batch": Key(16, "batch size of the timed steps"),
    "precision": Key(["32", "16-mixed", "bf16-mixed", "16-master", "bf16-master"],
                     "comma-separated presets ('32' is always the baseline; old spelling: "
                     "precisions=)", kind="list"),
    "steps": Key(20, "timed steps per precision"),
    "warmup": Key(3, "untimed warm-up steps per precision (memory is measured here)"),
    "repeats": Key(None, "timing rounds the steps are split into (median/min/max over them); "
                         "None: min(5, steps)"),
    "device": Key(None, "cpu, cuda, cuda:1 (default: cuda if available)"),
    "emulate": Key(False, "emulate FP16/BF16 numerics in FP32 (fast on any CPU; memory/speed "
                          "are then the emulator's)"),
    "budget": Key(None, "largest-batch budget: bytes (2G, 512M) or a fraction of CUDA memory; "
                        "default 0.6 on CUDA, off on CPU; 0 = off"),
    "max_batch": Key(1024, "upper limit of the largest-batch search"),
    "optimizer": Key("AdamW", "AdamW, Adam or SGD"),
    "lr": Key(0.001, "learning rate"),
    "seed": Key(0, "seed for the model init and the batches"),
    "energy": Key(True, "read energy counters (NVML / RAPL) when available"),
    "plots": Key(True, "write the PNG plots"),
    "project": Key("runs/bench", "output folder"),
    "name": Key("bench", "run name (incremented: bench, bench2, ...)"),
    "exist_ok": Key(False, "reuse project/name instead of incrementing"),
}

_OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}


def _optimizer_fn(name: str, lr: float) -> Any:
    key = str(name).lower()
    if key not in _OPTIMIZERS:
        raise ValueError(f"optimizer={name!r}; use one of AdamW, Adam, SGD")
    cls = _OPTIMIZERS[key]
    kwargs: dict[str, Any] = {"lr": float(lr)}
    if key == "sgd":
        kwargs["momentum"] = 0.9

    def make(params: Any) -> torch.optim.Optimizer:
        return cls(params, **kwargs)

    make.__name__ = f"{cls.__name__}({', '.join(f'{k}={v}' for k, v in kwargs.items())})"
    return make


def run(config: dict[str, Any]) -> int:
    from mixprec.bench.report import format_table, save_report
    from mixprec.bench.runner import bench
    from mixprec.bench.tasks import resolve_task
    from mixprec.cli.timing_env import print_timing_warning
    from mixprec.hardware import select_device

    if config["repeats"] is None and isinstance(config["steps"], int):
        config = {**config, "repeats": max(1, min(5, config["steps"]))}
    size_key = "patch" if config["patch"] is not None else "imgsz"  # a 3D task's name for the size
    for key in (size_key, "batch", "steps", "warmup", "repeats", "max_batch", "seed"):
        if not isinstance(config[key], int) or isinstance(config[key], bool):
            raise ValueError(f"{key}={config[key]!r} must be an integer")
    config = {**config, "imgsz": config[size_key]}
    spec = str(config["model"]).strip()
    if spec.endswith((".yaml", ".yml")):  # a vision task's model: the task defines the workload
        from mixprec.vision.workloads import bench_workload

        task = bench_workload(spec, int(config["imgsz"]), config["data"])
    else:
        task = resolve_task(spec, int(config["imgsz"]), config["data"])
    device = None if config["device"] in (None, "") else str(config["device"])
    precisions = config["precision"]
    precisions = [str(p) for p in (precisions if isinstance(precisions, list) else [precisions])]
    if select_device(device).type == "cpu":
        print_timing_warning(torch.get_num_threads())
    try:
        result = bench(
            task.model_fn, task.batch_fn, task.loss_fn, precisions=precisions,
            batch_size=config["batch"], steps=config["steps"], warmup=config["warmup"],
            repeats=config["repeats"], device=device,
            optimizer_fn=_optimizer_fn(config["optimizer"], config["lr"]), seed=config["seed"],
            emulate=bool(config["emulate"]), budget=config["budget"],
            max_batch=config["max_batch"], energy=bool(config["energy"]), model_name=task.name,
            log=lambda msg: print(f"bench: {msg}", flush=True))
    except torch.OutOfMemoryError:  # the '32' baseline ran out of device memory
        result = None
    if result is None:  # outside the except block: the failed states are freed first
        raise _oom_report(config, task, spec, device)
    print(format_table(result))
    save_dir = increment_path(config["project"], config["name"], bool(config["exist_ok"]))
    paths = save_report(result, save_dir, plots=bool(config["plots"]))
    print(f"\nresults saved to {save_dir}/ ({', '.join(p.name for p in paths.values())})")
    return 0


def _oom_report(config: dict[str, Any], task: Any, spec: str, device: str | None) -> Exception:
    from mixprec.hardware import select_device

    dev = select_device(device)
    opt = _optimizer_fn(config["optimizer"], config["lr"])
    size_key = "patch" if config["patch"] is not None else "imgsz"
    if spec.endswith((".yaml", ".yml")):
        from mixprec.vision.oom import bench_oom_report

        return bench_oom_report(spec, int(config["imgsz"]), int(config["batch"]), "32", dev,
                                config["data"], opt)
    from mixprec.bench.oom import workload_oom_report

    return workload_oom_report(task, failed="32", batch=int(config["batch"]), scale=1.0,
                               size=f"{size_key} {config['imgsz']}", device=dev, optimizer_fn=opt,
                               size_key=size_key)
