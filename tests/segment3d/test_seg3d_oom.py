"""The out-of-memory story: a training step that raises torch.OutOfMemoryError ends the run with
one line whose numbers are mixprec.bench's exact accounting, with nothing written half.

On CPU the OOM is injected (monkeypatch); the figures are recomputed here with
``mixprec.bench.oom.step_memory`` on the same model, loss and batch shape. A real CUDA OOM is
checked by the ``cuda`` test (skipped without a GPU)."""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

import pytest
import torch

from mixprec.bench import oom as bench_oom
from mixprec.bench.memory import format_bytes
from mixprec.bench.oom import OutOfMemoryReport, StepMemory, explain_oom, step_memory
from mixprec.cli import main as cli_main
from mixprec.io import load_checkpoint
from mixprec.vision import trainer as trainer_mod
from mixprec.vision.segment3d.loss import DiceCELoss
from mixprec.vision.segment3d.task import Segment3DTask
from mixprec.vision.segment3d.unet import UNet3D, load_unet_yaml

TINY = str(Path(__file__).with_name("unet3d-t.yaml"))
CANDIDATES = ("32", "bf16-mixed", "16-master")
OOM = "CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)"


def _needs(patch: int, batch: int) -> dict[str, float]:
    """What the accounting gives for one step of the tiny U-Net (5 classes, 1 channel: organs3d)
    with AdamW at ``patch``^3, ``batch``, per candidate precision."""
    cfg = load_unet_yaml(TINY, nc=5, in_channels=1)
    loss = DiceCELoss(5)
    out = {}
    for p in CANDIDATES:
        m = step_memory(lambda: UNet3D(cfg), lambda b: (torch.randn(b, 1, patch, patch, patch),
                                                         torch.randint(0, 5, (b, patch, patch, patch))),
                        lambda o, t: loss(o, t)[0], p, "cpu", optimizer_fn=torch.optim.AdamW)
        out[p] = m.at(batch)
    return out


def _inject_oom_in_epoch(monkeypatch: pytest.MonkeyPatch, epoch: int) -> None:
    real = trainer_mod.train_one_epoch

    def step_that_runs_out(st, callbacks=None):
        if st.epoch == epoch:
            raise torch.OutOfMemoryError(OOM)
        return real(st, callbacks)

    monkeypatch.setattr(trainer_mod, "train_one_epoch", step_that_runs_out)


