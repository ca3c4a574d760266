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
