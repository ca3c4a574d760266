"""``Precision``: the one small seam a training loop calls.

    prec = Precision("16-mixed")
    model, optimizer = prec.setup(model, optimizer)
    with prec.autocast():
        loss = loss_fn(model(x), y)
    prec.backward(loss)                  # scaled backward
    prec.step(optimizer, max_norm=10.0)  # unscale, clip, inf/NaN check, step or skip, update scale
    optimizer.zero_grad(set_to_none=True)

``step`` synchronises with the host once (reading the found-inf flag to decide whether to
step, together with whether the loss seen by ``backward`` was finite); everything else stays on
the device. After ``warn_skips`` consecutive skipped steps a ``SkippedStepsWarning`` names the
cause: inf/NaN *losses* (bad data or divergence: no loss scale fixes it) or finite losses with
inf/NaN gradients (FP16 overflow in backward). How parameters are stored and cast (real half,
emulated half, FSDP2-sharded) is one ``mixprec.storage`` mode, chosen once.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from mixprec.master import MasterWeights
from mixprec.policy import Policy, dtype_name
from mixprec.scaler import LossScaler, NoScaler, make_scaler
from mixprec.storage import NORM_LAYERS, EmulatedHalf, RealHalf, Sharded, StorageMode, is_fsdp2

__all__ = ["NORM_LAYERS", "Precision", "SkippedStepsWarning"]

_STATE_KEYS = ("policy", "emulate", "scaler", "steps", "skipped_steps")


class SkippedStepsWarning(RuntimeWarning):
    """Many optimizer steps in a row were skipped; the message names the cause."""

def _unscale_and_check(grads: list[torch.Tensor], inv_scale: torch.Tensor,
                       found_inf: torch.Tensor) -> None:
    """Multiply ``grads`` by ``inv_scale`` in place and set ``found_inf`` to 1 where any is
    inf/NaN. One fused kernel per (device, dtype) group; no host synchronisation."""
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for g in grads:
        groups.setdefault((g.device, g.dtype), []).append(g)
    for (device, _), group in groups.items():
        flag = found_inf if found_inf.device == device else torch.zeros_like(found_inf, device=device)
        torch._amp_foreach_non_finite_check_and_unscale_(group, flag, inv_scale.to(device))
        if flag is not found_inf:
            found_inf.copy_(torch.maximum(found_inf, flag.to(found_inf.device)))


def _unscale_clip_and_check(grads: list[torch.Tensor], inv_scale: torch.Tensor, max_norm: float,
                            found_inf: torch.Tensor) -> torch.Tensor:
    """Unscale and clip in one pass over the gradients (all on one device); returns the
    unscaled total 2-norm (FP32, 0-d).

    Reads the *scaled* gradients once for per-tensor norms (FP32), derives the unscaled norm
    (scaling by a power of two commutes with the norm exactly), then multiplies every gradient
    once by ``inv_scale * min(1, max_norm / (norm + 1e-6))`` -- the same result as unscale then
    ``clip_grad_norm_``, with one read/write pass fewer. A non-finite norm (any inf/NaN gradient,
    or a norm beyond FP32's range) sets ``found_inf``. No host synchronisation."""
    norms = torch._foreach_norm(grads, 2, dtype=torch.float32)
    total = torch.linalg.vector_norm(torch.stack(norms)) * inv_scale
    found_inf.copy_(torch.maximum(found_inf, (~torch.isfinite(total)).float()))
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    torch._foreach_mul_(grads, inv_scale * coef)
    return total


def _emulated_backward(loss: torch.Tensor, policy: Policy, gradient: torch.Tensor | None = None,
                       retain_graph: bool | None = None, create_graph: bool = False,
                       inputs: Any = None) -> None:
    """``loss.backward()`` inside the emulator's ``recomputation`` region, so forward code that
    activation checkpointing re-runs during backward is emulated as the forward was.
    ``Tensor.backward`` would dispatch through the emulator's torch-function mode and run with
    the mode popped; torch's engine entry point (what ``torch.autograd.backward`` calls once
    dispatch is done) keeps it on the stack."""
    from torch.autograd.graph import _engine_run_backward

    from mixprec.emulate.mode import recomputation

    grad = torch.ones_like(loss) if gradient is None else gradient
    inputs = () if inputs is None else ((inputs,) if torch.is_tensor(inputs) else tuple(inputs))
    with recomputation(policy):
        _engine_run_backward((loss,), (grad,), create_graph if retain_graph is None else retain_graph,
                             create_graph, inputs, allow_unreachable=True, accumulate_grad=True)


def _is_ddp(model: nn.Module) -> bool:
    return isinstance(model, torch.nn.parallel.DistributedDataParallel)


_is_fsdp2 = is_fsdp2  # the name mixprec.distributed.checkpoint imports


class Precision:
    """Mixed-precision recipe for one model and its optimizer.

    ``policy``: a preset name, ``"auto"``, a key string or a ``Policy``. ``scaler``: a
    ``LossScaler`` or ``"none"``/``"static"``/``"dynamic"``; default from the policy (dynamic for
    FP16 with a master copy). ``device``: where the model runs (default: that of the model at
    ``setup``; for ``"auto"``, CUDA when available). ``emulate``: reproduce the policy's numerics
    in FP32 arithmetic (``mixprec.emulate``) instead of running real low-precision dtypes.
    ``stochastic_rounding``: master write-back (or, for ``*-true``, each step) rounds stochastically.
    Steps whose gradients hold inf/NaN are skipped, with or without a loss scaler. Under
    ``torch.distributed`` the inf/NaN verdict is all-reduced over ``process_group`` (default:
    the world; ``mixprec.distributed.ddp(..., process_group=g)`` sets it) so its ranks skip
    together. ``warn_skips``: warn (``SkippedStepsWarning``, once per streak) after this many
    consecutive skipped steps, naming the cause; None: never. ``consecutive_skips`` and
    ``last_loss_finite`` (whether the losses of the last step were all finite) are readable
    after each ``step`` at no extra cost.
    """

    def __init__(
        self,
        policy: str | Policy = "32",
        *,
        scaler: LossScaler | str | None = None,
        device: str | torch.device | None = None,
        emulate: bool = False,
        stochastic_rounding: bool = False,
        warn_skips: int | None = 20,
    ) -> None:
        self.reason = ""
        if isinstance(policy, str) and policy.strip().lower() == "auto":
            from mixprec.hardware import auto_policy

            policy, self.reason = auto_policy(device)
            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.policy = Policy.parse(policy)
        self.device = torch.device(device) if device is not None else None
        self.emulate = bool(emulate)
        self.stochastic_rounding = stochastic_rounding
        self.process_group: Any = None  # the group found-inf is all-reduced over (None: world)
        self.mode: StorageMode = (EmulatedHalf if self.emulate else RealHalf)(
            self.policy, stochastic_rounding)
        if scaler is None:
            scaler = self.policy.default_scaler
        self.scaler: LossScaler = make_scaler(scaler) if isinstance(scaler, str) else scaler
        self.steps = 0
        self.skipped_steps = 0
        self.last_grad_norm: torch.Tensor | None = None  # unscaled norm of the last clipped step
        if warn_skips is not None and int(warn_skips) < 1:
            raise ValueError(f"warn_skips={warn_skips}: use a positive number of steps, or None")
        self.warn_skips = warn_skips
        self.consecutive_skips = 0
        self.last_loss_finite = True
        self._streak_bad_losses = 0
        self._loss_ok: torch.Tensor | None = None  # all losses since the last step finite (device)
        self._backward_pending = False
        self._in_backward = False
        self._foreign_backward = False  # a plain loss.backward() accumulated into a gradient
        self._unscaled_inf: torch.Tensor | None = None  # set by unscale_(), consumed by step()
        self._hooks: list[Any] = []
        self._model: nn.Module | None = None
        if self.device is not None:
            self.mode.check_device(self.device)
        if self.policy.param_dtype != torch.float32 and self.policy.master_dtype is None:
            warnings.warn(
                f"{self.policy} is pure half precision with no FP32 master copy: updates smaller "
                "than half an ulp of a weight are rounded away and training often stalls; "
                f"use '{'bf16' if self.policy.param_dtype == torch.bfloat16 else '16'}-master' "
                "to keep FP32 master weights", UserWarning, stacklevel=2)

    @property
    def model(self) -> nn.Module | None:
        """The model ``setup`` prepared (None before ``setup``)."""
        return self._model

    # -- setup ---------------------------------------------------------------------------
    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> Any:
        """Prepare ``model`` (and ``optimizer``) for this policy; returns ``(model, optimizer)``,
        or ``model`` alone when no optimizer is given.

        ``*-master``/``*-true``: non-normalisation parameters and buffers are cast to the half
        dtype in place (``Parameter`` objects are kept, so existing optimizer references stay
        valid); normalisation layers keep FP32 weights (BatchNorm normalises the half input with
        FP32 statistics; other norms are fed FP32 inputs); floating model inputs are cast
        to the compute dtype. Mixed policies keep FP32 parameters. Floating model outputs are
        cast to the policy's output dtype. For ``*-master`` the optimizer is wrapped in
        ``MasterWeights``, initialised from the FP32 weights as they were before the cast.

        Distributed: call ``setup`` *before* wrapping the model in ``DistributedDataParallel``
        (then wrap with ``mixprec.distributed.ddp``). A model already sharded with FSDP2's
        ``fully_shard`` is accepted as it is: its sharded FP32 parameters are the master copy and
        its ``MixedPrecisionPolicy`` does the casting (``mixprec.distributed.fully_shard_model``
        builds it from the policy), so ``setup`` neither casts parameters nor wraps the optimizer.
        """
        if self._model is not None:
            raise RuntimeError("this Precision is already set up with a model; create one "
                               "Precision per model")
        if self.device is None:
            first = next(iter(model.parameters()), None)
            self.device = first.device if first is not None else torch.device("cpu")
            self.mode.check_device(self.device)
        if isinstance(optimizer, MasterWeights):
            raise ValueError("pass the plain optimizer to setup(); it wraps it in MasterWeights "
                             "itself where the policy needs a master copy")
        p = self.policy
        if is_fsdp2(model):
            if self.emulate:
                raise ValueError("emulate=True is not supported on an FSDP2 (fully_shard) model: "
                                 "emulate on one process or under DistributedDataParallel")
            self.mode = Sharded(p, self.stochastic_rounding, model)
        elif p.casts_params and _is_ddp(model):
            raise ValueError(f"{p} casts the parameters, which would break the buckets of the "
                             "DistributedDataParallel wrapping this model: call "
                             "prec.setup(model, optimizer) first, then wrap the returned model with "
                             "mixprec.distributed.ddp(model, optimizer, prec)")
        cast, masters, hooks = self.mode.prepare(model)
        self._hooks += hooks
        self._model = model
        if not isinstance(self.mode, Sharded) and not isinstance(self.scaler, NoScaler):
            self._add_backward_watch(model)
        if optimizer is None:
            return model
        return model, self.mode.wrap_optimizer(optimizer, cast, masters)

    def _add_backward_watch(self, model: nn.Module) -> None:
        """A post-accumulate-grad hook per parameter notes a gradient accumulated outside
        ``prec.backward`` (a plain ``loss.backward()``: that loss was never scaled). Costs one
        Python call per parameter per backward; ``torch.autograd.grad`` does not trigger it."""
        def note(_param: torch.Tensor) -> None:
            if not self._in_backward:
                self._foreign_backward = True

        for q in model.parameters():
            if q.requires_grad:
                self._hooks.append(q.register_post_accumulate_grad_hook(note))

    # -- the step protocol ---------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager:
        """Context for the forward pass and loss: autocast to the compute dtype (mixed and
        master policies), the emulator (``emulate=True``), or nothing (FP32, ``*-true``)."""
        return self.mode.autocast((self.device or torch.device("cpu")).type)

    def backward(self, loss: torch.Tensor, **kwargs: Any) -> None:
        """``(loss * scale).backward()``. Call once per micro-batch; with master weights the
        gradients accumulate in FP32. No host synchronisation."""
        if not torch.is_tensor(loss) or loss.numel() != 1:
            raise ValueError(f"backward expects a scalar loss tensor, got "
                             f"{type(loss).__name__}{tuple(getattr(loss, 'shape', ()))}: reduce it "
                             "first (e.g. loss.mean())")
        ok = torch.isfinite(loss.detach()).reshape(())
        self._loss_ok = ok if self._loss_ok is None else self._loss_ok & ok.to(self._loss_ok.device)
        scaled = self.scaler.scale_loss(loss.float())
        self._in_backward = True
        try:
            if self.emulate and self.policy.compute_dtype != torch.float32:
                _emulated_backward(scaled, self.policy, **kwargs)
            else:
                scaled.backward(**kwargs)
        finally:
            self._in_backward = False
        self._backward_pending = True

    def _grads(self, optimizer: torch.optim.Optimizer) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Parameters with a gradient, and their gradients; a sharded (DTensor) gradient is given
        as its local shard, which shares storage, so unscaling it in place unscales the DTensor."""
        params, grads = [], []
        for group in optimizer.param_groups:
            for q in group["params"]:
                if q.grad is not None:
                    if q.grad.is_sparse:
                        raise ValueError("sparse gradients are not supported by Precision.step")
                    params.append(q)
                    grads.append(q.grad.to_local() if hasattr(q.grad, "to_local") else q.grad)
        return params, grads

    def _collect(self, optimizer: torch.optim.Optimizer,
                 caller: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Parameters and gradients the step works on (FP32 master gradients under ``*-master``,
        collected from the half model first); ``caller`` names the method in the misuse error."""
        if self.mode.wants_master_wrapper and not isinstance(optimizer, MasterWeights):
            raise ValueError(f"{self.policy} steps through MasterWeights: pass the optimizer "
                             f"returned by prec.setup(model, optimizer) to {caller}()")
        if isinstance(optimizer, MasterWeights):
            optimizer.collect_grads()
        return self._grads(optimizer)

    def step(self, optimizer: torch.optim.Optimizer, max_norm: float | None = None,
             scheduler: Any = None) -> bool:
        """Unscale the gradients, clip them to ``max_norm`` (if given), check for inf/NaN,
        then step ``optimizer`` (and ``scheduler``) or skip, and update the loss scale.

        Returns True when the optimizer stepped. A skipped step leaves parameters, optimizer
        state and the scheduler untouched. With ``max_norm``, unscaling and clipping share one
        pass over the gradients, and ``self.last_grad_norm`` holds the unscaled total norm (a
        0-d FP32 tensor on the device; reading it synchronises). After ``unscale_`` the gradients
        are not unscaled again (nor is clipping fused). One host synchronisation (the found-inf
        read).
        """
        params, grads = self._collect(optimizer, "step")
        if self._foreign_backward:
            self._foreign_backward = False
            raise RuntimeError("a loss.backward() outside prec.backward(loss) added gradients since "
                               "the last step, so that loss was not scaled (it would count at "
                               f"1/{self.scaler.scale:g} of its weight): replace loss.backward() "
                               "with prec.backward(loss)")
        if not self._backward_pending:
            if not grads:
                raise RuntimeError("no gradients to step on: call prec.backward(loss) before "
                                   "prec.step(optimizer)")
            if not isinstance(self.scaler, NoScaler):
                raise RuntimeError("gradients were produced without prec.backward(loss), so the "
                                   "loss was not scaled: replace loss.backward() with "
                                   "prec.backward(loss)")
        device = grads[0].device if grads else (self.device or torch.device("cpu"))
        unscaled, self._unscaled_inf = self._unscaled_inf, None
        found_inf = unscaled if unscaled is not None else torch.zeros(1, dtype=torch.float32, device=device)
        fused_clip = (unscaled is None and max_norm is not None and bool(grads) and self.mode.fused_clip
                      and all(g.device == device for g in grads))
        if fused_clip:
            self.last_grad_norm = _unscale_clip_and_check(grads, self.scaler.inv_scale(device),
                                                          max_norm, found_inf)
        elif unscaled is None and grads:
            _unscale_and_check(grads, self.scaler.inv_scale(device), found_inf)
        loss_ok, self._loss_ok = self._loss_ok, None
        flags = found_inf  # [found inf/NaN gradient, (if known) a loss was inf/NaN]
        if loss_ok is not None:
            flags = torch.cat([found_inf, (~loss_ok).float().reshape(1).to(device)])
        flags = self._all_reduce(flags)  # one collective carries both verdicts
        found_inf = flags[:1]
        if max_norm is not None and grads and not fused_clip:
            self.last_grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        verdict = flags.tolist()  # the one host synchronisation per step
        skipped, loss_bad = verdict[0] > 0, len(verdict) > 1 and verdict[1] > 0
        self.last_loss_finite = not loss_bad
        if not skipped:
            optimizer.step()
            self.mode.after_step(optimizer, self._model)
            if scheduler is not None:
                scheduler.step()
        self.scaler.update(found_inf)
        self.steps += 1
        self.skipped_steps += int(skipped)
        self._backward_pending = False
        self._count_streak(skipped, loss_bad)
        return not skipped

    def _count_streak(self, skipped: bool, loss_bad: bool) -> None:
        if not skipped:
            self.consecutive_skips = self._streak_bad_losses = 0
            return
        self.consecutive_skips += 1
        self._streak_bad_losses += int(loss_bad)
        if self.warn_skips is not None and self.consecutive_skips == self.warn_skips:
            warnings.warn(self.skip_streak_message(), SkippedStepsWarning, stacklevel=3)

    def skip_streak_message(self) -> str:
        """What the current run of consecutive skipped steps means (reads the scale: one sync)."""
        n, bad = self.consecutive_skips, self._streak_bad_losses
        scale = self.scaler.scale
        floor = getattr(getattr(self.scaler, "config", None), "min_scale", None)
        at = f"loss scale now {scale:g}" + (" (the floor)" if floor is not None and scale <= floor else "")
        if bad:
            return (f"{n} consecutive optimizer steps skipped; the loss itself was inf/NaN in {bad} "
                    f"of them: bad data (inf/NaN inputs or labels) or a diverged model, not FP16 "
                    f"overflow, so no loss scale can fix it ({at}). Check the data, lower the "
                    "learning rate or resume from an earlier checkpoint; mixprec doctor attributes "
                    "each skip")
        return (f"{n} consecutive optimizer steps skipped with a finite loss and inf/NaN gradients: "
                f"the backward pass overflows {dtype_name(self.policy.compute_dtype)} ({at}). Use "
                "bf16-mixed where the device has BF16, or find the overflowing layer with mixprec "
                "doctor")

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Unscale the gradients in place now and record whether any is inf/NaN, as
        ``torch.amp.GradScaler.unscale_`` does: for clipping or inspecting true gradients before
        ``step``, which then neither unscales again nor fuses clipping. Once per step. No host
        synchronisation."""
        if self._unscaled_inf is not None:
            raise RuntimeError("unscale_() was already called since the last step(): the gradients "
                               "are unscaled; call step(optimizer) next")
        _, grads = self._collect(optimizer, "unscale_")
        device = grads[0].device if grads else (self.device or torch.device("cpu"))
        found_inf = torch.zeros(1, dtype=torch.float32, device=device)
        if grads:
            _unscale_and_check(grads, self.scaler.inv_scale(device), found_inf)
        self._unscaled_inf = found_inf

    def _all_reduce(self, found_inf: torch.Tensor) -> torch.Tensor:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size(self.process_group) > 1:
            dist.all_reduce(found_inf, op=dist.ReduceOp.MAX, group=self.process_group)
        return found_inf

    # -- checkpointing -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Policy, scaler state and step counters (the optimizer and model save their own)."""
        return {"policy": str(self.policy), "emulate": self.emulate,
                "scaler": self.scaler.state_dict(), "steps": self.steps,
                "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` saved; another policy, or a dict that is not a Precision
        state, raises ValueError naming the problem."""
        missing = ([k for k in _STATE_KEYS if k != "emulate" and k not in state]
                   if isinstance(state, dict) else list(_STATE_KEYS))
        if missing:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"not a Precision state (missing {', '.join(missing)}; got {got}): "
                             f"expected the dict of prec.state_dict() with keys {', '.join(_STATE_KEYS)}")
        saved = Policy.parse(state["policy"])
        if saved != self.policy:
            raise ValueError(f"checkpoint was saved with precision '{saved}', this Precision is "
                             f"'{self.policy}': build Precision('{saved}') to resume it")
        self.scaler.load_state_dict(state["scaler"])
        self.steps = int(state["steps"])
        self.skipped_steps = int(state["skipped_steps"])

    def __repr__(self) -> str:
        dev = self.device.type if self.device is not None else "unset"
        return (f"Precision('{self.policy}', device={dev}, scaler={self.scaler!r}, "
                f"emulate={self.emulate}, compute={dtype_name(self.policy.compute_dtype)})")

    @contextlib.contextmanager
    def no_autocast(self) -> Iterator[None]:
        """Run a region in FP32 inside ``autocast()`` (e.g. a numerically sensitive loss);
        under ``emulate=True`` it switches the emulator off for the region."""
        with self.mode.no_autocast((self.device or torch.device("cpu")).type):
            yield
