"""FP32 master weights for half-precision models, around any ``torch.optim.Optimizer``.

``MasterWeights(optimizer)`` replaces every FP16/BF16 parameter in the optimizer's param groups
by an FP32 master copy, so the optimizer's arithmetic and state are FP32. During backward a
post-accumulate-grad hook moves each half gradient into the master's FP32 ``.grad`` (adding to
it), so gradients of several micro-batches accumulate in FP32. After ``step`` the masters are
written back to the model's parameters, rounded to nearest-even (or stochastically).

It subclasses ``torch.optim.Optimizer`` so LR schedulers accept it; ``param_groups``, ``state``
and ``defaults`` are the wrapped optimizer's (holding the masters).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from mixprec.formats import FloatFormat, get_format, round_to

__all__ = ["MasterWeights"]

_HALF = (torch.float16, torch.bfloat16)


class MasterWeights(torch.optim.Optimizer):
    """Wrap ``optimizer`` so it steps FP32 masters of its half parameters.

    ``stochastic_rounding``: write masters back with unbiased stochastic rounding (seeded by
    ``seed``; the generator state is checkpointed). ``master_values``: optional FP32 starting
    values per parameter (``Precision.setup`` passes the FP32 weights from before the cast);
    parameters listed there get a master whatever their dtype. ``storage_format``: for emulated
    storage (FP32 tensors holding e.g. FP16 values), the format masters are rounded to on
    write-back. ``refresh_from_params``: reload masters from the parameters before each step,
    so no extra precision survives between steps (pure half training with stochastic rounding).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        stochastic_rounding: bool = False,
        *,
        master_values: Mapping[torch.Tensor, torch.Tensor] | None = None,
        storage_format: str | FloatFormat | None = None,
        refresh_from_params: bool = False,
        seed: int = 0,
    ) -> None:
        if isinstance(optimizer, MasterWeights):
            raise ValueError("optimizer is already wrapped in MasterWeights")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"MasterWeights wraps a torch.optim.Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.stochastic_rounding = stochastic_rounding
        self.refresh_from_params = refresh_from_params
        self.storage_format = get_format(storage_format) if storage_format is not None else None
        self._model_params: list[torch.nn.Parameter] = []
        self._masters: list[torch.Tensor] = []
        self._hooks: list[Any] = []
        self._deferred = False
        explicit = {id(p): v for p, v in (master_values or {}).items()}
        for group in optimizer.param_groups:
            for i, p in enumerate(group["params"]):
                if id(p) not in explicit and p.dtype not in _HALF:
                    continue
                start = explicit.get(id(p), p)
                master = start.detach().to(torch.float32, copy=True)
                master.requires_grad_(p.requires_grad)
                group["params"][i] = master
                if p in optimizer.state:
                    optimizer.state[master] = {
                        k: (v.float() if torch.is_tensor(v) and v.is_floating_point() and k != "step" else v)
                        for k, v in optimizer.state.pop(p).items()}
                self._model_params.append(p)
                self._masters.append(master)
                if p.requires_grad:
                    self._hooks.append(p.register_post_accumulate_grad_hook(self._grad_hook(master)))
        if not self._masters:
            raise ValueError("MasterWeights found no FP16/BF16 parameter in the optimizer: cast the "
                             "model to half first (Precision('16-master').setup does), or use the "
                             "optimizer directly")
        self._generator: torch.Generator | None = None
        if stochastic_rounding:
            self._generator = torch.Generator(device=self._masters[0].device)
            self._generator.manual_seed(seed)

    @staticmethod
    def _move_grad(param: torch.Tensor, master: torch.Tensor) -> None:
        grad = param.grad
        if grad is None:
            return
        if master.grad is None:
            master.grad = grad.to(torch.float32, copy=True)
        else:
            master.grad.add_(grad)  # FP32 accumulation across micro-batches
        param.grad = None

    @classmethod
    def _grad_hook(cls, master: torch.Tensor):
        def move_grad_to_master(param: torch.Tensor) -> None:
            cls._move_grad(param, master)

        return move_grad_to_master

    def defer_grads(self) -> None:
        """Stop moving gradients to the masters during backward; ``collect_grads`` (called by
        ``Precision.step``) moves them at step time instead.

        Needed under ``DistributedDataParallel``: its all-reduce writes the averaged gradient
        into ``param.grad`` *after* the post-accumulate-grad hooks ran, so a hook would move the
        local, un-reduced gradient. In this mode micro-batch gradients accumulate in the
        parameters' half dtype until the step (one rounding per accumulation)."""
        self.remove_hooks()
        self._deferred = True

    @torch.no_grad()
    def collect_grads(self) -> None:
        """Move gradients left on the model parameters into the FP32 masters (adding to them).

        With hooks active (the default) nothing should be left: a gradient found there was
        written after backward by something else (e.g. DDP's all-reduce), and raises."""
        for p, m in zip(self._model_params, self._masters, strict=True):
            if p.grad is None:
                continue
            if not self._deferred:
                raise RuntimeError(
                    "a half-precision parameter received a gradient after backward's hooks moved "
                    "it to the FP32 master (DistributedDataParallel does this with its all-reduced "
                    "gradient): wrap the model with mixprec.distributed.ddp(model, optimizer, "
                    "precision), which collects gradients at step time, or call "
                    "optimizer.defer_grads() after wrapping")
            self._move_grad(p, m)

    # -- the Optimizer surface -----------------------------------------------------------
    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.optimizer.param_groups

    @property
    def state(self) -> Any:  # type: ignore[override]
        return self.optimizer.state

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return self.optimizer.defaults

    @property
    def masters(self) -> list[torch.Tensor]:
        """The FP32 master tensors, in the order of ``model_params``."""
        return self._masters

    @property
    def model_params(self) -> list[torch.nn.Parameter]:
        return self._model_params

    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        """Step the wrapped optimizer on the FP32 masters, then write them back to the model."""
        if self.refresh_from_params:
            with torch.no_grad():
                torch._foreach_copy_(self._masters, [p.detach().float() for p in self._model_params])
        loss = self.optimizer.step(closure) if closure is not None else self.optimizer.step()
        self.write_back()
        return loss

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy masters into the model parameters, rounded to their storage format."""
        fmt = self.storage_format
        if self.stochastic_rounding:
            for p, m in zip(self._model_params, self._masters, strict=True):
                p.copy_(round_to(m, fmt or get_format(p.dtype), stochastic=True,
                                 generator=self._generator))
        elif fmt is not None:
            for p, m in zip(self._model_params, self._masters, strict=True):
                p.copy_(round_to(m, fmt))
        else:
            torch._foreach_copy_(self._model_params, self._masters)  # nearest-even cast

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)
        for p in self._model_params:
            p.grad = None

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        raise RuntimeError("add parameter groups to the optimizer before wrapping it in "
                                  "MasterWeights (or before Precision.setup)")

    def remove_hooks(self) -> None:
        """Detach the gradient hooks from the model parameters."""
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"optimizer": self.optimizer.state_dict(),
                                 "masters": [m.detach().clone() for m in self._masters]}
        if self._generator is not None:
            state["generator"] = self._generator.get_state()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore masters, wrapped-optimizer state and the rounding generator.

        Model parameters are not touched: load them from the model's own state dict."""
        masters = state_dict["masters"]
        if len(masters) != len(self._masters):
            raise ValueError(f"checkpoint has {len(masters)} master tensors, this optimizer "
                             f"{len(self._masters)}: was it saved for another model?")
        with torch.no_grad():
            for m, saved in zip(self._masters, masters, strict=True):
                if m.shape != saved.shape:
                    raise ValueError(f"master shape {tuple(saved.shape)} in checkpoint does not "
                                     f"match {tuple(m.shape)}")
                m.copy_(saved)
        self.optimizer.load_state_dict(state_dict["optimizer"])
        if self._generator is not None and "generator" in state_dict:
            self._generator.set_state(state_dict["generator"])

    def __repr__(self) -> str:
        return (f"MasterWeights({type(self.optimizer).__name__}, masters={len(self._masters)}, "
                f"stochastic_rounding={self.stochastic_rounding})")
