"""The detection trainer: ``train(args) -> TrainResult``.

``build(args)`` assembles the parts (data loaders, model, loss, ``Precision``, optimizer,
schedule, EMA); ``train_one_epoch`` is the training loop, where precision is reached only
through ``prec.autocast()``, ``prec.backward(loss)`` and ``prec.step(...)``; ``train`` adds
validation, checkpoints (``weights/last.pt``, ``best.pt``), ``results.csv``, the precision
record, early stopping and resume. Callbacks ``on_batch_end(state, batch)`` and
``on_epoch_end(state, epoch)`` let other tools (telemetry) look inside. Rank 0 also records
why steps were skipped (``skipped_steps.jsonl``) and where the first inf/NaN loss came from
(``nan_locator.json``) with the numerics doctor (``mixprec.vision.numerics_record``).
"""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from mixprec.distributed import launch as dp
from mixprec.distributed.ranks import is_main_process
from mixprec.io import load_checkpoint, save_checkpoint
from mixprec.precision import Precision
from mixprec.vision.cfg import TRAIN_KEYS, check_keys
from mixprec.vision.data import AugmentConfig, DataConfig, build_dataloader, load_data_config
from mixprec.vision.loss import DetectionLoss
from mixprec.vision.models import DetectionModel, load_model_yaml
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
from mixprec.vision.run import ResultsLog, increment_path, write_yaml
from mixprec.vision.validate import ValResults, validate

__all__ = ["TrainResult", "TrainState", "build", "load_weights", "train", "train_one_epoch"]


@dataclass
class TrainState:
    """Everything a training run holds; ``build`` makes it, the loop mutates it."""

    args: dict[str, Any]
    data: DataConfig
    model: DetectionModel
    loss_fn: DetectionLoss
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
    forward: Any = None  # the DistributedDataParallel wrapper of ``model`` in a data-parallel run
    numerics: NumericsRecord | None = None  # skip attribution + NaN locator (rank 0, in ``train``)
    warmup_iters: int = 0  # batches over which ``accumulate`` ramps up from 1 (``warmup_accumulate``)


@dataclass
class TrainResult:
    save_dir: Path
    best: Path
    last: Path
    metrics: ValResults | None
    epochs_run: int


def load_weights(path: str | Path) -> tuple[DetectionModel, dict[str, Any]]:
    """A ``DetectionModel`` (FP32, EMA weights) and the checkpoint dict from a ``.pt`` file."""
    ckpt = load_checkpoint(path)
    m = ckpt["model"]
    model = DetectionModel(m["yaml"], nc=len(m["names"]))
    model.load_state_dict(m["state_dict"])
    model.names = {int(k): v for k, v in m["names"].items()}
    return model, ckpt


