"""``bench``: measure every precision on one model and one machine, side by side, in one run.

Phases (all precisions see identical batches: batch ``i`` is drawn once, under
``torch.manual_seed(seed + 1 + i)``, and reused for every precision):

1. Warm-up and memory, one precision at a time: a fresh model (same seed) runs ``warmup`` untimed
   steps; the first step's forward and loss run under a ``SavedTensorMeter`` (activations), the
   persistent state is accounted after each step (largest kept), and the CUDA allocator peak and
   process peak RSS are read over the warm-up.
2. Timing, interleaved: the ``steps`` timed steps are split into ``repeats`` rounds; in each
   round every precision (in a rotated order) runs the same batches back to back, with the
   device synchronised before each clock and energy reading. Step time is reported as the
   median, min and max over rounds of (round time / steps in the round).
3. Largest batch under the budget (``mixprec.bench.autobatch.largest_batch``), per precision.

Convergence parity compares the loss curves of all ``warmup + steps`` steps against ``32``.
"""

from __future__ import annotations

import datetime as _dt
import gc
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mixprec.bench.autobatch import BatchDoesNotFitError, largest_batch
from mixprec.bench.energy import open_energy_meter
from mixprec.bench.explain import memory_notes, slowdown_reason
from mixprec.bench.memory import (
    SavedTensorMeter,
    StateBytes,
    peak_rss_bytes,
    reset_peak_rss,
    state_bytes,
    tensor_bytes,
)
from mixprec.bench.result import BenchResult, BenchRow
from mixprec.bench.step import (
    LossFn,
    ModelFn,
    OptimizerFn,
    TrainState,
    build_state,
    iter_tensors,
    to_device,
    train_step,
)
from mixprec.policy import Policy

__all__ = ["BenchConfig", "bench", "run_bench"]

BASELINE = "32"
TAIL = 5  # steps averaged for the tail loss


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _resolve_policies(precisions: Sequence[Any],
                      dev: torch.device) -> tuple[list[tuple[str, Policy]], list[str]]:
    if isinstance(precisions, str):
        precisions = [p for p in precisions.split(",") if p.strip()]
    out: list[tuple[str, Policy]] = []
    notes = []
    for p in precisions:
        if isinstance(p, str) and p.strip().lower() == "auto":
            from mixprec.hardware import auto_policy

            policy, why = auto_policy(dev)
            notes.append(f"auto -> {policy}: {why}")
        else:
            policy = Policy.parse(str(p) if isinstance(p, (int, float)) else p)
        name = str(policy)
        if name in [n for n, _ in out]:
            raise ValueError(f"precision {name!r} is listed twice in precisions={list(precisions)}")
        out.append((name, policy))
    if not out:
        raise ValueError("precisions is empty; e.g. precisions=['32', '16-mixed', 'bf16-mixed']")
    if BASELINE not in [n for n, _ in out]:
        out.insert(0, (BASELINE, Policy.parse(BASELINE)))
        notes.append("added '32' as the baseline every ratio is measured against")
    return out, notes


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not math.isfinite(a) or not math.isfinite(b) or b == 0:
        return None
    return a / b


def _budget_args(budget: int | float | str | None,
                 dev: torch.device) -> tuple[dict[str, Any] | None, str | None]:
    """(keyword arguments for largest_batch, or None with the reason the search is off)."""
    if budget is False or budget == 0:
        return None, "off (budget=0)"
    if budget is None:
        if dev.type == "cuda":
            return {"fraction": 0.6}, None
        return None, ("not searched: on a CPU give a budget in bytes, e.g. budget=2G "
                      "(bench(..., budget=2 * 2**30))")
    if isinstance(budget, str):
        budget = parse_bytes(budget)
    if isinstance(budget, float) and 0 < budget <= 1:
        return {"fraction": float(budget)}, None
    if isinstance(budget, (int, float)) and budget > 1:
        return {"budget_bytes": int(budget)}, None
    raise ValueError(f"budget={budget!r}: give bytes (an int, or text like '2G', '512M') or a "
                     "fraction of the device memory in (0, 1]")


def parse_bytes(text: str) -> int | float:
    """``"2G"``/``"2GiB"``/``"512M"``/``"1e9"``/``"0.6"`` -> bytes (int) or a fraction (float)."""
    s = str(text).strip().lower().replace("ib", "").replace("b", "")
    units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    try:
        if s and s[-1] in units:
            return int(float(s[:-1]) * units[s[-1]])
        value = float(s)
    except ValueError:
        raise ValueError(f"cannot read {text!r} as a memory size; use e.g. 2G, 512M, 1000000000 "
                         "or a fraction like 0.6") from None
    return value if value <= 1 else int(value)


