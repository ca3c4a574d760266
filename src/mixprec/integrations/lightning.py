"""Lightning Fabric precision plugin backed by ``mixprec.Precision``.

    fabric = Fabric(accelerator="cpu", plugins=[MixprecPrecision("bf16-master")])
    model, optimizer = fabric.setup(model, optimizer)      # the module is cast to half here
    with fabric.autocast():                                # (model(x) already runs in it)
        loss = loss_fn(model(x), y)
    fabric.backward(loss)                                  # scaled backward
    fabric.clip_gradients(model, optimizer, max_norm=1.0, error_if_nonfinite=False)
    optimizer.step()                                       # FP32 masters step, or the step is skipped
    optimizer.zero_grad()
    plugin = fabric.strategy.precision                     # plugin.precision: the mixprec.Precision
    fabric.save(path, {"model": model, "optimizer": optimizer, "mixprec": plugin})

Fabric never hands a precision plugin the optimizer at ``setup`` time, so for the ``*-master``
presets the plugin casts the module in ``convert_module`` (keeping the FP32 values from before the
cast) and wraps the optimizer in ``MasterWeights`` the first time Fabric passes it in (the first
``clip_gradients`` or ``step``). From then on the optimizer's param groups hold the FP32 masters,
so ``optimizer.step()`` steps them and they are written back to the half module. Until that
first step the gradients of the micro-batches accumulate in the half parameters (one rounding per
micro-batch, first step only); they are moved into the FP32 masters when the wrapper is built.

Fabric does not save a plugin's state itself: put the plugin in the ``fabric.save`` state (any
key) and ``fabric.load`` restores it. Its state holds the loss scaler, the step counters and the
FP32 master weights with the optimizer's FP32 state, so the resume is exact whether or not the
optimizer has stepped in the new process yet. One optimizer per plugin (as ``mixprec.Precision``
serves one model); FSDP and DeepSpeed strategies need their own plugin classes and are refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from mixprec.integrations._require import require
from mixprec.master import MasterWeights
from mixprec.policy import Policy
from mixprec.precision import Precision as MixedPrecisionRecipe
from mixprec.storage import cast_floats

__all__ = ["MixprecPrecision", "MixprecTrainerPrecision"]

_FabricPrecision = require("lightning.fabric.plugins.precision", "lightning",
                           "mixprec.integrations.lightning").Precision
_TrainerPrecision = require("lightning.pytorch.plugins.precision", "lightning",
                            "mixprec.integrations.lightning").Precision


class MixprecPrecision(_FabricPrecision):
    """Fabric precision plugin: every numeric decision is ``mixprec.Precision``'s.

    ``precision``: a mixprec preset (``"16-master"``, ``"bf16-master"``, ``"16-mixed"``, ...)
    or ``Policy``; ``precision_kwargs`` go to ``mixprec.Precision`` (``scaler=``, ``emulate=``,
    ``stochastic_rounding=``, ``device=``...). ``self.precision`` is that ``mixprec.Precision``
    (``.scaler.scale``, ``.steps``, ``.skipped_steps``, ``.last_grad_norm``).
    """

    def __init__(self, precision: str | Policy = "16-master", **precision_kwargs: Any) -> None:
        self.precision = MixedPrecisionRecipe(precision, **precision_kwargs)  # type: ignore[assignment]
        self._master_values: dict[torch.Tensor, torch.Tensor] | None = None  # param -> FP32 start
        self._master_options: dict[str, Any] = {}
        self._master: MasterWeights | None = None
        self._pending_master_state: dict[str, Any] | None = None

    # -- module -----------------------------------------------------------------------------
    def convert_module(self, module: nn.Module) -> nn.Module:
        """``mixprec.Precision.setup``: cast the parameters for ``*-master``/``*-true`` presets
        (norm layers stay FP32), install the input/output casting hooks. The FP32 values from
        before the cast are kept to start the master copy."""
        params = [q for q in module.parameters() if q.requires_grad]
        if not params:
            return self.precision.setup(module)
        module, probe = self.precision.setup(module, torch.optim.SGD(params, lr=0.0))
        if isinstance(probe, MasterWeights):  # this policy keeps a master copy: remember its start
            probe.remove_hooks()
            self._master_values = dict(zip(probe.model_params, probe.masters, strict=True))
            self._master_options = {"stochastic_rounding": probe.stochastic_rounding,
                                    "storage_format": probe.storage_format,
                                    "refresh_from_params": probe.refresh_from_params}
        return module

    def forward_context(self) -> AbstractContextManager:
        """``mixprec.Precision.autocast()``: autocast, the emulator, or nothing."""
        return self.precision.autocast()

    def convert_input(self, data: Any) -> Any:
        """Floating inputs to the compute dtype for presets that store half parameters (the
        module's own pre-hook does the same, so calling the raw module works too)."""
        p = self.precision.policy
        if p.casts_params and not self.precision.emulate:
            return cast_floats(data, p.compute_dtype)
        return data

    def convert_output(self, data: Any) -> Any:
        """Floating outputs to the policy's output dtype (FP32 for every preset)."""
        return cast_floats(data, self.precision.policy.output_dtype)

    # -- backward and step --------------------------------------------------------------------
    def backward(self, tensor: torch.Tensor, model: nn.Module | None, *args: Any, **kwargs: Any) -> None:
        """``(loss * scale).backward()`` through ``mixprec.Precision.backward``."""
        if args:
            raise ValueError("MixprecPrecision.backward takes keyword arguments only "
                             "(e.g. retain_graph=True); the loss must be a scalar")
        self.precision.backward(tensor, **kwargs)

    def unscale_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        """Unscale the gradients in place (``fabric.clip_gradients`` calls this first); the next
        ``optimizer.step()`` does not unscale again. Inf/NaN found here skips that step."""
        self.precision.unscale_(self._optimizer_for(optimizer))

    def main_params(self, optimizer: torch.optim.Optimizer) -> Iterator[torch.Tensor]:
        """The parameters the optimizer steps: the FP32 masters for ``*-master`` presets."""
        for group in self._optimizer_for(optimizer).param_groups:
            yield from group["params"]

    def optimizer_step(self, optimizer: Any, **kwargs: Any) -> bool:
        """``mixprec.Precision.step``: unscale (unless done), check for inf/NaN, step or skip,
        update the loss scale. Returns True when the optimizer stepped. One host sync."""
        if kwargs:
            raise ValueError(f"MixprecPrecision does not pass {sorted(kwargs)} to the optimizer "
                             "(closure-based optimizers such as LBFGS are not supported)")
        return self.precision.step(self._optimizer_for(optimizer))

    def _optimizer_for(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """The optimizer ``mixprec.Precision.step`` takes: ``optimizer`` itself, or for a master
        policy its ``MasterWeights`` wrapper, built on first use (see the module docstring)."""
        if self._master_values is None:
            return optimizer
        if self._master is not None:
            if optimizer is self._master:
                return optimizer
            if self._master.optimizer is not optimizer:
                raise ValueError("MixprecPrecision steps one optimizer (one Precision per model): "
                                 "give each model/optimizer pair its own Fabric plugin")
            return self._master
        ours = {id(k) for k in self._master_values}
        if not any(id(q) in ours for g in optimizer.param_groups for q in g["params"]):
            raise ValueError("this optimizer holds none of the module's parameters: create it from "
                             "model.parameters() and pass both to fabric.setup(model, optimizer)")
        values = {q: m.to(q.device) for q, m in self._master_values.items()}
        master = MasterWeights(optimizer, master_values=values, **self._master_options)
        with torch.no_grad():  # gradients of the backward passes before this first step
            for q, m in zip(master.model_params, master.masters, strict=True):
                if q.grad is not None:
                    m.grad = q.grad.to(torch.float32)
                    q.grad = None
        self._master, self._master_values = master, {}
        if self._pending_master_state is not None:
            master.load_state_dict(self._pending_master_state)
            self._pending_master_state = None
        return master

    # -- checkpointing --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Scaler, step counters and (``*-master``) the FP32 masters with the optimizer's FP32
        state. Fabric does not call this on its own: put the plugin in ``fabric.save``'s state."""
        master = self._master.state_dict() if self._master is not None else self._pending_master_state
        return {"precision": self.precision.state_dict(), "master_weights": master}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what ``state_dict`` saved; masters are applied now, or when the optimizer is
        first seen (after ``fabric.load`` in a new process)."""
        self.precision.load_state_dict(state_dict["precision"])
        master = state_dict.get("master_weights")
        if master is None:
            return
        if self._master is not None:
            self._master.load_state_dict(master)
        else:
            self._pending_master_state = master


class MixprecTrainerPrecision(MixprecPrecision, _TrainerPrecision):
    """The same plugin for Lightning's ``Trainer``: ``Trainer(plugins=[MixprecTrainerPrecision(
    "bf16-master")])``. The Trainer hands the optimizer over in ``connect``, so ``*-master``
    presets wrap it in ``MasterWeights`` before the first step (FP32 accumulation from the first
    micro-batch). Gradient clipping (``gradient_clip_val``) sees unscaled gradients; a step with
    inf/NaN gradients is skipped. The Trainer saves and restores the plugin's state in its
    checkpoints itself (``ckpt_path=`` resumes exactly). One optimizer; the loss goes through
    ``mixprec.Precision.backward`` (a ``LightningModule.backward`` override is not called)."""

    def connect(self, model: nn.Module, optimizers: list[Any], lr_schedulers: list[Any]
                ) -> tuple[nn.Module, list[Any], list[Any]]:
        if self._master_values is None or not optimizers:
            return model, optimizers, lr_schedulers
        if len(optimizers) != 1:
            raise ValueError(f"MixprecTrainerPrecision steps one optimizer, configure_optimizers "
                             f"returned {len(optimizers)}")
        return model, [self._optimizer_for(optimizers[0])], lr_schedulers

    def convert_input(self, data: Any) -> Any:
        """The whole batch (targets too) passes through here: leave it as it is; the module's
        forward pre-hook casts the model's inputs."""
        return data

    def backward(self, tensor: torch.Tensor, model: Any, optimizer: Any, *args: Any,  # type: ignore[override]
                 **kwargs: Any) -> None:
        MixprecPrecision.backward(self, tensor, model, *args, **kwargs)

    def optimizer_step(self, optimizer: Any, model: Any, closure: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """Run the closure (forward + backward), unscale, let the Trainer clip, then step or skip."""
        if kwargs:
            raise ValueError(f"MixprecTrainerPrecision does not pass {sorted(kwargs)} to the optimizer")
        closure_result = closure()
        skip = closure_result is None and model.automatic_optimization  # training_step returned None
        if not skip:
            self.precision.unscale_(self._optimizer_for(optimizer))
        self._after_closure(model, optimizer)  # on_before_optimizer_step hooks, gradient clipping
        if not skip:
            self.precision.step(self._optimizer_for(optimizer))
        return closure_result
