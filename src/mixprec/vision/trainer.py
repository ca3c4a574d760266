"""The shared training loop of every vision task: ``train(args, task=...) -> TrainResult``.

``build(args, task)`` assembles a run from the task's parts (data loaders, model, loss) and the
shared ones (``Precision``, optimizer, schedule, EMA, run folder); ``train_one_epoch`` is the
loop, where precision is reached only through ``prec.autocast()``, ``prec.backward(loss)`` and
``prec.step(...)``; ``train`` adds validation, checkpoints (``weights/last.pt``, ``best.pt``),
``results.csv``, the precision record, early stopping and resume. What differs per task sits
behind ``mixprec.vision.task.Task``. Callbacks ``on_batch_end(state, batch)`` and
``on_epoch_end(state, epoch)`` let other tools (telemetry) look inside. Rank 0 also records why
steps were skipped (``skipped_steps.jsonl``) and where the first inf/NaN loss came from
(``nan_locator.json``) with the numerics doctor (``mixprec.vision.numerics_record``).

Data-parallel runs take a ``DistContext`` (``dist=``) from the caller: the library never joins
a process group by itself (``mixprec train`` under torchrun passes it).
"""

from __future__ import annotations

import functools
import math
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from mixprec._seed import seeded
from mixprec.distributed import launch as dp
from mixprec.distributed.ranks import is_main_process
from mixprec.io import load_checkpoint, save_checkpoint
from mixprec.keys import check_keys
from mixprec.precision import Precision
from mixprec.vision.compiled import compile_step
from mixprec.vision.numerics_record import NumericsRecord
from mixprec.vision.optim import (
    ModelEMA,
    Schedule,
    build_optimizer,
    plan_steps,
    resolve_optimizer,
    warmup_accumulate,
)
from mixprec.vision.plotting import plot_results
from mixprec.vision.precision_choice import choose_precision, select_device
from mixprec.vision.recovery import NanRecovery
from mixprec.vision.run import ResultsLog, increment_path, write_yaml
from mixprec.vision.task import Task, get_task, load_weights, task_for_model
from mixprec.vision.train_args import check_checkpoint, check_train_values, resume_args

__all__ = ["TrainResult", "TrainState", "build", "load_weights", "train", "train_one_epoch"]


@dataclass
class TrainState:
    """Everything a training run holds; ``build`` makes it, the loop mutates it."""

    args: dict[str, Any]
    task: Task
    data: Any
    model: torch.nn.Module
    loss_fn: Callable[[Any, Any], Any]
    prec: Precision
    precision_reason: str
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    ema: ModelEMA
    train_loader: Any
    val_loader: Any
    accumulate: int
    device: torch.device
    save_dir: Path
    epoch: int = 0
    best_fitness: float | None = None
    best_epoch: int = -1
    scale_history: list[dict[str, Any]] = field(default_factory=list)
    forward: Any = None  # what the loop calls instead of ``model``: the DistributedDataParallel
    # wrapper in a data-parallel run, or ``torch.compile(model)`` with compile=True
    numerics: NumericsRecord | None = None  # skip attribution + NaN locator (rank 0, in ``train``)
    recovery: NanRecovery | None = None  # reload/stop after a run of inf/NaN losses (``train``)
    last_losses: dict[str, float] | None = None  # the last batch's losses by name, for callbacks
    warmup_iters: int = 0  # batches over which ``accumulate`` ramps up from 1 (``warmup_accumulate``)


@dataclass
class TrainResult:
    save_dir: Path
    best: Path
    last: Path
    metrics: Any  # the task's metrics (detection: ValResults), None if never validated
    epochs_run: int


