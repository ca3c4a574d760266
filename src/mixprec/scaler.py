"""Loss scalers: ``NoScaler``, ``StaticScaler``, ``DynamicScaler`` behind one small protocol.

A scaler multiplies the loss before backward (so small FP16 gradients do not underflow), gives
the inverse scale used to unscale the gradients, and updates itself from the step's ``found_inf``
flag. The scale lives on the device as a 0-d FP32 tensor and is updated there: the update path
never synchronises with the host. Only the ``scale`` property reads it back (one sync).

The dynamic rule is the pure function ``dynamic_update``: with default settings it reproduces
``torch.amp.GradScaler`` exactly (init 2**16, x2 after 2000 clean steps, x0.5 on overflow), and
adds hysteresis (consecutive overflows tolerated before backing off), a floor and a ceiling.

The floor is on by default (``min_scale=1.0``): without one, a run of inf/NaN *losses* (bad
data, a diverged model) halves the scale every step until it underflows to 0 after ~150 steps
(pytorch#99640); the next finite step then unscales by 1/0 and writes NaN into every weight.
``min_scale=None`` switches the floor off and reproduces ``torch.amp.GradScaler`` bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["DEFAULT_MIN_SCALE", "DynamicScaler", "LossScaler", "NoScaler", "StaticScaler", "dynamic_update",
           "make_scaler"]


@runtime_checkable
class LossScaler(Protocol):
    """What ``Precision`` needs from a scaler."""

    @property
    def scale(self) -> float: ...

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor: ...

    def inv_scale(self, device: torch.device) -> torch.Tensor: ...

    def update(self, found_inf: torch.Tensor) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class NoScaler:
    """Loss scaling off: scale 1.0, nothing to update. Used for FP32 and BF16."""

    scale = 1.0

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return loss

    def inv_scale(self, device: torch.device) -> torch.Tensor:
        return torch.ones((), dtype=torch.float32, device=device)

    def update(self, found_inf: torch.Tensor) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"type": "none"}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_type(state, "none")

    def __repr__(self) -> str:
        return "NoScaler()"


class _TensorScale:
    """Holds the scale as a 0-d FP32 tensor, created lazily on the loss's device."""

    def __init__(self, init_scale: float) -> None:
        if not init_scale > 0:
            raise ValueError(f"init_scale must be > 0, got {init_scale}")
        self._init_scale = float(init_scale)
        self._scale: torch.Tensor | None = None

    def _scale_on(self, device: torch.device) -> torch.Tensor:
        if self._scale is None:
            self._scale = torch.full((), self._init_scale, dtype=torch.float32, device=device)
        elif self._scale.device != device:
            self._scale = self._scale.to(device)
        return self._scale

    @property
    def scale(self) -> float:
        """Current scale as a Python float (one host sync when the scale lives on a GPU)."""
        return self._init_scale if self._scale is None else float(self._scale.item())

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self._scale_on(loss.device).to(loss.dtype)

    def inv_scale(self, device: torch.device) -> torch.Tensor:
        # Reciprocal in FP64 then FP32, as GradScaler does (FP32 division can be inexact).
        return self._scale_on(device).double().reciprocal().float()


class StaticScaler(_TensorScale):
    """A fixed loss scale. Steps with inf/NaN gradients are still skipped by ``Precision``."""

    def __init__(self, scale: float = 2.0**16) -> None:
        super().__init__(scale)

    def update(self, found_inf: torch.Tensor) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"type": "static", "scale": self.scale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_type(state, "static")
        self._init_scale, self._scale = float(state["scale"]), None

    def __repr__(self) -> str:
        return f"StaticScaler(scale={self.scale})"


DEFAULT_MIN_SCALE = 1.0
"""The default floor of ``DynamicScaler``. Why 1.0: a scale below 1 shrinks the gradients, which
loss scaling exists to prevent; DeepSpeed (``min_loss_scale=1``) and Megatron-LM
(``min_loss_scale=1.0``) use the same floor, and pytorch#99640 asks GradScaler for it. A run of
overflows that pushes the scale to 1 is not fixed by a smaller scale: either the loss itself is
inf/NaN (bad data, divergence; ``Precision`` warns and names it) or the forward pass overflows
FP16 (use BF16). It also keeps the scale a power of two, so unscaling stays exact."""


