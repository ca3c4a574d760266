"""NaN recovery in the trainer (issue #11): after K consecutive inf/NaN losses the last good state
is reloaded with a lower LR, or the run stops with the reason; the train keys are checked."""

from __future__ import annotations

import csv

import pytest
import torch
from vision_helpers import TINY_MODEL

import mixprec.vision.detect.task as detect_task
from mixprec.io import load_checkpoint
from mixprec.vision.recovery import NanRecovery, NonFiniteLossError
from mixprec.vision.trainer import train

FAST = dict(model=TINY_MODEL, imgsz=64, batch=4, nbs=4, workers=0, verbose=False, plots=False,
            amp=False, close_mosaic=0)


def poison_loss(monkeypatch, bad_batches):
    """The training loss of the batches (counted over the run) in ``bad_batches`` is NaN
    (validation untouched; the NaN locator's re-run of a batch sees the same verdict). Returns
    the ``on_batch_end`` callback that advances the batch count, and the count."""
    count = [0]

    class PoisonedLoss(detect_task.DetectionLoss):
        def __call__(self, *args, **kwargs):
            loss, items = super().__call__(*args, **kwargs)
            if torch.is_grad_enabled() and count[0] in bad_batches:
                return loss * float("nan"), items * float("nan")
            return loss, items

    def advance(_st, _batch):
        count[0] += 1

    monkeypatch.setattr(detect_task, "DetectionLoss", PoisonedLoss)
    return advance, count


def test_reload_restores_the_last_good_state_and_halves_the_lr(tiny_data, tmp_path, monkeypatch, capsys):
    # 2 steps per epoch; batch 2 (epoch 2) steps, batches 3, 4, 5 are NaN: the third NaN in a row
    # (epoch 3, batch 1) reloads the end of epoch 1 (the end of epoch 2 followed a NaN step)
    advance, count = poison_loss(monkeypatch, {3, 4, 5})
    seen = {}

    def on_epoch_end(st, epoch):
        seen[epoch] = {k: v.detach().clone() for k, v in st.model.named_parameters()}

    def on_batch_end(st, batch):
        if count[0] == 5:
            seen["after reload"] = {k: v.detach().clone() for k, v in st.model.named_parameters()}
        advance(st, batch)

    result = train(data=str(tiny_data), epochs=4, project=str(tmp_path), nan_recovery=3,
                   callbacks={"on_epoch_end": on_epoch_end, "on_batch_end": on_batch_end}, **FAST)
    out = capsys.readouterr().out
    assert count[0] == 8
    assert out.count("reloaded the last good state (end of epoch 1)") == 1 and "lr0=" in out
    assert all(torch.equal(seen["after reload"][k], v) for k, v in seen[0].items())
    assert not all(torch.equal(seen[1][k], v) for k, v in seen[0].items())  # epoch 2 did step
    ckpt = load_checkpoint(result.last)
    lr0 = ckpt["args"]["lr0_resolved"]
    assert ckpt["train"]["schedule"]["lr0"] == pytest.approx(lr0 * 0.5, rel=1e-12)
    assert all(torch.isfinite(v).all() for v in ckpt["train"]["model"].values())
    with open(result.save_dir / "results.csv") as f:
        assert [r["epoch"] for r in csv.DictReader(f)] == ["1", "2", "3", "4"]


def test_stop_action_stops_with_the_reason_and_keeps_last_pt_finite(tiny_data, tmp_path, monkeypatch):
    advance, _ = poison_loss(monkeypatch, set(range(2, 100)))
    with pytest.raises(NonFiniteLossError, match=r"inf/NaN for 3 optimizer steps in a row.*check the data"):
        train(data=str(tiny_data), epochs=4, project=str(tmp_path), nan_recovery=3,
              nan_action="stop", callbacks={"on_batch_end": advance}, **FAST)
    ckpt = load_checkpoint(tmp_path / "train" / "weights" / "last.pt")
    assert ckpt["epoch"] == 1  # epoch 2 (all skipped) was saved; the third NaN came in epoch 3
    assert all(torch.isfinite(v).all() for v in ckpt["train"]["model"].values())


def test_reload_gives_up_after_three_reloads(tiny_data, tmp_path, monkeypatch, capsys):
    advance, _ = poison_loss(monkeypatch, set(range(2, 100)))
    with pytest.raises(NonFiniteLossError, match="after 3 reload"):
        train(data=str(tiny_data), epochs=8, project=str(tmp_path), nan_recovery=2,
              callbacks={"on_batch_end": advance}, **FAST)
    assert capsys.readouterr().out.count("reloaded the last good state") == 3


@pytest.mark.parametrize(("key", "value", "match"), [
    ("epochs", -1, "epochs=-1: must be an integer >= 1"), ("epochs", 0, "epochs=0"),
    ("nan_recovery", -2, "nan_recovery=-2"),
    ("nan_action", "retry", "nan_action=.retry.: use reload or stop"),
    ("workers", -1, "workers=-1"),
])
def test_bad_train_values_are_named(key, value, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        train(data="nowhere.yaml", project=str(tmp_path), **{**FAST, key: value})


def test_recovery_config_is_checked():
    with pytest.raises(ValueError, match="nan_recovery=True"):
        NanRecovery(True)
    with pytest.raises(ValueError, match="lr_factor"):
        NanRecovery(3, lr_factor=1.5)
    assert NanRecovery.from_args({"nan_recovery": 0}) is None
