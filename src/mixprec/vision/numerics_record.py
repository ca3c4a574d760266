"""The trainer's numerics record: the doctor's skipped-step attribution and NaN locator, written
into the run folder (see docs/doctor.md, "Trainer integration").

- ``skipped_steps.jsonl``: one ``SkipRecord`` per skipped optimizer step (step index counted over
  the whole run, cause, loss scale before/after, loss, inputs/outputs finite, the parameters
  holding inf/NaN gradients). Written empty at the start of training: empty = no step skipped.
- ``nan_locator.json``: at the first batch whose loss is inf/NaN, ``locate_nonfinite`` re-runs
  that batch and names the first module/op with a non-finite output (once per training process).

Cost of a step that is not skipped: one read of the loss scale (``SkipRecorder.on_step``), after
``prec.step`` has already synchronised. The recorder's root forward hook is *not* attached: it
would run ``isfinite().all()`` over the images and head maps on every forward (measured here:
about 7 ns per element on one CPU thread, 0.3 s per det-n forward at 640 px, batch 16). The
trainer hands the same tensors to ``note`` only when they matter: on a micro-batch whose loss is
inf/NaN and on the last micro-batch of a skipped step. So with gradient accumulation the
``inputs_finite``/``outputs_finite`` flags of a skip cover those micro-batches, not the others,
and the record's loss is the first inf/NaN one among them (else the last micro-batch's).
The gradient scan and the locator also run only on a skipped step or a non-finite loss.
The trainer builds one on rank 0 only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mixprec._tree import map_leaves
from mixprec.diagnose import NonFiniteReport, SkipRecord, SkipRecorder, locate_nonfinite
from mixprec.io import atomic_write_text

__all__ = ["NumericsRecord"]


class NumericsRecord:
    """Build it before the first step; call ``on_step(stepped, loss, images, maps)`` after each
    ``prec.step`` (before ``zero_grad``), ``on_nonfinite_loss(...)`` when a micro-batch's loss is
    inf/NaN, and ``close()`` at the end of training.
    ``resume``: keep the records of the steps before the checkpoint (``prec.steps`` of them) and
    continue their step count; otherwise stale files of an earlier run in the folder are reset.
    Holds no hook on the model between calls (the locator's hooks live for one re-run).
    """

    def __init__(self, model: nn.Module, prec: Any, optimizer: Any, save_dir: str | Path,
                 resume: bool = False) -> None:
        self.model, self.prec, self.optimizer = model, prec, optimizer
        save_dir = Path(save_dir)
        self.skips_path = save_dir / "skipped_steps.jsonl"
        self.locator_path = save_dir / "nan_locator.json"
        self.recorder = SkipRecorder(model, path=self.skips_path, precision=prec)  # not attached
        self.located = False
        self._bad_loss: torch.Tensor | None = None  # first inf/NaN loss since the last step
        if resume:
            self._reload(int(prec.steps))
        else:
            self.locator_path.unlink(missing_ok=True)
        self._kept = len(self.recorder.records)
        atomic_write_text(self.skips_path, "".join(json.dumps(r.to_dict()) + "\n"
                                                   for r in self.recorder.records))

    def _reload(self, steps: int) -> None:
        """Records of the steps before the checkpoint; the step index continues from ``steps``."""
        rec = self.recorder
        if self.skips_path.is_file():
            for line in self.skips_path.read_text().splitlines():
                d = json.loads(line) if line.strip() else None
                if d is not None and int(d["step"]) < steps:
                    for k in ("scale", "scale_after"):  # "inf" was written as a string
                        d[k] = float(d[k]) if isinstance(d[k], str) else d[k]
                    rec.records.append(SkipRecord(**d))
        rec.stepped = [True] * steps
        for r in rec.records:
            rec.stepped[r.step] = False

    def note(self, images: torch.Tensor, maps: Any) -> None:
        """Fold whether this micro-batch's model inputs and outputs were finite into the next
        skip record (what the recorder's hook would note on every forward)."""
        self.recorder._hook(self.model, (images,), {}, maps)

    def on_step(self, stepped: bool, loss: torch.Tensor | None, images: torch.Tensor,
                maps: Any) -> SkipRecord | None:
        """After ``prec.step``, before ``zero_grad``; ``loss``, ``images``, ``maps``: the step's
        last micro-batch (the record keeps an earlier micro-batch's inf/NaN loss instead, so that
        the cause is read off it). A skipped step is attributed and the ``.jsonl`` rewritten; a
        taken step costs one loss-scale read."""
        if not stepped:
            self.note(images, maps)
        bad, self._bad_loss = self._bad_loss, None
        return self.recorder.on_step(self.prec, self.model, stepped,
                                     loss=bad if bad is not None else loss, optimizer=self.optimizer)

    def on_nonfinite_loss(self, loss: torch.Tensor, images: torch.Tensor, maps: Any,
                          targets: torch.Tensor, loss_fn: Any, after_step: bool = False,
                          **where: Any) -> NonFiniteReport | None:
        """Note this micro-batch's loss and flags for the next step's record (``after_step``: it
        was the last micro-batch of a step already recorded, with them); the first time, re-run
        the batch under the NaN locator, write ``nan_locator.json`` (``where``, e.g. epoch and
        batch, then the finding) and print one line. Returns the report (None after the first
        time). ``.grad`` and buffers are left as they were; an error inside the locator is
        written down instead of stopping training. After a skipped step the re-run sees the
        same parameters as the failing forward."""
        if not after_step:
            self.note(images, maps)
            if self._bad_loss is None:
                self._bad_loss = loss.detach()
        if self.located:
            return None
        self.located = True
        prec, model = self.prec, self.model

        def run() -> torch.Tensor:
            with prec.autocast():
                out = model(images)
            return loss_fn(out, targets)[0]

        try:
            rep = locate_nonfinite(model, run, scale=float(prec.scaler.scale))
        except Exception as err:  # a debugging aid must not end the run
            atomic_write_text(self.locator_path, json.dumps({**where, "error": repr(err)}) + "\n")
            print(f"non-finite loss ({_at(where)}): the NaN locator failed ({err!r}); "
                  f"see {self.locator_path}")
            return None
        ev = rep.origin or rep.first
        atomic_write_text(self.locator_path, json.dumps(
            _strict({**where, **rep.to_dict(), "summary": rep.describe()}), indent=1,
            allow_nan=False) + "\n")
        found = (f"{'created' if rep.origin else 'first seen'} in {ev.phase} {ev.module} / {ev.op}"
                 if ev else "the re-run stayed finite")
        print(f"non-finite loss ({_at(where)}): {found}; NaN locator written to {self.locator_path}")
        return rep

    def close(self) -> None:
        """End of training: print where this run's skipped steps were recorded, if any."""
        new = len(self.recorder.records) - self._kept
        if new:
            print(f"{new} skipped step(s) attributed in {self.skips_path}")
        self._kept = len(self.recorder.records)


def _at(where: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in where.items())


def _strict(obj: Any) -> Any:
    """Non-finite floats as the strings "inf"/"-inf"/"nan" (strict JSON, as in doctor.json)."""
    return map_leaves(lambda v: str(v) if isinstance(v, float) and not math.isfinite(v) else v,
                      obj, plain=True)