def test_train_oom_is_one_line_with_the_accounted_bytes_and_keeps_the_run(tiny_organs, tmp_path,
                                                                          monkeypatch, capsys):
    needs = _needs(16, 2)
    assert needs["bf16-mixed"] < needs["32"]  # autocast saves 2-byte activations
    free = int((needs["32"] + needs["bf16-mixed"]) / 2)  # 32 does not fit, bf16-mixed does
    monkeypatch.setattr(bench_oom, "free_bytes", lambda device: free)
    monkeypatch.setattr(bench_oom, "offered_precisions", lambda device: CANDIDATES)
    _inject_oom_in_epoch(monkeypatch, 1)  # epoch 1 finished and was saved; epoch 2 runs out
    project = tmp_path / "runs"
    rc = cli_main(["train", f"model={TINY}", f"data={tiny_organs}", "epochs=3", "patch=16",
                        "batch=2", "iterations=2", "amp=False", "verbose=False", "plots=False",
                        f"project={project}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("mixprec train: precision 32 needs ~")
    want = (f"precision 32 needs ~{format_bytes(needs['32'])} at patch 16, batch 2 (cpu has "
            f"{format_bytes(free)} free); bf16-mixed fits in ~{format_bytes(needs['bf16-mixed'])} "
            "-- rerun with amp=bf16-mixed (or a smaller patch/batch)")
    assert want in err, err
    # nothing written half: epoch 1's checkpoints and row, no temporary files
    run = project / "train"
    assert sorted(p.name for p in (run / "weights").iterdir()) == ["best.pt", "last.pt"]
    assert load_checkpoint(run / "weights" / "last.pt")["epoch"] == 0
    with open(run / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1"]


def test_the_report_names_the_key_the_user_chose(tiny_organs, tmp_path, monkeypatch):
    needs = _needs(16, 2)
    monkeypatch.setattr(bench_oom, "free_bytes", lambda device: int(needs["32"] * 10))
    monkeypatch.setattr(bench_oom, "offered_precisions", lambda device: CANDIDATES)
    _inject_oom_in_epoch(monkeypatch, 0)
    with pytest.raises(OutOfMemoryReport) as info:
        trainer_mod.train(model=TINY, data=str(tiny_organs), epochs=2, patch=16, batch=2, iterations=2,
                          precision="32", verbose=False, plots=False, project=str(tmp_path / "runs"))
    msg = str(info.value)
    # the accounting fits the free memory: the report says so and offers the smaller precision
    assert "by exact accounting; the rest went to allocator workspace" in msg
    fits = format_bytes(needs["bf16-mixed"])
    assert f"bf16-mixed fits in ~{fits} -- rerun with precision=bf16-mixed" in msg
    assert isinstance(info.value, ValueError) and info.value.__cause__ is None
    assert not (tmp_path / "runs" / "train" / "weights" / "last.pt").exists()  # no epoch finished


def test_probe_patch_is_scaled_by_the_voxel_count():
    task = Segment3DTask()
    model = task.new_model("unet3d-n.yaml", 5, 1)  # divisor 16
    args, scale, words = task.memory_probe({"patch": "128,96,64"}, model)
    assert args["patch"] == "32,32,32" and words == "patch 128x96x64"
    assert scale == pytest.approx(128 * 96 * 64 / 32 ** 3)


def _fake(fixed: dict[str, float]):
    return lambda p: StepMemory(p, int(fixed[p]), 0.0, 0, 1)


def test_explain_oom_when_nothing_fits_names_the_least_hungry_precision():
    need = {"32": 9 * 2**30, "bf16-mixed": 5 * 2**30, "16-master": 4 * 2**30}
    rep = explain_oom("32", _fake(need), batch=2, scale=1.0, size="imgsz 640", device="cuda:0",
                      precisions=list(need), free=3 * 2**30, size_key="imgsz")
    assert str(rep) == ("precision 32 needs ~9.00 GiB at imgsz 640, batch 2 (cuda:0 has 3.00 GiB "
                        "free); no precision fits (the least, 16-master, needs ~4.00 GiB) -- use a "
                        "smaller imgsz/batch")
    rep = explain_oom("32", _fake(need), batch=2, scale=1.0, size="imgsz 640", device="cuda:0",
                      precisions=list(need), free=6 * 2**30, size_key="imgsz")
    assert str(rep).endswith("bf16-mixed fits in ~5.00 GiB -- rerun with amp=bf16-mixed (or a smaller "
                             "imgsz/batch)")


def test_bench_cli_oom_reports_the_detector_at_imgsz(tmp_path, monkeypatch, capsys):
    """Detection gets the same report (imgsz instead of patch), through ``mixprec bench``."""
    import mixprec.bench.runner as runner
    from mixprec.vision.task import get_task

    def baseline_runs_out(run):
        raise torch.OutOfMemoryError(OOM)

    monkeypatch.setattr(runner, "_warmup_memory", baseline_runs_out)
    monkeypatch.setattr(bench_oom, "offered_precisions", lambda device: ("32", "bf16-mixed"))
    det = str(Path(__file__).parents[1] / "vision" / "det-t.yaml")
    probe = get_task("detect").workload(det, 128)  # imgsz 256 is probed at 128 (4x fewer pixels)
    needs = {p: step_memory(probe.model_fn, probe.batch_fn, probe.loss_fn, p, "cpu",
                            optimizer_fn=torch.optim.AdamW).at(2, (256 / 128) ** 2)
             for p in ("32", "bf16-mixed")}
    free = int((needs["32"] + needs["bf16-mixed"]) / 2)
    monkeypatch.setattr(bench_oom, "free_bytes", lambda device: free)
    rc = cli_main(["bench", f"model={det}", "imgsz=256", "batch=2", "device=cpu", "steps=1",
                        "warmup=1", "precision=32", "energy=False", "plots=False",
                        f"project={tmp_path}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert (f"mixprec bench: precision 32 needs ~{format_bytes(needs['32'])} at imgsz 256, batch 2 "
            f"(cpu has {format_bytes(free)} free); bf16-mixed fits in ~{format_bytes(needs['bf16-mixed'])}"
            " -- rerun with precision=bf16-mixed (or a smaller imgsz/batch)") in err
    assert not any(tmp_path.iterdir())  # no half report


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_real_cuda_oom_is_reported_with_the_fitting_precision(tiny_organs, tmp_path, capsys):
    """unet3d-s at patch 128, batch 2 in FP32 on a GPU capped at 8 GiB for this process."""
    dev = torch.device("cuda:0")
    total = torch.cuda.get_device_properties(dev).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, 8 * 2**30 / total), dev)
    try:
        rc = cli_main(["train", "model=unet3d-s.yaml", f"data={tiny_organs}", "epochs=1",
                            "patch=128", "batch=2", "iterations=1", "amp=False", "device=0",
                            "verbose=False", "plots=False", f"project={tmp_path}"])
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, dev)
    err = capsys.readouterr().err
    assert rc == 2 and re.search(r"precision 32 needs ~[\d.]+ GiB at patch 128, batch 2 \(cuda:0 has "
                                 r"[\d.]+ GiB free\); (bf16|16)-mixed fits in ~[\d.]+ GiB", err), err
    assert "Traceback" not in err and sys.exc_info() == (None, None, None)
