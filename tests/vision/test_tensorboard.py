"""tensorboard=True: event files in the run folder, read back with TensorBoard's EventAccumulator
and checked against results.csv and the precision record written by the same run."""

from __future__ import annotations

import builtins
import csv
import math

import pytest
import yaml
from vision_helpers import TINY_MODEL

from mixprec.vision.models import DetectionModel, load_model_yaml
from mixprec.vision.trainer import train

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def _scalars(run_dir):
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_logs_steps_and_epochs_matching_the_run_record(tiny_data, tmp_path):
    model = DetectionModel(load_model_yaml(TINY_MODEL), nc=2)
    calls = {"n": 0}

    def plant_inf_on_the_third_training_forward(_m, _i, out):
        calls["n"] += 1
        return [o * float("inf") for o in out] if calls["n"] == 3 else out

    model.register_forward_hook(plant_inf_on_the_third_training_forward)
    epoch_calls = []
    result = train(weights=model, data=str(tiny_data), epochs=2, imgsz=64, batch=2, nbs=2, workers=0,
                   verbose=False, plots=False, amp=False, project=str(tmp_path), tensorboard=True,
                   callbacks={"on_epoch_end": lambda st, e: epoch_calls.append(e)})
    assert epoch_calls == [0, 1]  # the user's callback still runs
    s = _scalars(result.save_dir)
    with open(result.save_dir / "results.csv") as f:
        rows = list(csv.DictReader(f))
    record = yaml.safe_load((result.save_dir / "precision.yaml").read_text())
    batches = 4  # 8 images / batch 2, per epoch

    assert [step for step, _ in s["train_step/loss_scale"]] == list(range(2 * batches))
    skipped = [v for _, v in s["train_step/skipped_steps"]]
    assert record["skipped_steps"] == 1 and skipped == [0, 0, 1, 1, 1, 1, 1, 1]  # the planted inf
    for epoch, row in enumerate(rows):  # per-step losses average to the epoch's results.csv loss
        for name in ("box_loss", "cls_loss", "dfl_loss"):
            per_step = [v for step, v in s[f"train_step/{name}"] if step // batches == epoch]
            assert len(per_step) == batches
            if all(math.isfinite(v) for v in per_step):
                assert sum(per_step) / batches == pytest.approx(float(row[f"train/{name}"]), rel=1e-4)
    for tag in ("metrics/mAP50-95(B)", "lr/pg0", "amp/scale", "val/box_loss"):
        assert s[tag] == [(step, pytest.approx(float(r[tag]), rel=1e-6)) for step, r in zip((1, 2), rows)]
    assert s["amp/skipped_steps"] == [(1, 1.0), (2, 0.0)]  # per epoch, as results.csv counts them
    assert len(s["memory/peak_gb"]) == 2 and all(v > 0 for _, v in s["memory/peak_gb"])


def test_missing_tensorboard_gives_one_clear_line(monkeypatch, tmp_path):
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    from mixprec.vision.tensorboard import TensorBoardLogger

    with pytest.raises(ImportError, match=r"pip install 'mixprec\[tensorboard\]'"):
        TensorBoardLogger(tmp_path)