class _Batches:
    """Batch ``i`` drawn once under ``manual_seed(seed + 1 + i)`` (global RNG restored) and
    kept on the device until ``forget``."""

    def __init__(self, batch_fn: Callable[[int], Any], batch_size: int, seed: int,
                 dev: torch.device) -> None:
        self._fn, self._bs, self._seed, self._dev = batch_fn, batch_size, seed, dev
        self._cache: dict[int, tuple[Any, Any]] = {}

    def __call__(self, i: int) -> tuple[Any, Any]:
        if i not in self._cache:
            devices = [self._dev.index or 0] if self._dev.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self._seed + 1 + i)
                batch = self._fn(self._bs)
            if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                raise ValueError("batch_fn(batch_size) must return (inputs, targets), got "
                                 f"{type(batch).__name__}")
            self._cache[i] = to_device(tuple(batch), self._dev)
        return self._cache[i]

    def forget(self, keep: Sequence[int] = ()) -> None:
        self._cache = {i: b for i, b in self._cache.items() if i in keep}


MAX_MEMORY_STEPS = 32  # a dynamic scaler halves per skipped step: 2**16 reaches 1 in 16 steps


def measure_memory(state: TrainState, batch: tuple[Any, Any], loss_fn: LossFn,
                   dev: torch.device) -> dict[str, Any]:
    """Byte breakdown of one training step of ``state`` on ``batch`` (throwaway state: it is
    stepped until the optimizer has applied a step, so its state exists, at most
    ``MAX_MEMORY_STEPS`` times). Activations and casts come from the first forward+loss."""
    inputs, targets = batch
    data = list(iter_tensors((inputs, targets)))
    meter = SavedTensorMeter(state.model, exclude=data)
    largest: StateBytes | None = None
    applied = False
    tries = 0
    while not applied and tries < MAX_MEMORY_STEPS:
        _, applied = train_step(state, inputs, targets, loss_fn, meter=meter if tries == 0 else None)
        sb = state_bytes(state.model, state.optimizer)
        if largest is None or sb.total > largest.total:
            largest = sb
        state.optimizer.zero_grad(set_to_none=True)
        tries += 1
    _sync(dev)
    assert largest is not None
    memory: dict[str, Any] = largest.as_dict()
    batch_bytes = tensor_bytes(data)
    memory.update(activations=meter.activation_bytes, casts=meter.cast_bytes, batch=batch_bytes)
    memory["total"] = largest.total + meter.activation_bytes + meter.cast_bytes + batch_bytes
    memory["steps_to_first_update"] = tries if applied else None
    return memory