def _memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.memory_reserved(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: KiB -> GB


def _batch_size(args: dict[str, Any], model: DetectionModel, prec: Precision,
                loss_fn: DetectionLoss, device: torch.device) -> int:
    if args["batch"] != -1:
        if int(args["batch"]) < 1:
            raise ValueError(f"batch={args['batch']}: use a positive batch, or -1 for autobatch")
        return int(args["batch"])
    try:
        from mixprec.bench.autobatch import largest_batch
    except ImportError as err:
        raise ValueError("batch=-1 needs mixprec.bench.autobatch.largest_batch, which this "
                         "install lacks; give a batch size such as batch=16") from err
    s = int(args["imgsz"])

    def batch_fn(b: int):
        t = torch.tensor([[i, 0, 0.5, 0.5, 0.3, 0.3] for i in range(b)], dtype=torch.float32)
        return torch.rand(b, 3, s, s), t

    # on CPU a probe at a large batch takes minutes: extrapolate from batches 1 and 2
    found = largest_batch(model, batch_fn, lambda out, t: loss_fn(out, t)[0],
                          precision=prec.policy, device=device, emulate=prec.emulate,
                          max_batch=256, measure="linear" if device.type == "cpu" else "auto")
    print(f"autobatch: batch={found.batch} ({found.budget_source})")
    return max(int(found.batch), 1)


def build(args: dict[str, Any], model: DetectionModel | None = None,
          save_dir: Path | None = None) -> TrainState:
    """Assemble a run from ``args`` (every key of ``TRAIN_KEYS``). ``model``: start from these
    weights instead of ``args['model']``. Prints the precision choice and its reason."""
    ctx = dp.init_from_launcher(args["device"])  # None unless started by torchrun
    device = ctx.device if ctx else select_device(args["device"])
    torch.manual_seed(int(args["seed"]))
    with dp.main_process_first():  # rank 0 generates a built-in dataset, the others wait
        data = load_data_config(args["data"], args["datasets_dir"])
    imgsz = int(args["imgsz"])
    if imgsz % 32:
        raise ValueError(f"imgsz={imgsz} must be a multiple of 32 (the largest stride)")
    if model is None:
        src = str(args["model"])
        if src.endswith(".pt"):
            model, _ = load_weights(src)
            if model.nc != data.nc:
                model = DetectionModel(model.yaml, nc=data.nc)
        else:
            model = DetectionModel(load_model_yaml(src), nc=data.nc)
    elif model.nc != data.nc:
        model = DetectionModel(model.yaml, nc=data.nc)
    model.names = dict(data.names)
    model.to(device)
    loss_fn = DetectionLoss(model, args["box"], args["cls"], args["dfl"])
    prec, reason = choose_precision(args["amp"], device, bool(args["emulate"]))
    print(f"precision: {prec.policy}{' (emulated)' if prec.emulate else ''} -- {reason}")
    batch = _batch_size(args, model, prec, loss_fn, device)
    aug = AugmentConfig(args["mosaic"], args["degrees"], args["translate"], args["scale"],
                        args["hsv_h"], args["hsv_s"], args["hsv_v"], args["fliplr"])
    workers, world = int(args["workers"]), ctx.world_size if ctx else 1
    if batch % world:
        raise ValueError(f"batch={batch} is the global batch: make it divisible by the {world} processes")
    with dp.main_process_first():  # label caches are written once
        train_loader = build_dataloader(data, "train", imgsz, batch // world, True, workers,
                                        args["seed"], aug)
        val_loader = build_dataloader(data, "val", imgsz, batch * 2, False, workers, args["seed"])
    if world > 1:  # each rank trains on its share; rank 0 validates on the whole val split
        train_loader = dp.shard_loader(train_loader, int(args["seed"]))
    nb = len(train_loader)
    accumulate = min(max(round(args["nbs"] / batch), 1), nb)
    # warmup in batches; accumulate ramps 1 -> accumulate over it (Ultralytics' rule)
    warmup_iters = round(min(args["warmup_epochs"], max(int(args["epochs"]) - 1, 0)) * nb)
    warmup, total = plan_steps(nb, int(args["epochs"]), accumulate, warmup_iters)
    opt_name, lr0, momentum, why = resolve_optimizer(
        args["optimizer"], args["lr0"], args["momentum"], data.nc,
        math.ceil(len(train_loader.dataset) / max(batch, args["nbs"])) * int(args["epochs"]))
    decay = args["weight_decay"] * batch * accumulate / args["nbs"]
    optimizer = build_optimizer(model, opt_name, lr0, momentum, decay)
    model, optimizer = prec.setup(model, optimizer)
    forward = None
    if world > 1:
        from mixprec.distributed import ddp

        forward = ddp(model, optimizer, prec, device_ids=[device.index] if device.type == "cuda" else None)
    print(f"optimizer: {why}; weight_decay={decay:.3g}, accumulate={accumulate}")
    schedule = Schedule(optimizer, lr0, args["lrf"], total, warmup, bool(args["cos_lr"]),
                        args["warmup_bias_lr"], args["warmup_momentum"], momentum)
    ema = ModelEMA(model)
    if save_dir is None:
        save_dir = dp.broadcast_object(increment_path(args["project"], args["name"],
                                                      bool(args["exist_ok"])))
    if is_main_process():
        (save_dir / "weights").mkdir(parents=True, exist_ok=True)
    args = {**args, "batch": batch, "precision": str(prec.policy), "precision_reason": reason,
            "optimizer_resolved": opt_name, "lr0_resolved": lr0, "device_resolved": str(device),
            "world_size": world}
    return TrainState(args, data, model, loss_fn, prec, reason, optimizer, schedule, ema,
                      train_loader, val_loader, accumulate, device, save_dir, forward=forward,
                      warmup_iters=warmup_iters)


def train_one_epoch(st: TrainState, callbacks: dict[str, Callable] | None = None) -> dict:
    """One pass over the training data; returns mean losses, loss-scale and skip counts."""
    cb = callbacks or {}
    model, prec, opt, loader, rec = st.model, st.prec, st.optimizer, st.train_loader, st.numerics
    model.train()
    mean = torch.zeros(3)
    scales, skipped0, pending = [], prec.skipped_steps, 0
    header = ("Epoch", "Mem", "box_loss", "cls_loss", "dfl_loss", "Instances", "Size", "Scale")
    if st.args["verbose"]:
        print(("\n" + "%11s" * len(header)) % header)
    bar = tqdm(loader, total=len(loader), disable=not st.args["verbose"],
               bar_format="{l_bar}{bar:10}{r_bar}")
    for i, batch in enumerate(bar):
        images = batch["images"].to(st.device, non_blocking=True).float() / 255
        with prec.autocast():
            maps = (st.forward or model)(images)
        loss, items = st.loss_fn(maps, batch["targets"])  # FP32 loss on FP32-cast head maps
        prec.backward(loss)
        pending += 1
        acc = warmup_accumulate(st.epoch * len(loader) + i, st.warmup_iters, st.accumulate)
        if pending >= acc or i == len(loader) - 1:
            stepped = prec.step(opt, max_norm=st.args["max_norm"], scheduler=st.schedule)
            if stepped:
                st.ema.update(model)
            if rec is not None:  # skip attribution reads the gradients: before zero_grad
                rec.on_step(stepped, loss, images, maps)
            opt.zero_grad(set_to_none=True)
            pending = 0
            scales.append(prec.scaler.scale)
        items = items.cpu()  # loss = items.sum() * batch: its finiteness costs no extra sync
        mean = (mean * i + items) / (i + 1)
        if rec is not None and not bool(torch.isfinite(items).all()):
            rec.on_nonfinite_loss(loss, images, maps, batch["targets"], st.loss_fn,
                                  after_step=pending == 0, epoch=st.epoch + 1, batch=i)
        bar.set_description(("%11s" * 2 + "%11.4g" * 3 + "%11s" * 2 + "%11.4g") % (
            f"{st.epoch + 1}/{st.args['epochs']}", f"{_memory_gb(st.device):.3g}G", *mean.tolist(),
            len(batch["targets"]), images.shape[-1], prec.scaler.scale))
        if "on_batch_end" in cb:
            cb["on_batch_end"](st, batch)
    return {"loss": mean, "scale": prec.scaler.scale, "min_scale": min(scales, default=1.0),
            "skipped": prec.skipped_steps - skipped0}


def _checkpoint(st: TrainState, epoch: int, metrics: dict[str, float]) -> dict[str, Any]:
    return {
        "model": {"yaml": st.model.yaml, "names": st.model.names,
                  "state_dict": st.ema.ema.state_dict()},
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


def train(args: dict[str, Any] | None = None, callbacks: dict[str, Callable] | None = None,
          weights: DetectionModel | None = None, **kwargs: Any) -> TrainResult:
    """Train a detector. ``args``/``kwargs``: keys of ``TRAIN_KEYS`` (unknown keys raise with the
    nearest valid one); ``weights``: start from this module instead of ``model``. Returns the
    run folder, checkpoint paths and the final metrics."""
    given = {**(args or {}), **kwargs}
    resume_ckpt = None
    if given.get("resume"):
        path = _find_resume(check_keys(given, TRAIN_KEYS, "train"))
        resume_ckpt = load_checkpoint(path)
        if resume_ckpt.get("epoch", -1) < 0 or resume_ckpt["epoch"] + 1 >= resume_ckpt["args"]["epochs"]:
            raise ValueError(f"{path} is from a finished run: nothing to resume; start a new run "
                             f"with model={path}")
        keep = {k: v for k, v in resume_ckpt["args"].items() if k in TRAIN_KEYS}
        overrides = {k: given[k] for k in ("device", "workers", "verbose") if k in given}
        given = {**keep, **overrides, "resume": False}
        save_dir = path.parent.parent
        print(f"Resuming training from {path} (epoch {resume_ckpt['epoch'] + 2})")
    else:
        save_dir = None
    args = check_keys(given, TRAIN_KEYS, "train")
    st = build(args, weights, save_dir)
    if resume_ckpt is not None:
        _restore(st, resume_ckpt)
    a, main = st.args, is_main_process()
    if main:
        write_yaml(st.save_dir / "args.yaml", a)
    epochs = int(a["epochs"])
    log = ResultsLog(st.save_dir / "results.csv", keep_until_epoch=st.epoch)
    last, best = st.save_dir / "weights" / "last.pt", st.save_dir / "weights" / "best.pt"
    print(f"Logging results to {st.save_dir}\nStarting training for {epochs} epochs...")
    t0 = time.time()
    metrics: ValResults | None = None
    start = epoch = st.epoch
    if main:  # before the first step; it adds no hook that outlives one locator run
        st.numerics = NumericsRecord(st.model, st.prec, st.optimizer, st.save_dir,
                                     resume=resume_ckpt is not None)
    for epoch in range(start, epochs):
        st.epoch = epoch
        ds = st.train_loader.dataset
        ds.set_epoch(epoch)
        st.train_loader.sampler.set_epoch(epoch)
        ds.mosaic_on = ds.aug is not None and ds.aug.mosaic > 0 and epoch < epochs - a["close_mosaic"]
        out = train_one_epoch(st, callbacks)
        final = epoch == epochs - 1
        metrics = None
        if (a["val"] or final) and main:
            metrics = validate(st.ema.ema, st.val_loader, st.model.names, st.prec.autocast,
                               st.loss_fn, a["conf"], a["iou"], a["max_det"], st.save_dir,
                               plots=False, verbose=a["verbose"])
            if st.best_fitness is None or metrics.fitness > st.best_fitness:
                st.best_fitness, st.best_epoch = metrics.fitness, epoch
        st.best_fitness, st.best_epoch = dp.broadcast_object((st.best_fitness, st.best_epoch))
        st.scale_history.append({"epoch": epoch + 1, "scale": out["scale"],
                                 "min_scale": out["min_scale"], "skipped_steps": out["skipped"]})
        row = _results_row(epoch, time.time() - t0, out, metrics, st)
        if main:
            log.add(row)
            ckpt = _checkpoint(st, epoch, row)
            save_checkpoint(ckpt, last)
            if st.best_epoch == epoch:
                save_checkpoint(ckpt, best)
            _write_precision_record(st)
        if callbacks and "on_epoch_end" in callbacks:
            callbacks["on_epoch_end"](st, epoch)
        if epoch - st.best_epoch >= a["patience"] and st.best_epoch >= 0 and not final:
            print(f"Stopping early: no improvement in the last {a['patience']} epochs "
                  f"(best epoch {st.best_epoch + 1})")
            break
    if st.numerics is not None:
        st.numerics.close()  # prints where the skipped steps were recorded, if any
    print(f"{epoch + 1 - start} epochs completed in "
          f"{(time.time() - t0) / 3600:.3f} hours.")
    if a["plots"] and main:
        plot_results(st.save_dir / "results.csv")
    if best.is_file() and main:
        best_model, _ = load_weights(best)
        best_model.to(st.device)
        print(f"Validating {best}...")
        metrics = validate(best_model, st.val_loader, best_model.names, st.prec.autocast, None,
                           a["conf"], a["iou"], a["max_det"], st.save_dir, a["save_json"],
                           a["plots"], per_class=True, verbose=a["verbose"])
        print(f"Speed: {metrics.speed['inference']:.1f} ms inference, "
              f"{metrics.speed['postprocess']:.1f} ms postprocess per image")
    print(f"Results saved to {st.save_dir}")
    return TrainResult(st.save_dir, best, last, metrics, epoch + 1)


def _results_row(epoch: int, elapsed: float, out: dict, m: ValResults | None,
                 st: TrainState) -> dict[str, Any]:
    nan = float("nan")
    row: dict[str, Any] = {"epoch": epoch + 1, "time": round(elapsed, 1)}
    for k, v in zip(("box", "cls", "dfl"), out["loss"].tolist(), strict=True):
        row[f"train/{k}_loss"] = v
    row["metrics/precision(B)"] = m.box.mp if m else nan
    row["metrics/recall(B)"] = m.box.mr if m else nan
    row["metrics/mAP50(B)"] = m.box.map50 if m else nan
    row["metrics/mAP50-95(B)"] = m.box.map if m else nan
    vl = m.loss.tolist() if m is not None and m.loss is not None else [nan] * 3
    for k, v in zip(("box", "cls", "dfl"), vl, strict=True):
        row[f"val/{k}_loss"] = v
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
