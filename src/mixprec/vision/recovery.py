"""Recovery from a run of inf/NaN losses (Ultralytics-style), kept out of the training loop.

``NanRecovery`` keeps the last good training state in memory (model, optimizer, EMA, precision
and schedule state dicts, cloned to the CPU), taken before the first step and after every epoch
whose weights are all finite. After ``patience`` consecutive optimizer steps whose loss was
inf/NaN (``Precision.last_loss_finite``: read on the step's one host sync, so counting costs
nothing; under ``torch.distributed`` the flag is all-reduced, so all ranks decide alike):

- ``action="reload"``: restore that state, multiply the learning rate by ``lr_factor``
  (``Schedule.lr0``, saved in the checkpoint so a resume keeps it) and go on with the next batch;
  after ``max_reloads`` reloads the run stops as below.
- ``action="stop"``: raise ``NonFiniteLossError`` with what happened and what to try.

Skipped steps already keep inf/NaN out of the weights; this is for a run that will not come
back by itself (a diverged model, a learning rate too high), instead of skipping to the end.
Train keys: ``nan_recovery`` (the patience; 0 switches recovery off) and ``nan_action``.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from mixprec._tree import map_leaves

__all__ = ["NanRecovery", "NonFiniteLossError"]

ACTIONS = ("reload", "stop")


class NonFiniteLossError(ValueError):
    """Training stopped: the loss stayed inf/NaN (the message says for how long and what to try)."""


def _to_cpu(obj: Any) -> Any:
    """A CPU copy of a (nested) state dict: tensors cloned, everything else deep-copied."""
    return map_leaves(lambda v: v.detach().to("cpu", copy=True) if torch.is_tensor(v)
                      else copy.deepcopy(v), obj)


class NanRecovery:
    """See the module docstring. Call ``snapshot(st)`` at the start and after each epoch,
    ``after_step(st)`` after every ``prec.step``. ``reloads`` counts the reloads done."""

    def __init__(self, patience: int, action: str = "reload", lr_factor: float = 0.5,
                 max_reloads: int = 3) -> None:
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"nan_recovery={patience!r}: use a number of consecutive inf/NaN-loss "
                             "steps (e.g. 25), or 0 to switch recovery off")
        if action not in ACTIONS:
            raise ValueError(f"nan_action={action!r}: use one of {', '.join(ACTIONS)}")
        if not 0.0 < lr_factor < 1.0:
            raise ValueError(f"lr_factor={lr_factor}: must be in (0, 1)")
        self.patience, self.action, self.lr_factor = patience, action, lr_factor
        self.max_reloads = max_reloads
        self.streak = 0
        self.reloads = 0
        self._good: dict[str, Any] | None = None
        self._good_at = ""

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> NanRecovery | None:
        """From the train keys ``nan_recovery`` and ``nan_action``; None when switched off."""
        patience = args.get("nan_recovery", 0)
        rec = cls(patience, str(args.get("nan_action", "reload")))
        return rec if patience else None

    def snapshot(self, st: Any, where: str) -> bool:
        """Keep ``st``'s state as the last good one if the last step's loss was finite and every
        weight is finite (one host sync); returns whether it was kept."""
        if self.streak:
            return False
        finite = torch.stack([torch.isfinite(p).all() for p in st.model.parameters()]).all()
        if not bool(finite):
            return False
        self._good = _to_cpu({"model": st.model.state_dict(), "optimizer": st.optimizer.state_dict(),
                              "precision": st.prec.state_dict(), "schedule": st.schedule.state_dict(),
                              "ema": st.ema.ema.state_dict(), "ema_updates": st.ema.updates})
        self._good_at = where
        return True

    def after_step(self, st: Any) -> bool:
        """Count the step; on the ``patience``-th inf/NaN loss in a row reload or stop. Returns
        True when the state was reloaded."""
        if st.prec.last_loss_finite:
            self.streak = 0
            return False
        self.streak += 1
        if self.streak < self.patience:
            return False
        self.streak = 0
        what = (f"the loss was inf/NaN for {self.patience} optimizer steps in a row (epoch "
                f"{st.epoch + 1}, loss scale {st.prec.scaler.scale:g})")
        if self.action == "stop" or self._good is None or self.reloads >= self.max_reloads:
            tried = f" after {self.reloads} reload(s) with a lower learning rate" if self.reloads else ""
            raise NonFiniteLossError(
                f"training stopped: {what}{tried}. Bad data (inf/NaN images or labels) or a diverged "
                "model: check the data, lower lr0, or resume from an earlier checkpoint; "
                "skipped_steps.jsonl and nan_locator.json in the run folder name the cause")
        self._reload(st)
        print(f"WARNING {what}: reloaded the last good state ({self._good_at}) and lowered the "
              f"learning rate x{self.lr_factor:g} to lr0={st.schedule.lr0:.3g} "
              f"(reload {self.reloads}/{self.max_reloads})")
        return True

    def _reload(self, st: Any) -> None:
        good = self._good
        assert good is not None
        steps, skipped, lr0 = st.prec.steps, st.prec.skipped_steps, st.schedule.lr0
        st.model.load_state_dict(good["model"])
        st.optimizer.load_state_dict(copy.deepcopy(good["optimizer"]))
        st.prec.load_state_dict(good["precision"])  # the loss scale before the streak
        st.prec.steps, st.prec.skipped_steps = steps, skipped  # counters keep counting the run
        st.ema.ema.load_state_dict(good["ema"])
        st.ema.updates = int(good["ema_updates"])
        st.optimizer.zero_grad(set_to_none=True)
        st.schedule.load_state_dict(good["schedule"])  # the schedule position of the good state
        st.schedule.lr0 = lr0 * self.lr_factor
        st.schedule.apply()
        self.reloads += 1