@dataclass(frozen=True)
class BenchConfig:
    """The knobs of one ``bench`` run (see ``bench`` for their meaning), validated on creation."""

    precisions: tuple[Any, ...] = ("32", "16-mixed", "bf16-mixed")
    batch_size: int = 16
    steps: int = 20
    warmup: int = 3
    repeats: int = 5
    device: str | torch.device | None = None
    optimizer_fn: OptimizerFn | None = None
    seed: int = 0
    emulate: bool = False
    budget: int | float | str | None = None
    max_batch: int = 1024
    energy: bool = True
    model_name: str | None = None

    def __post_init__(self) -> None:
        if self.warmup < 1:
            raise ValueError(f"warmup must be >= 1 (memory is measured in the warm-up), got "
                             f"{self.warmup}")
        if self.repeats < 1 or self.steps < self.repeats:
            raise ValueError(f"need 1 <= repeats <= steps, got steps={self.steps}, "
                             f"repeats={self.repeats}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def record(self, dev: torch.device, notes: list[str]) -> dict[str, Any]:
        """The ``config`` block of the result (plain data)."""
        budget = self.budget
        return {"batch_size": self.batch_size, "steps": self.steps, "warmup": self.warmup,
                "repeats": self.repeats, "seed": self.seed, "emulate": self.emulate,
                "device": str(dev), "optimizer": _optimizer_name(self.optimizer_fn),
                "budget": budget if budget is None or isinstance(budget, (int, float, str))
                else str(budget), "max_batch": self.max_batch, "model": self.model_name,
                "notes": notes}


@dataclass
class _Run:
    """What the phases of one ``bench`` run share: the config, the device, one row per
    precision, the live training states and their (device-side) losses, the batch source."""

    cfg: BenchConfig
    dev: torch.device
    policies: list[tuple[str, Policy]]
    batches: _Batches
    say: Callable[[str], None]
    model_fn: ModelFn
    loss_fn: LossFn
    rows: dict[str, BenchRow] = field(default_factory=dict)
    states: dict[str, TrainState] = field(default_factory=dict)
    losses: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    def fail(self, name: str, err: BaseException, phase: str) -> None:
        """Turn ``name`` into a failed row (a failing baseline raises)."""
        if name == BASELINE:
            raise err
        self.rows[name].status = "failed"
        self.rows[name].error = f"{phase}: {type(err).__name__}: {err}"
        self.states.pop(name, None)
        self.say(f"  {name}: failed in {phase}: {type(err).__name__}: {err}")

    def build(self, policy: Policy) -> TrainState:
        return build_state(self.model_fn, policy, self.dev, optimizer_fn=self.cfg.optimizer_fn,
                           seed=self.cfg.seed, emulate=self.cfg.emulate)


def bench(
    model_fn: ModelFn,
    batch_fn: Callable[[int], tuple[Any, Any]],
    loss_fn: LossFn,
    *,
    precisions: Sequence[Any] = ("32", "16-mixed", "bf16-mixed"),
    batch_size: int = 16,
    steps: int = 20,
    warmup: int = 3,
    repeats: int = 5,
    device: str | torch.device | None = None,
    optimizer_fn: OptimizerFn | None = None,
    seed: int = 0,
    emulate: bool = False,
    budget: int | float | str | None = None,
    max_batch: int = 1024,
    energy: bool = True,
    model_name: str | None = None,
    log: Callable[[str], None] | None = None,
) -> BenchResult:
    """Measure ``precisions`` on ``model_fn()`` side by side; returns a ``BenchResult``.

    ``model_fn()``: a fresh FP32 ``nn.Module`` (called once per precision under the same seed).
    ``batch_fn(batch_size) -> (inputs, targets)``: tensors (or lists/dicts of them) on any
    device; a tuple/list ``inputs`` is unpacked into the model call, a dict passed as keywords.
    ``loss_fn(outputs, targets) -> scalar tensor``. ``optimizer_fn(params)``: default AdamW(1e-3).
    ``precisions``: preset names, key strings, Policies or ``"auto"``; ``"32"`` is added as the
    baseline if absent. ``steps`` timed steps per precision after ``warmup`` untimed ones (>= 1;
    memory is measured during warm-up), split into ``repeats`` rounds. ``emulate``: run the
    numerics through ``mixprec.emulate`` (FP32 storage: memory and speed are then the
    emulator's). ``budget``: bytes (int or ``"2G"``) or a fraction of CUDA memory for the
    largest-batch search; ``None`` searches at 0.6 of the memory on CUDA and skips it on CPU;
    ``0`` turns it off. ``log``: called with progress lines (e.g. ``print``). The keywords are
    those of ``BenchConfig``; ``run_bench(model_fn, batch_fn, loss_fn, config)`` takes one.

    Synchronises with the device around every timed round and reads losses back once per round.
    A precision that fails (e.g. unsupported on the device) becomes a ``failed`` row with the
    error; a failing ``32`` baseline raises.
    """
    if isinstance(precisions, str):
        precisions = [p for p in precisions.split(",") if p.strip()]
    cfg = BenchConfig(tuple(precisions), batch_size, steps, warmup, repeats, device, optimizer_fn,
                      seed, emulate, budget, max_batch, energy, model_name)
    return run_bench(model_fn, batch_fn, loss_fn, cfg, log)


def run_bench(model_fn: ModelFn, batch_fn: Callable[[int], tuple[Any, Any]], loss_fn: LossFn,
              cfg: BenchConfig, log: Callable[[str], None] | None = None) -> BenchResult:
    """``bench`` with its knobs in one ``BenchConfig``: warm-up and memory, timed rounds,
    convergence read-back, largest batch, then the ratios against ``32``."""
    dev = torch.device(cfg.device) if cfg.device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    policies, config_notes = _resolve_policies(cfg.precisions, dev)
    search_args, search_off = _budget_args(cfg.budget, dev)

    from mixprec.hardware import describe_device

    env = describe_device(dev)
    meter, energy_reason = (open_energy_meter(dev) if cfg.energy
                            else (None, "energy measurement off (energy=False)"))
    env["energy_source"] = meter.source if meter is not None else None
    run = _Run(cfg, dev, policies, _Batches(batch_fn, cfg.batch_size, cfg.seed, dev),
               log or (lambda _msg: None), model_fn, loss_fn)
    for name, policy in policies:
        run.rows[name] = BenchRow(precision=name, numerics="emulated"
                                  if cfg.emulate and policy != Policy() else "real")
        run.losses[name] = []
    _warmup_memory(run)
    per_round, joules, timed_steps = _timed_rounds(run, meter)
    _read_convergence(run)
    _largest_batches(run, batch_fn, search_args, search_off)
    _finish_rows(run.rows, dict(policies), env, energy_reason, meter, joules, per_round,
                 timed_steps, cfg.batch_size, cfg.emulate)
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return BenchResult(rows=[run.rows[n] for n, _ in policies], environment=env,
                       config=cfg.record(dev, config_notes), created=created, baseline=BASELINE)


def _warmup_memory(run: _Run) -> None:
    """Phase 1, one precision at a time: memory on a throwaway state, then the untimed warm-up
    steps of the state the timed rounds use."""
    dev = run.dev
    for name, policy in run.policies:
        run.say(f"memory + warm-up: {name}")
        gc.collect()
        cuda_base = 0
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            torch.cuda.empty_cache()
            cuda_base = torch.cuda.memory_allocated(dev)
            torch.cuda.reset_peak_memory_stats(dev)
        rss_note = reset_peak_rss()
        try:
            probe = run.build(policy)
            memory = measure_memory(probe, run.batches(0), run.loss_fn, dev)
            memory["cuda_peak"] = (torch.cuda.max_memory_allocated(dev) - cuda_base
                                   if dev.type == "cuda" else None)
            memory["peak_rss"] = peak_rss_bytes()
            memory["peak_rss_note"] = rss_note
            del probe
            state = run.build(policy)
            for i in range(run.cfg.warmup):
                loss, _ = train_step(state, *run.batches(i), run.loss_fn)
                state.optimizer.zero_grad(set_to_none=True)
                run.losses[name].append(loss)
        except Exception as err:
            run.fail(name, err, "memory/warm-up")
            continue
        first_update = memory.pop("steps_to_first_update")
        if first_update is None:
            run.rows[name].notes.append(
                f"no optimizer step was applied in {MAX_MEMORY_STEPS} tries (every step "
                "overflowed), so the optimizer state is missing from the memory figures")
        elif first_update > 1:
            run.rows[name].notes.append(
                f"memory: the loss scaler skipped {first_update - 1} step(s) before the first "
                "update; figures are from the state after it")
        run.rows[name].memory = memory
        run.states[name] = state
    run.batches.forget()


def _timed_rounds(run: _Run, meter: Any) -> tuple[dict[str, list[float]], dict[str, float],
                                                  dict[str, int]]:
    """Phase 2, interleaved round by round (rotated order, same batches for every precision):
    seconds per step of each round, joules and timed steps per precision."""
    cfg, dev = run.cfg, run.dev
    sizes = [cfg.steps // cfg.repeats + (1 if r < cfg.steps % cfg.repeats else 0)
             for r in range(cfg.repeats)]
    per_round: dict[str, list[float]] = {name: [] for name, _ in run.policies}
    joules: dict[str, float] = dict.fromkeys(per_round, 0.0)
    timed_steps: dict[str, int] = dict.fromkeys(per_round, 0)
    first = cfg.warmup
    for r, k in enumerate(sizes):
        idx = range(first, first + k)
        alive = [name for name, _ in run.policies if name in run.states]
        order = alive[r % len(alive):] + alive[:r % len(alive)] if alive else []
        run.say(f"timing round {r + 1}/{cfg.repeats}: {k} steps x {len(order)} precisions")
        for name in order:
            state = run.states[name]
            try:
                round_batches = [run.batches(i) for i in idx]
                _sync(dev)
                e0 = meter.sample() if meter is not None else None
                t0 = time.perf_counter()
                for inputs, targets in round_batches:
                    loss, _ = train_step(state, inputs, targets, run.loss_fn)
                    state.optimizer.zero_grad(set_to_none=True)
                    run.losses[name].append(loss)
                _sync(dev)
                t1 = time.perf_counter()
                if meter is not None:
                    joules[name] += meter.joules(e0, meter.sample())
            except Exception as err:
                run.fail(name, err, f"timing round {r + 1}")
                continue
            per_round[name].append((t1 - t0) / k)
            timed_steps[name] += k
        run.batches.forget()
        first += k
    return per_round, joules, timed_steps


def _read_convergence(run: _Run) -> None:
    """Loss curves and scaler figures, read back once; then the training states are freed."""
    for name, state in run.states.items():
        curve = torch.stack([x.float().reshape(()) for x in run.losses[name]]).cpu().tolist()
        run.rows[name].convergence = {
            "losses": curve, "final_loss": curve[-1],
            "tail_mean": statistics.fmean(curve[-TAIL:]),
            "final_ratio": None, "tail_ratio": None,
            "skipped_steps": int(state.precision.skipped_steps),
            "loss_scale": float(state.precision.scaler.scale)}
    run.states.clear()
    gc.collect()
    if run.dev.type == "cuda":
        torch.cuda.empty_cache()


def _largest_batches(run: _Run, batch_fn: Callable[[int], Any], search_args: dict | None,
                     search_off: str | None) -> None:
    """Phase 3: the largest batch under the budget, per precision that is still ok."""
    cfg = run.cfg
    for name, policy in run.policies:
        row = run.rows[name]
        if row.status != "ok":
            continue
        if search_args is None:
            row.largest_batch = {"batch": None, "reason": search_off}
            continue
        run.say(f"largest batch: {name}")
        try:
            found = largest_batch(run.model_fn, batches_for_search(batch_fn, cfg.seed, run.dev),
                                  run.loss_fn, precision=policy, device=run.dev,
                                  optimizer_fn=cfg.optimizer_fn, max_batch=cfg.max_batch,
                                  emulate=cfg.emulate, **search_args)
            row.largest_batch = {**found.as_dict(), "reason": found.reason, "ratio": None}
        except BatchDoesNotFitError as err:
            row.largest_batch = {"batch": None, "reason": str(err), "ratio": None}
        except Exception as err:
            run.fail(name, err, "largest-batch search")


def batches_for_search(batch_fn: Callable[[int], Any], seed: int,
                       dev: torch.device) -> Callable[[int], Any]:
    """``batch_fn`` seeded like the timed batches, for the batch-size search."""
    def draw(batch_size: int) -> Any:
        return _Batches(batch_fn, batch_size, seed, dev)(0)

    return draw


def _optimizer_name(optimizer_fn: OptimizerFn | None) -> str:
    if optimizer_fn is None:
        return "AdamW(lr=1e-3)"
    return getattr(optimizer_fn, "__name__", type(optimizer_fn).__name__)


def _finish_rows(rows: dict[str, BenchRow], policies: dict[str, Policy], env: dict[str, Any],
                 energy_reason: str | None, meter: Any, joules: dict[str, float],
                 per_round: dict[str, list[float]], timed_steps: dict[str, int], batch_size: int,
                 emulate: bool) -> None:
    base = rows[BASELINE]
    base_median = statistics.median(per_round[BASELINE])
    base_mem = base.memory or {}
    base_conv = base.convergence or {}
    base_batch = (base.largest_batch or {}).get("batch")
    for name, row in rows.items():
        if row.status != "ok":
            continue
        times = per_round[name]
        median = statistics.median(times)
        row.step_time = {"median": median, "min": min(times), "max": max(times),
                         "per_repeat": times, "steps_timed": timed_steps[name]}
        row.throughput = batch_size / median if median > 0 else None
        row.speedup = _ratio(base_median, median)
        mem = row.memory or {}
        mem["total_ratio"] = _ratio(mem.get("total"), base_mem.get("total"))
        mem["activation_ratio"] = _ratio(mem.get("activations"), base_mem.get("activations"))
        conv = row.convergence or {}
        conv["final_ratio"] = _ratio(conv.get("final_loss"), base_conv.get("final_loss"))
        conv["tail_ratio"] = _ratio(conv.get("tail_mean"), base_conv.get("tail_mean"))
        if row.largest_batch is not None and row.largest_batch.get("batch") is not None:
            row.largest_batch["ratio"] = _ratio(row.largest_batch["batch"], base_batch)
        if meter is not None and joules[name] > 0:
            row.energy = {"joules_per_step": joules[name] / timed_steps[name],
                          "source": meter.source, "reason": None}
        elif meter is not None:
            row.energy = {"joules_per_step": None, "source": meter.source,
                          "reason": "the energy counter did not advance during the timed steps "
                                    "(its resolution is coarser than this run): use more steps"}
        else:
            row.energy = {"joules_per_step": None, "source": None, "reason": energy_reason}
        policy = policies[name]
        if name != BASELINE and row.speedup is not None and row.speedup < 1.0:
            row.notes.append(f"slower than FP32 ({row.speedup:.2f}x): "
                             f"{slowdown_reason(policy, env, emulate)}")
        if name != BASELINE:
            row.notes.extend(memory_notes(policy, mem.get("total_ratio"),
                                          mem.get("activation_ratio"), emulate))
        skipped = conv.get("skipped_steps") or 0
        if skipped:
            row.notes.append(f"{skipped} step(s) skipped by the loss scaler (inf/NaN gradients; "
                             "normal while a dynamic scale settles)")
        if conv.get("final_loss") is None or not math.isfinite(conv.get("final_loss", math.nan)):
            row.notes.append("the loss became non-finite: this precision diverged")
