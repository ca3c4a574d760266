"""How a ``Precision`` stores and casts the parameters: one small class per mode, chosen once.

- ``RealHalf``: real low-precision dtypes. ``*-master``/``*-true`` cast non-normalisation
  parameters and buffers to the half dtype in place and cast the model's floating inputs;
  ``torch.autocast`` does the op-level casts of the mixed policies.
- ``EmulatedHalf``: FP32 storage that holds half values (``mixprec.emulate.mark_storage``), the
  emulator rounds what it computes; ``*-true`` rounds the parameters after each step.
- ``Sharded``: a model sharded by FSDP2's ``fully_shard``: its sharded FP32 parameters are the
  master copy and its ``MixedPrecisionPolicy`` does the casting, so nothing is cast here.

``Precision`` picks the mode in ``__init__`` (``emulate=``) and switches to ``Sharded`` when
``setup`` is given an FSDP2 model; its public methods then read straight through.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from mixprec._tree import map_leaves
from mixprec.formats import FloatFormat, get_format, round_to
from mixprec.master import MasterWeights
from mixprec.policy import Policy, dtype_name

__all__ = ["NORM_LAYERS", "EmulatedHalf", "RealHalf", "Sharded", "StorageMode", "cast_floats",
           "is_fsdp2"]

NORM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


def cast_floats(obj: Any, dtype: torch.dtype) -> Any:
    """Cast floating tensors inside (nested tuples/lists/dicts of) ``obj`` to ``dtype``."""
    return map_leaves(lambda t: t.to(dtype) if torch.is_tensor(t) and t.is_floating_point()
                      and t.dtype != dtype else t, obj)


def is_fsdp2(model: nn.Module) -> bool:
    """True for a module sharded with FSDP2's ``fully_shard`` (checked without importing FSDP
    unless torch.distributed is available)."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


def _cast_params(model: nn.Module) -> list[torch.Tensor]:
    """The floating parameters outside normalisation layers: those a half policy stores in half."""
    return [param for m in model.modules() if not isinstance(m, NORM_LAYERS)
            for param in m.parameters(recurse=False) if param.is_floating_point()]