@dataclass(frozen=True)
class DynamicConfig:
    init_scale: float = 2.0**16
    growth_factor: float = 2.0
    backoff_factor: float = 0.5
    growth_interval: int = 2000
    hysteresis: int = 1
    min_scale: float | None = DEFAULT_MIN_SCALE
    max_scale: float | None = 2.0**24

    def __post_init__(self) -> None:
        problems = []
        if not self.growth_factor > 1.0:
            problems.append(f"growth_factor must be > 1, got {self.growth_factor}")
        if not 0.0 < self.backoff_factor < 1.0:
            problems.append(f"backoff_factor must be in (0, 1), got {self.backoff_factor}")
        if self.growth_interval < 1:
            problems.append(f"growth_interval must be >= 1, got {self.growth_interval}")
        if self.hysteresis < 1:
            problems.append(f"hysteresis must be >= 1, got {self.hysteresis}")
        low = self.min_scale if self.min_scale is not None else 0.0
        high = self.max_scale if self.max_scale is not None else float("inf")
        if not low <= self.init_scale <= high:
            problems.append(f"init_scale {self.init_scale} must be within min_scale {self.min_scale} "
                            f"and max_scale {self.max_scale}")
        if problems:
            raise ValueError("; ".join(problems))


def dynamic_update(
    scale: torch.Tensor,
    growth_tracker: torch.Tensor,
    hysteresis_left: torch.Tensor,
    found_inf: torch.Tensor,
    config: DynamicConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One dynamic-scaling update; returns new (scale, growth_tracker, hysteresis_left).

    ``scale`` FP32 0-d, ``growth_tracker`` and ``hysteresis_left`` int32 0-d, ``found_inf`` FP32
    (non-zero means inf/NaN was found this step). Rule: an overflow decrements
    ``hysteresis_left`` and resets the tracker; when ``hysteresis_left`` reaches 0 the scale is
    multiplied by ``backoff_factor`` (not below ``min_scale``) and hysteresis refills. A clean step
    refills hysteresis and increments the tracker; at ``growth_interval`` the scale is multiplied
    by ``growth_factor`` (not above ``max_scale``, never to inf) and the tracker resets.
    With hysteresis=1 and no floor/ceiling this is exactly ``torch._amp_update_scale_``.
    Pure tensor arithmetic: no host synchronisation.
    """
    found = found_inf.reshape(()) > 0
    full_hysteresis = torch.full_like(hysteresis_left, config.hysteresis)
    hysteresis_after = torch.where(found, hysteresis_left - 1, full_hysteresis)
    back_off = found & (hysteresis_after <= 0)
    tracker = growth_tracker + 1
    grow = ~found & (tracker >= config.growth_interval)

    grown = scale * config.growth_factor
    grown = torch.where(torch.isfinite(grown), grown, scale)
    if config.max_scale is not None:
        grown = torch.minimum(grown, torch.full_like(scale, config.max_scale))
    shrunk = scale * config.backoff_factor
    if config.min_scale is not None:
        shrunk = torch.maximum(shrunk, torch.full_like(scale, config.min_scale))

    new_scale = torch.where(back_off, shrunk, torch.where(grow, grown, scale))
    new_tracker = torch.where(found | grow, torch.zeros_like(tracker), tracker)
    new_hysteresis = torch.where(back_off, full_hysteresis, hysteresis_after)
    return new_scale, new_tracker, new_hysteresis


class DynamicScaler(_TensorScale):
    """Dynamic loss scaling (defaults as ``torch.amp.GradScaler``, plus hysteresis/floor/ceiling).

    ``min_scale`` defaults to 1.0 (``DEFAULT_MIN_SCALE``: the scale cannot collapse to 0 during a
    run of inf/NaN losses); ``max_scale`` defaults to 2**24 (Apex's ceiling). Pass
    ``min_scale=None, max_scale=None`` for ``torch.amp.GradScaler``'s exact behaviour (bit for
    bit, including its collapse to 0). State (scale, growth tracker, hysteresis counter, config)
    is all checkpointed.
    """

    def __init__(
        self,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
        hysteresis: int = 1,
        min_scale: float | None = DEFAULT_MIN_SCALE,
        max_scale: float | None = 2.0**24,
    ) -> None:
        self.config = DynamicConfig(init_scale, growth_factor, backoff_factor, growth_interval,
                                    hysteresis, min_scale, max_scale)
        super().__init__(init_scale)
        self._tracker: torch.Tensor | None = None
        self._hysteresis: torch.Tensor | None = None

    def _counters_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self._tracker is None or self._hysteresis is None:
            self._tracker = torch.zeros((), dtype=torch.int32, device=device)
            self._hysteresis = torch.full((), self.config.hysteresis, dtype=torch.int32, device=device)
        return self._tracker.to(device), self._hysteresis.to(device)

    def update(self, found_inf: torch.Tensor) -> None:
        """Update the scale from ``found_inf`` on its device; no host synchronisation."""
        device = found_inf.device
        scale = self._scale_on(device)
        tracker, hysteresis = self._counters_on(device)
        c = self.config
        if c.hysteresis == 1:
            # Same rule as dynamic_update (tested equal), in torch's fused in-place kernel plus
            # one clamp: two kernel launches instead of a dozen small ops.
            torch._amp_update_scale_(scale, tracker, found_inf, c.growth_factor, c.backoff_factor,
                                     c.growth_interval)
            if c.min_scale is not None or c.max_scale is not None:
                scale.clamp_(min=c.min_scale, max=c.max_scale)
            self._tracker = tracker
            return
        new_scale, new_tracker, new_hyst = dynamic_update(scale, tracker, hysteresis, found_inf, c)
        self._scale, self._tracker, self._hysteresis = new_scale, new_tracker, new_hyst

    def state_dict(self) -> dict[str, Any]:
        c = self.config
        return {
            "type": "dynamic", "scale": self.scale,
            "growth_tracker": 0 if self._tracker is None else int(self._tracker.item()),
            "hysteresis_left": c.hysteresis if self._hysteresis is None else int(self._hysteresis.item()),
            "init_scale": c.init_scale, "growth_factor": c.growth_factor,
            "backoff_factor": c.backoff_factor, "growth_interval": c.growth_interval,
            "hysteresis": c.hysteresis, "min_scale": c.min_scale, "max_scale": c.max_scale,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_type(state, "dynamic")
        self.config = DynamicConfig(state["init_scale"], state["growth_factor"],
                                    state["backoff_factor"], state["growth_interval"],
                                    state["hysteresis"], state["min_scale"], state["max_scale"])
        device = self._scale.device if self._scale is not None else torch.device("cpu")
        self._init_scale = float(state["scale"])
        self._scale = torch.full((), float(state["scale"]), dtype=torch.float32, device=device)
        self._tracker = torch.full((), int(state["growth_tracker"]), dtype=torch.int32, device=device)
        self._hysteresis = torch.full((), int(state["hysteresis_left"]), dtype=torch.int32,
                                      device=device)

    def __repr__(self) -> str:
        c = self.config
        return (f"DynamicScaler(scale={self.scale}, growth_factor={c.growth_factor}, "
                f"backoff_factor={c.backoff_factor}, growth_interval={c.growth_interval}, "
                f"hysteresis={c.hysteresis}, min_scale={c.min_scale}, max_scale={c.max_scale})")


def _check_type(state: dict[str, Any], expected: str) -> None:
    got = state.get("type")
    if got != expected:
        raise ValueError(f"scaler state is for a {got!r} scaler, this one is {expected!r}: build "
                         f"Precision with the same policy/scaler the checkpoint was saved with")


def make_scaler(kind: str) -> LossScaler:
    """``"none"`` -> NoScaler, ``"dynamic"`` -> DynamicScaler(), ``"static"`` -> StaticScaler()."""
    scalers = {"none": NoScaler, "dynamic": DynamicScaler, "static": StaticScaler}
    if kind not in scalers:
        raise ValueError(f"unknown scaler {kind!r}; use one of {', '.join(scalers)}")
    return scalers[kind]()
