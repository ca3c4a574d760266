"""Detection shares the loop's out-of-memory report: imgsz instead of patch, the figures from
``mixprec.bench.oom.step_memory`` on the detector's own model, loss and batch shape."""

from __future__ import annotations

import pytest
import torch
from vision_helpers import TINY_MODEL

from mixprec.bench import oom as bench_oom
from mixprec.bench.memory import format_bytes
from mixprec.bench.oom import OutOfMemoryReport, step_memory
from mixprec.vision import trainer as trainer_mod
from mixprec.vision.task import get_task


def test_detector_step_oom_reports_at_imgsz(tiny_data, tmp_path, monkeypatch):
    task = get_task("detect")
    model = task.new_model(TINY_MODEL, 2)  # tiny_data: 2 classes
    loss = task.build_loss({"box": 7.5, "cls": 0.5, "dfl": 1.5}, model)
    needs = {p: step_memory(lambda: task.new_model(TINY_MODEL, 2),
                            lambda b: task.synthetic_batch({"imgsz": 64}, b, 2),
                            lambda o, t: loss(o, t)[0], p, "cpu", optimizer_fn=torch.optim.AdamW).at(4)
             for p in ("32", "16-mixed")}
    free = int((needs["32"] + needs["16-mixed"]) / 2)
    monkeypatch.setattr(bench_oom, "free_bytes", lambda device: free)
    monkeypatch.setattr(bench_oom, "offered_precisions", lambda device: ("32", "16-mixed"))
    real = trainer_mod.train_one_epoch

    def runs_out(st, callbacks=None):
        if st.epoch == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(st, callbacks)

    monkeypatch.setattr(trainer_mod, "train_one_epoch", runs_out)
    with pytest.raises(OutOfMemoryReport) as info:
        trainer_mod.train(model=TINY_MODEL, data=str(tiny_data), epochs=2, imgsz=64, batch=4, workers=0,
                          optimizer="AdamW", amp=False, verbose=False, plots=False,
                          project=str(tmp_path / "runs"))
    assert str(info.value) == (
        f"precision 32 needs ~{format_bytes(needs['32'])} at imgsz 64, batch 4 (cpu has "
        f"{format_bytes(free)} free); 16-mixed fits in ~{format_bytes(needs['16-mixed'])} -- rerun "
        "with amp=16-mixed (or a smaller imgsz/batch)")
    assert (tmp_path / "runs" / "train" / "weights" / "last.pt").is_file()  # epoch 1 kept


def test_validation_oom_is_one_line_and_keeps_the_last_epoch(tiny_data, tmp_path, monkeypatch, capsys):
    """Out of memory in validation (the second epoch's): a ValueError naming the way out, the
    first epoch's last.pt intact, through the CLI as one line with exit status 2."""
    from mixprec.cli.main import main
    from mixprec.io import load_checkpoint

    calls = {"n": 0}
    task_cls = type(get_task("detect"))
    real_validate = task_cls.validate

    def runs_out(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real_validate(self, *a, **k)

    monkeypatch.setattr(task_cls, "validate", runs_out)
    code = main(["train", f"model={TINY_MODEL}", f"data={tiny_data}", "epochs=2", "imgsz=64", "batch=4",
                 "workers=0", "amp=False", "verbose=False", "plots=False", f"project={tmp_path / 'runs'}"])
    assert code == 2 and calls["n"] == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("mixprec train: validation after epoch 2 ran out of cpu memory"), err
    assert "Traceback" not in "\n".join(err)
    last = tmp_path / "runs" / "train" / "weights" / "last.pt"
    assert load_checkpoint(last)["epoch"] == 0  # the first epoch's checkpoint, not a half-written one