class StorageMode:
    """The base: what every mode shares. ``prepare`` casts (or tags) the parameters and adds the
    hooks; ``wrap_optimizer`` adds the FP32 master copy where the policy keeps one."""

    emulated = False
    fused_clip = True  # the gradients are plain local tensors: unscale and clip in one pass

    def __init__(self, policy: Policy, stochastic_rounding: bool = False) -> None:
        self.policy = policy
        self.stochastic_rounding = stochastic_rounding

    # -- validation ---------------------------------------------------------------------
    def check_device(self, device: torch.device) -> None:
        """Raise ValueError (with the nearest preset that runs) if the policy cannot run here."""

    # -- setup --------------------------------------------------------------------------
    @property
    def storage_format(self) -> FloatFormat | None:
        """The format the stored parameters are rounded to by the optimizer wrapper, if any."""
        return None

    @property
    def wants_master_wrapper(self) -> bool:
        p = self.policy
        return p.master_dtype is not None or (p.casts_params and self.stochastic_rounding)

    def prepare(self, model: nn.Module) -> tuple[list[torch.Tensor], dict[torch.Tensor, torch.Tensor],
                                                 list[Any]]:
        """Store the parameters as the policy says; returns ``(cast parameters, their FP32
        values before the cast (for the master copy), hook handles)``."""
        p, hooks = self.policy, []
        cast: list[torch.Tensor] = []
        masters: dict[torch.Tensor, torch.Tensor] = {}
        if p.casts_params:
            cast = _cast_params(model)
            if p.master_dtype is not None:
                masters = {q: q.detach().to(p.master_dtype, copy=True) for q in cast}
            self.store_half(model, cast)
            hooks += self.input_hooks(model)
        if p != Policy() and not p.is_fp8:
            hooks.append(model.register_forward_hook(
                lambda _m, _i, out: cast_floats(out, p.output_dtype)))
        return cast, masters, hooks

    def store_half(self, model: nn.Module, params: list[torch.Tensor]) -> None:
        """Store ``params`` in the policy's half dtype (real or emulated); modes that cast
        parameters override it (the sharded mode never casts: FSDP2 does)."""
        raise NotImplementedError(f"{type(self).__name__} does not store parameters in half")

    def input_hooks(self, model: nn.Module) -> list[Any]:
        return []

    def wrap_optimizer(self, optimizer: torch.optim.Optimizer, cast: list[torch.Tensor],
                       masters: dict[torch.Tensor, torch.Tensor]) -> torch.optim.Optimizer:
        p = self.policy
        if p.master_dtype is not None:
            return MasterWeights(optimizer, self.stochastic_rounding, master_values=masters,
                                 storage_format=self.storage_format)
        if p.casts_params and self.stochastic_rounding:
            # *-true with stochastic rounding: the step is computed in FP32 from the half values
            # and rounded stochastically; no precision survives between steps.
            return MasterWeights(optimizer, True, refresh_from_params=True,
                                 master_values=self.true_master_values(cast),
                                 storage_format=self.storage_format)
        return optimizer

    def true_master_values(self, cast: list[torch.Tensor]) -> dict[torch.Tensor, torch.Tensor] | None:
        return None

    # -- the step -----------------------------------------------------------------------
    def autocast(self, device_type: str) -> contextlib.AbstractContextManager:
        if self.policy.uses_autocast:
            return torch.autocast(device_type, dtype=self.policy.compute_dtype)
        return contextlib.nullcontext()

    def no_autocast(self, device_type: str) -> contextlib.AbstractContextManager:
        return torch.autocast(device_type, enabled=False)

    def after_step(self, optimizer: torch.optim.Optimizer, model: nn.Module | None) -> None:
        """After a taken optimizer step (nothing for most modes)."""


class RealHalf(StorageMode):
    """Real low-precision dtypes on the device."""

    def check_device(self, device: torch.device) -> None:
        p = self.policy
        if p.is_fp8:
            raise ValueError(f"{p} computes in FP8, which mixprec runs only under emulation: "
                             f"Precision('{p}', emulate=True); on real hardware use 'bf16-mixed'")
        if p.compute_dtype == torch.float32:
            return
        if device.type == "cuda" and p.compute_dtype == torch.bfloat16 and \
                not torch.cuda.is_bf16_supported():
            nearest = str(p).replace("bf16", "16")
            raise ValueError(f"{p} needs BF16, which {torch.cuda.get_device_name(device)} does not "
                             f"support; the nearest preset that runs is '{nearest}'")
        available = getattr(torch.amp, "is_autocast_available", lambda _t: True)
        if p.uses_autocast and not available(device.type):
            raise ValueError(f"torch has no autocast for device type {device.type!r}; use '32'")

    @torch.no_grad()
    def store_half(self, model: nn.Module, params: list[torch.Tensor]) -> None:
        dtype = self.policy.param_dtype
        for param in params:
            param.grad = None
            param.data = param.data.to(dtype)
        for m in model.modules():
            if isinstance(m, NORM_LAYERS):
                continue
            for name, buf in m.named_buffers(recurse=False):
                if buf.is_floating_point():
                    setattr(m, name, buf.to(dtype))

    def input_hooks(self, model: nn.Module) -> list[Any]:
        compute = self.policy.compute_dtype
        hooks = [model.register_forward_pre_hook(lambda _m, args: cast_floats(args, compute))]
        for m in model.modules():
            # BatchNorm takes half inputs with FP32 weights and statistics natively (FP32 math
            # inside) and saves the half input for backward; other norms get FP32 inputs.
            if isinstance(m, NORM_LAYERS) and not isinstance(m, nn.modules.batchnorm._BatchNorm):
                hooks.append(m.register_forward_pre_hook(
                    lambda _m, args: cast_floats(args, torch.float32)))
                hooks.append(m.register_forward_hook(
                    lambda _m, _i, out: cast_floats(out, compute)))
        return hooks