def _memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.memory_reserved(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: KiB -> GB


def _batch_size(args: dict[str, Any], task: Task, model: torch.nn.Module,
                make_precision: Callable[[], Precision], loss_fn: Callable, device: torch.device,
                nc: int) -> int:
    if args["batch"] != -1:
        if int(args["batch"]) < 1:
            raise ValueError(f"batch={args['batch']}: use a positive batch, or -1 for autobatch")
        return int(args["batch"])
    from mixprec.bench.autobatch import largest_batch

    # on CPU a probe at a large batch takes minutes: extrapolate from batches 1 and 2
    found = largest_batch(model, lambda b: task.synthetic_batch(args, b, nc),
                          lambda out, t: loss_fn(out, t)[0],
                          precision=make_precision, device=device,
                          max_batch=256, measure="linear" if device.type == "cpu" else "auto")
    print(f"autobatch: batch={found.batch} ({found.budget_source})")
    return max(int(found.batch), 1)


def _check_dist(dist: dp.DistContext | None) -> None:
    if dist is None and dp.launched_by_torchrun():
        raise ValueError("started by torchrun but train() got no dist=: pass "
                         "dist=mixprec.distributed.init_from_launcher(device) to train data-parallel "
                         "(or run `torchrun -m mixprec train ...`, which does)")


def _optimization(args: dict[str, Any], task: Task, data: Any, model: torch.nn.Module, batch: int,
                  nb: int, n_samples: int) -> tuple[Any, Schedule, int, int, str, float, str]:
    """Optimizer, schedule, accumulation and warmup batches for ``batch`` (the global batch),
    ``nb`` batches per epoch over ``n_samples``. During the warmup batches ``accumulate`` ramps
    from 1 (``warmup_accumulate``, Ultralytics' rule); ``plan_steps`` counts the optimizer steps
    that rule takes, so the schedule's warmup and length are in steps."""
    epochs = int(args["epochs"])
    accumulate = min(max(round(args["nbs"] / batch), 1), nb)
    warmup_iters = round(min(args["warmup_epochs"], max(epochs - 1, 0)) * nb)
    warmup, total = plan_steps(nb, epochs, accumulate, warmup_iters)
    opt_name, lr0, momentum, why = resolve_optimizer(
        args["optimizer"], args["lr0"], args["momentum"], task.num_classes(data),
        math.ceil(n_samples / max(batch, args["nbs"])) * epochs)
    decay = args["weight_decay"] * batch * accumulate / args["nbs"]
    optimizer = build_optimizer(model, opt_name, lr0, momentum, decay)
    schedule = Schedule(optimizer, lr0, args["lrf"], total, warmup, bool(args["cos_lr"]),
                        args["warmup_bias_lr"], args["warmup_momentum"], momentum,
                        decay=task.lr_decay(args))
    info = f"optimizer: {why}; weight_decay={decay:.3g}, accumulate={accumulate}"
    return optimizer, schedule, accumulate, warmup_iters, opt_name, lr0, info


def _warm_up_batches(args: dict[str, Any], task: Task, loader: Any, device: torch.device,
                     nc: int) -> list[tuple[Any, Any]]:
    """Synthetic batches of every batch size ``loader`` yields (the full one, and the last,
    smaller one unless it is dropped), inputs on ``device``: compile=True compiles each shape
    before the first step instead of at the end of the first epoch."""
    full = int(loader.batch_size)
    sizes = [full]
    rest = len(loader.sampler) % full if not loader.drop_last else 0
    if rest:
        sizes.append(rest)
    out = []
    for b in sizes:
        inputs, targets = task.synthetic_batch(args, b, nc)
        out.append((inputs.to(device), targets))
    return out


def build(args: dict[str, Any], model: torch.nn.Module | None = None, save_dir: Path | None = None,
          task: Task | str | None = None, dist: dp.DistContext | None = None) -> TrainState:
    """Assemble a run from ``args`` (every key of ``task.train_keys()``). ``model``: start from
    these weights instead of ``args['model']``; ``dist``: this rank's ``DistContext`` in a
    data-parallel run. Seed the global RNG first (``train`` does, under ``fork_rng``). Prints
    the precision choice and its reason."""
    task = get_task(task)
    _check_dist(dist)
    device = dist.device if dist else select_device(args["device"])
    task.check_args(args)
    if args.get("compile", False) and dist is not None and dist.world_size > 1:
        raise ValueError("compile=True is not supported data-parallel yet (torchrun, device=0,1): "
                         "use compile=False, or train on one device")
    with dp.main_process_first():  # rank 0 generates a built-in dataset, the others wait
        data = task.load_data(args)
    model = task.build_model(args, data, model).to(device)
    loss_fn = task.build_loss(args, model)
    key = "precision" if args.get("precision") is not None else "amp"
    policy, reason = choose_precision(args[key], device, bool(args["emulate"]), key)
    make_precision = functools.partial(Precision, policy, device=device, emulate=bool(args["emulate"]))
    prec = make_precision()  # the run's one Precision; autobatch probes get their own
    print(f"precision: {prec.policy}{' (emulated)' if prec.emulate else ''} -- {reason}")
    batch = _batch_size(args, task, model, make_precision, loss_fn, device, task.num_classes(data))
    world = dist.world_size if dist else 1
    if batch % world:
        raise ValueError(f"batch={batch} is the global batch: make it divisible by the {world} processes")
    with dp.main_process_first():  # label caches are written once
        train_loader, val_loader = task.loaders(args, data, batch, world)
    if world > 1:  # each rank trains on its share; rank 0 validates on the whole val split
        train_loader = dp.shard_loader(train_loader, int(args["seed"]))
    optimizer, schedule, accumulate, warmup_iters, opt_name, lr0, info = _optimization(
        args, task, data, model, batch, len(train_loader), len(train_loader.dataset))
    model, optimizer = prec.setup(model, optimizer)
    forward = None
    if world > 1:
        from mixprec.distributed import ddp

        forward = ddp(model, optimizer, prec, device_ids=[device.index] if device.type == "cuda" else None)
    print(info)
    if args.get("compile", False):
        forward, loss_fn = compile_step(model, loss_fn, _warm_up_batches(args, task, train_loader, device,
                                                                          task.num_classes(data)),
                                        prec.autocast, task.compile_loss, task.compile_loss_note)
    if save_dir is None:
        save_dir = dp.broadcast_object(increment_path(args["project"], args["name"],
                                                      bool(args["exist_ok"])))
    if is_main_process():
        (save_dir / "weights").mkdir(parents=True, exist_ok=True)
    args = {**args, "batch": batch, "precision": str(prec.policy), "precision_reason": reason,
            "optimizer_resolved": opt_name, "lr0_resolved": lr0, "device_resolved": str(device),
            "world_size": world}
    return TrainState(args, task, data, model, loss_fn, prec, reason, optimizer, schedule,
                      ModelEMA(model, decay=0.9999 if args.get("ema", True) else 0.0),  # 0: a plain copy
                      train_loader, val_loader, accumulate, device, save_dir,
                      forward=forward, warmup_iters=warmup_iters)


def train_one_epoch(st: TrainState, callbacks: dict[str, Callable] | None = None) -> dict:
    """One pass over the training data; returns mean losses, loss-scale and skip counts."""
    cb = callbacks or {}
    model, prec, opt, loader, rec, task = st.model, st.prec, st.optimizer, st.train_loader, \
        st.numerics, st.task
    verbose, max_norm, epochs = st.args["verbose"], st.args["max_norm"], st.args["epochs"]
    model.train()
    mean = torch.zeros(len(task.loss_names))
    scales, skipped0, pending = [], prec.skipped_steps, 0
    header = ("Epoch", "Mem", *(f"{k}_loss" for k in task.loss_names), *task.progress_columns,
              "Scale")
    if verbose:
        print(("\n" + "%11s" * len(header)) % header)
    bar = tqdm(loader, total=len(loader), disable=not verbose, bar_format="{l_bar}{bar:10}{r_bar}")
    for i, batch in enumerate(bar):
        inputs, targets = task.inputs(batch, st.device)
        with prec.autocast():
            outputs = (model if st.forward is None else st.forward)(inputs)
        loss, items = st.loss_fn(outputs, targets)  # FP32 loss on the FP32-cast outputs
        prec.backward(loss)
        pending += 1
        acc = warmup_accumulate(st.epoch * len(loader) + i, st.warmup_iters, st.accumulate)
        if pending >= acc or i == len(loader) - 1:
            stepped = prec.step(opt, max_norm=max_norm, scheduler=st.schedule)
            if stepped:
                st.ema.update(model)
            if rec is not None:  # skip attribution reads the gradients: before zero_grad
                rec.on_step(stepped, loss, inputs, outputs)
            opt.zero_grad(set_to_none=True)
            if st.recovery is not None:
                st.recovery.after_step(st)
            pending = 0
            scales.append(prec.scaler.scale)
        items = items.cpu()  # loss = f(items): its finiteness costs no extra sync
        st.last_losses = dict(zip((f"{k}_loss" for k in task.loss_names), items.tolist(), strict=True))
        mean = (mean * i + items) / (i + 1)
        if rec is not None and not bool(torch.isfinite(items).all()):
            rec.on_nonfinite_loss(loss, inputs, outputs, targets, st.loss_fn,
                                  after_step=pending == 0, epoch=st.epoch + 1, batch=i)
        stats = task.batch_stats(batch, inputs)
        bar.set_description(("%11s" * 2 + "%11.4g" * len(mean) + "%11s" * len(stats) + "%11.4g") % (
            f"{st.epoch + 1}/{epochs}", f"{_memory_gb(st.device):.3g}G", *mean.tolist(), *stats,
            prec.scaler.scale))
        if "on_batch_end" in cb:
            cb["on_batch_end"](st, batch)
    return {"loss": mean, "scale": prec.scaler.scale, "min_scale": min(scales, default=1.0),
            "skipped": prec.skipped_steps - skipped0}


def _checkpoint(st: TrainState, epoch: int, metrics: dict[str, float]) -> dict[str, Any]:
    return {
        "model": {**st.task.model_record(st.model), "state_dict": st.ema.ema.state_dict()},
        "train": {"model": st.model.state_dict(), "optimizer": st.optimizer.state_dict(),
                  "precision": st.prec.state_dict(), "schedule": st.schedule.state_dict(),
                  "ema_updates": st.ema.updates, "best_fitness": st.best_fitness,
                  "best_epoch": st.best_epoch, "scale_history": st.scale_history,
                  "rng": torch.get_rng_state()},
        "epoch": epoch, "args": {k: (str(v) if isinstance(v, Path) else v)
                                 for k, v in st.args.items()},
        "metrics": metrics, "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _restore(st: TrainState, ckpt: dict[str, Any]) -> None:
    t = ckpt["train"]
    st.model.load_state_dict(t["model"])
    st.optimizer.load_state_dict(t["optimizer"])
    st.prec.load_state_dict(t["precision"])
    st.schedule.load_state_dict(t["schedule"])
    st.ema.ema.load_state_dict(ckpt["model"]["state_dict"])
    st.ema.updates = int(t["ema_updates"])
    st.best_fitness, st.best_epoch = t["best_fitness"], int(t["best_epoch"])
    st.scale_history = list(t["scale_history"])
    torch.set_rng_state(t["rng"])
    st.epoch = int(ckpt["epoch"]) + 1


def _find_resume(args: dict[str, Any]) -> Path:
    if args["resume"] is not True:
        return Path(str(args["resume"]))
    if str(args["model"]).endswith(".pt"):
        return Path(str(args["model"]))
    runs = sorted(Path(args["project"]).glob("*/weights/last.pt"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise FileNotFoundError(f"resume=True but no weights/last.pt under {args['project']}; "
                                "pass resume=path/to/last.pt")
    return runs[-1]


def _resume_args(given: dict[str, Any], task: Task) -> tuple[dict[str, Any], dict | None, Path | None]:
    """``(args, checkpoint, run folder)``: a resumed run takes its checkpoint's args (only
    ``train_args.RESUME_OVERRIDES`` may change; other given keys are named in one warning line);
    a new run has no checkpoint and no folder yet."""
    if not given.get("resume"):
        return given, None, None
    keys = task.train_keys()
    path = _find_resume(check_keys(given, keys, "train"))
    ckpt = check_checkpoint(load_checkpoint(path), path, resume=True)
    if ckpt.get("epoch", -1) < 0 or ckpt["epoch"] + 1 >= ckpt["args"]["epochs"]:
        raise ValueError(f"{path} is from a finished run: nothing to resume; start a new run "
                         f"with model={path}")
    print(f"Resuming training from {path} (epoch {ckpt['epoch'] + 2})")
    return resume_args(given, ckpt["args"], keys), ckpt, path.parent.parent


def _validate(st: TrainState, model: torch.nn.Module, final: bool) -> Any:
    """The task's validation of ``model``; running out of device memory there becomes one
    ValueError naming the way out (checkpoints stay as the last finished epoch left them)."""
    try:
        return st.task.validate(model, st.val_loader, st.data, st.prec.autocast,
                                None if final else st.loss_fn, st.args, st.save_dir, final)
    except torch.OutOfMemoryError:
        pass  # leave the except block: its traceback holds the validation's tensors
    if st.device.type == "cuda":
        torch.cuda.empty_cache()
    raise ValueError(f"validation after epoch {st.epoch + 1} ran out of {st.device} memory (training "
                     f"fits; the last finished epoch's checkpoint is kept): resume=True with val=False, "
                     f"then mixprec val model=<run>/weights/best.pt device=cpu, or a smaller imgsz/patch")


def _end_epoch(st: TrainState, epoch: int, out: dict, metrics: Any, elapsed: float,
               log: ResultsLog, last: Path, best: Path) -> None:
    """Best fitness, scale history, results.csv row, checkpoints and precision record."""
    if metrics is not None and (st.best_fitness is None or metrics.fitness > st.best_fitness):
        st.best_fitness, st.best_epoch = metrics.fitness, epoch
    st.best_fitness, st.best_epoch = dp.broadcast_object((st.best_fitness, st.best_epoch))
    st.scale_history.append({"epoch": epoch + 1, "scale": out["scale"],
                             "min_scale": out["min_scale"], "skipped_steps": out["skipped"]})
    if not is_main_process():
        return
    row = _results_row(epoch, elapsed, out, metrics, st)
    log.add(row)
    ckpt = _checkpoint(st, epoch, row)
    save_checkpoint(ckpt, last)
    if st.best_epoch == epoch:
        save_checkpoint(ckpt, best)
    _write_precision_record(st)


def _final_val(st: TrainState, best: Path) -> Any:
    """The full validation of ``best.pt`` (rank 0), as ``mixprec val`` would print it."""
    model, _ = load_weights(best, st.task)
    model.to(st.device)
    print(f"Validating {best}...")
    metrics = _validate(st, model, final=True)
    speed = getattr(metrics, "speed", None)
    if speed:
        print(f"Speed: {speed['inference']:.1f} ms inference, "
              f"{speed['postprocess']:.1f} ms postprocess per image")
    return metrics


def train(args: dict[str, Any] | None = None, callbacks: dict[str, Callable] | None = None,
          weights: torch.nn.Module | None = None, task: Task | str | None = None,
          dist: dp.DistContext | None = None, **kwargs: Any) -> TrainResult:
    """Train a model of ``task`` (default: the task of ``model``). ``args``/``kwargs``: keys of
    ``task.train_keys()`` (unknown keys raise with the nearest valid one); ``weights``: start
    from this module instead of ``model``; ``dist``: this rank's ``DistContext`` under torchrun.
    The global RNG is seeded with ``seed`` inside ``torch.random.fork_rng``: the caller's RNG
    state is unchanged afterwards. Returns the run folder, checkpoint paths and final metrics."""
    given = {**(args or {}), **kwargs}
    resume = given.get("resume")  # resume=path/last.pt without model=: the checkpoint names the task
    hint = given.get("model") or (resume if isinstance(resume, (str, Path)) else "")
    task = get_task(task) if task is not None else task_for_model(str(hint))
    given, resume_ckpt, save_dir = _resume_args(given, task)
    args = check_keys(given, task.train_keys(), "train")
    check_train_values(args)
    with seeded(int(args["seed"]), dist.device if dist else select_device(args["device"])):
        st = build(args, weights, save_dir, task, dist)
        try:
            return _run(st, resume_ckpt, callbacks)
        except _StepOutOfMemory:  # raised outside any except block: no frame holds the tensors
            from mixprec.vision.oom import oom_context, training_oom_report

            ctx = oom_context(st, "precision" if given.get("precision") is not None else "amp")
        del st  # free the failed run before the report measures on the same device
        raise training_oom_report(ctx)


class _StepOutOfMemory(Exception):
    """A training step raised torch.OutOfMemoryError (``train`` turns it into the report)."""


def _run(st: TrainState, resume_ckpt: dict | None, callbacks: dict[str, Callable] | None) -> TrainResult:
    """Epochs of ``st`` from its start epoch: validate, log, checkpoint, stop early."""
    if resume_ckpt is not None:
        _restore(st, resume_ckpt)
    a, main = st.args, is_main_process()
    if a["tensorboard"] and main:
        from mixprec.vision.tensorboard import with_tensorboard

        callbacks = with_tensorboard(st.save_dir, callbacks)
    if main:
        write_yaml(st.save_dir / "args.yaml", a)
    epochs = int(a["epochs"])
    log = ResultsLog(st.save_dir / "results.csv", keep_until_epoch=st.epoch)
    last, best = st.save_dir / "weights" / "last.pt", st.save_dir / "weights" / "best.pt"
    print(f"Logging results to {st.save_dir}\nStarting training for {epochs} epochs...")
    # a resumed run's time column continues from the checkpoint's
    t0 = time.time() - (float((resume_ckpt.get("metrics") or {}).get("time", 0.0)) if resume_ckpt else 0.0)
    metrics, start = None, st.epoch
    epoch = start
    if main:  # before the first step; it adds no hook that outlives one locator run
        st.numerics = NumericsRecord(st.model, st.prec, st.optimizer, st.save_dir,
                                     resume=resume_ckpt is not None)
    st.recovery = NanRecovery.from_args(a)
    if st.recovery is not None:
        st.recovery.snapshot(st, f"start of epoch {start + 1}")
    for epoch in range(start, epochs):
        st.epoch = epoch
        st.train_loader.dataset.set_epoch(epoch)
        st.train_loader.sampler.set_epoch(epoch)
        st.task.on_epoch_start(st.train_loader, epoch, a)
        try:
            out = train_one_epoch(st, callbacks)
        except torch.OutOfMemoryError:
            out = None  # leave the except block: its traceback holds the step's tensors
        if out is None:  # checkpoints and results.csv stay as the last finished epoch left them
            if st.numerics is not None:
                st.numerics.close()
            raise _StepOutOfMemory
        final = epoch == epochs - 1
        metrics = _validate(st, st.ema.ema, final=False) if (a["val"] or final) and main else None
        _end_epoch(st, epoch, out, metrics, time.time() - t0, log, last, best)
        if st.recovery is not None:
            st.recovery.snapshot(st, f"end of epoch {epoch + 1}")
        if callbacks and "on_epoch_end" in callbacks:
            callbacks["on_epoch_end"](st, epoch)
        if epoch - st.best_epoch >= a["patience"] and st.best_epoch >= 0 and not final:
            print(f"Stopping early: no {st.task.fitness_name} improvement in the last "
                  f"{a['patience']} epochs (best epoch {st.best_epoch + 1})")
            break
    if st.numerics is not None:
        st.numerics.close()  # prints where the skipped steps were recorded, if any
    print(f"{epoch + 1 - start} epochs completed in {(time.time() - t0) / 3600:.3f} hours.")
    if a["plots"] and main:
        plot_results(st.save_dir / "results.csv")
    if best.is_file() and main:
        metrics = _final_val(st, best)
    print(f"Results saved to {st.save_dir}")
    return TrainResult(st.save_dir, best, last, metrics, epoch + 1)


def _results_row(epoch: int, elapsed: float, out: dict, m: Any, st: TrainState) -> dict[str, Any]:
    row: dict[str, Any] = {"epoch": epoch + 1, "time": round(elapsed, 1)}
    for k, v in zip(st.task.loss_names, out["loss"].tolist(), strict=True):
        row[f"train/{k}_loss"] = v
    row.update(st.task.metric_columns(m))
    for i, lr in enumerate(st.schedule.lrs()):
        row[f"lr/pg{i}"] = lr
    row["amp/scale"] = float(out["scale"])
    row["amp/skipped_steps"] = out["skipped"]
    return row


def _write_precision_record(st: TrainState) -> None:
    write_yaml(st.save_dir / "precision.yaml", {
        "policy": str(st.prec.policy), "emulate": st.prec.emulate, "reason": st.precision_reason,
        "scaler": repr(st.prec.scaler), "steps": st.prec.steps,
        "skipped_steps": st.prec.skipped_steps, "per_epoch": st.scale_history})