class EmulatedHalf(StorageMode):
    """FP32 storage holding the policy's half values; the emulator rounds what it computes."""

    emulated = True

    @property
    def storage_format(self) -> FloatFormat | None:
        return get_format(self.policy.param_dtype)

    @torch.no_grad()
    def store_half(self, model: nn.Module, params: list[torch.Tensor]) -> None:
        from mixprec.emulate import mark_storage

        for param in params:
            param.grad = None
            mark_storage(param, self.policy.param_dtype)  # FP32 storage holding half values, tagged

    def true_master_values(self, cast: list[torch.Tensor]) -> dict[torch.Tensor, torch.Tensor] | None:
        return {q: q for q in cast}

    def autocast(self, device_type: str) -> contextlib.AbstractContextManager:
        if self.policy.compute_dtype != torch.float32:
            from mixprec.emulate import emulate

            return emulate(self.policy)
        return super().autocast(device_type)

    def no_autocast(self, device_type: str) -> contextlib.AbstractContextManager:
        from mixprec.emulate import emulate

        return emulate(None)

    @torch.no_grad()
    def after_step(self, optimizer: torch.optim.Optimizer, model: nn.Module | None) -> None:
        """``*-true``: round the FP32-stored parameters to the half format."""
        p = self.policy
        if not p.casts_params or self.wants_master_wrapper:
            return
        fmt = get_format(p.param_dtype)
        norm_params = {id(q) for m in (model.modules() if model is not None else ())
                       if isinstance(m, NORM_LAYERS) for q in m.parameters(recurse=False)}
        for group in optimizer.param_groups:
            for q in group["params"]:
                if id(q) not in norm_params:
                    q.copy_(round_to(q.float(), fmt).to(q.dtype))


class Sharded(RealHalf):
    """An FSDP2 model: its sharded FP32 parameters are the master copy and FSDP's
    ``MixedPrecisionPolicy`` casts; ``setup`` neither casts nor wraps the optimizer."""

    fused_clip = False  # DTensor gradients: clip with torch's clip_grad_norm_

    def __init__(self, policy: Policy, stochastic_rounding: bool, model: nn.Module) -> None:
        super().__init__(policy, stochastic_rounding)
        p = policy
        if p.casts_params and p.master_dtype is None:
            if stochastic_rounding:
                raise ValueError(f"{p} with stochastic_rounding is not supported under FSDP2; use "
                                 f"'{str(p).replace('-true', '-master')}'")
            wide = [n for m_name, m in model.named_modules() if not isinstance(m, NORM_LAYERS)
                    for n, q in m.named_parameters(prefix=m_name, recurse=False)
                    if q.is_floating_point() and q.dtype != p.param_dtype]
            if wide:
                raise ValueError(f"{p} stores parameters in {dtype_name(p.param_dtype)}, but the "
                                 f"sharded parameter {wide[0]!r} is not: shard the model with "
                                 f"mixprec.distributed.fully_shard_model(model, '{p}')")

    @property
    def wants_master_wrapper(self) -> bool:
        return False  # FSDP2's sharded FP32 parameters are the master copy

    def prepare(self, model: nn.Module) -> tuple[list[torch.Tensor], dict[torch.Tensor, torch.Tensor],
                                                 list[Any]]:
        p = self.policy
        hooks = []
        if p != Policy() and not p.is_fp8:
            hooks.append(model.register_forward_hook(
                lambda _m, _i, out: cast_floats(out, p.output_dtype)))
        return [], {}, hooks

    def wrap_optimizer(self, optimizer: torch.optim.Optimizer, cast: list[torch.Tensor],
                       masters: dict[torch.Tensor, torch.Tensor]) -> torch.optim.Optimizer:
        return optimizer
