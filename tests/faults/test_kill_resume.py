"""kill -9 at random points of training, then ``resume=True``: results.csv has each epoch once,
its time column continues, and the final weights are bit-identical to an uninterrupted run of the
same seed on the same machine. Also: a resume says which given keys it ignores."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from vision_helpers import TINY_MODEL, make_tiny_dataset

from mixprec.io import load_checkpoint
from mixprec.vision.trainer import train

EPOCHS = 3
BATCHES_PER_EPOCH = 2  # 8 images, batch 4
FAST = dict(model=TINY_MODEL, imgsz=64, batch=4, nbs=4, workers=0, verbose=False, plots=False,
            amp=False, close_mosaic=1, epochs=EPOCHS)

# the child trains and SIGKILLs itself after batch ``kill_batch`` (counted over the run), or inside
# the atomic rename of the ``kill_save``-th checkpoint write (-1: never)
CHILD = r"""
import json, os, signal, sys
import torch
torch.set_num_threads(1)
import mixprec.io as mio
from mixprec.vision.trainer import train
args, kill_batch, kill_save, resume = json.loads(sys.argv[1])
count, saves = [0], [0]
def on_batch_end(st, batch):
    if count[0] == kill_batch:
        os.kill(os.getpid(), signal.SIGKILL)
    count[0] += 1
real_replace = os.replace
def replace(src, dst):
    if str(dst).endswith("last.pt"):
        if saves[0] == kill_save:
            os.kill(os.getpid(), signal.SIGKILL)
        saves[0] += 1
    return real_replace(src, dst)
mio.os.replace = replace
if resume:
    train(resume=True, project=args["project"], verbose=False)
else:
    train(callbacks={"on_batch_end": on_batch_end}, **args)
"""


def run_child(args: dict, kill_batch: int = -1, kill_save: int = -1, resume: bool = False) -> int:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    p = subprocess.run([sys.executable, "-c", CHILD, json.dumps([args, kill_batch, kill_save, resume])],
                       capture_output=True, text=True, timeout=300, env=env)
    return p.returncode


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("ref")
    torch.set_num_threads(1)
    data = make_tiny_dataset(root / "tiny")
    full = train(data=str(data), project=str(root / "runs"), name="full", **FAST)
    return data, load_checkpoint(full.last)


def _same_weights(a: dict, b: dict) -> bool:
    pairs = [(a["model"]["state_dict"], b["model"]["state_dict"]), (a["train"]["model"], b["train"]["model"])]
    return all(torch.equal(x[k], y[k]) for x, y in pairs for k in x)


def kill_then_resume(reference, tmp_path: Path, kill_batch: int = -1,
                     kill_save: int = -1) -> tuple[bool, str]:
    data, ref = reference
    args = {**FAST, "data": str(data), "project": str(tmp_path / "runs"), "name": "cut"}
    rc = run_child(args, kill_batch=kill_batch, kill_save=kill_save)
    assert rc == -signal.SIGKILL, rc
    last = tmp_path / "runs" / "cut" / "weights" / "last.pt"
    if not last.is_file():  # killed before the first checkpoint: start again in the same folder
        assert run_child({**args, "exist_ok": True}) == 0
    else:
        load_checkpoint(last)  # never half-written: loads
        assert run_child(args, resume=True) == 0
    with open(tmp_path / "runs" / "cut" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    epochs = [int(r["epoch"]) for r in rows]
    times = [float(r["time"]) for r in rows]
    ok = (epochs == list(range(1, EPOCHS + 1)) and times == sorted(times)
          and _same_weights(ref, load_checkpoint(last)))
    return ok, f"epochs {epochs} times {times}"


class Crash(BaseException):
    """An abrupt end that no ``except Exception`` catches (the in-process stand-in for kill -9)."""


def test_crash_mid_epoch_then_resume_true_is_bit_identical(reference, tmp_path, faults):
    """The fast cover of the kill -9 tests below: same checks, in process."""
    data, ref = reference
    kill_batch = random.Random("crash").randrange(BATCHES_PER_EPOCH, EPOCHS * BATCHES_PER_EPOCH)
    count = [0]

    def on_batch_end(st, batch):
        if count[0] == kill_batch:
            raise Crash
        count[0] += 1

    project = tmp_path / "runs"
    with pytest.raises(Crash):
        train(data=str(data), project=str(project), name="cut", callbacks={"on_batch_end": on_batch_end},
              **FAST)
    resumed = train(resume=True, project=str(project), verbose=False)
    with open(resumed.save_dir / "results.csv") as f:
        rows = list(csv.DictReader(f))
    times = [float(r["time"]) for r in rows]
    ok = ([int(r["epoch"]) for r in rows] == list(range(1, EPOCHS + 1)) and times == sorted(times)
          and _same_weights(ref, load_checkpoint(resumed.last)))
    assert faults.record(ok, f"crash after batch {kill_batch}"), (rows, kill_batch)


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_is_bit_identical(reference, tmp_path, faults):
    kill_batch = random.Random("kill").randrange(BATCHES_PER_EPOCH, EPOCHS * BATCHES_PER_EPOCH)
    ok, info = kill_then_resume(reference, tmp_path, kill_batch=kill_batch)
    assert faults.record(ok, f"kill -9 after batch {kill_batch}"), info


@pytest.mark.slow
@pytest.mark.parametrize("kill_batch", range(EPOCHS * BATCHES_PER_EPOCH))
def test_kill_9_after_every_batch(reference, tmp_path, faults, kill_batch):
    ok, info = kill_then_resume(reference, tmp_path, kill_batch=kill_batch)
    assert faults.record(ok, f"kill -9 after batch {kill_batch}"), info


@pytest.mark.slow
@pytest.mark.parametrize("kill_save", range(EPOCHS - 1))
def test_kill_9_while_last_pt_is_renamed_into_place(reference, tmp_path, faults, kill_save):
    ok, info = kill_then_resume(reference, tmp_path, kill_save=kill_save)
    assert faults.record(ok, f"kill -9 in save {kill_save}"), info


def test_resume_names_the_keys_it_ignores_and_the_time_column_continues(tmp_path, capsys, faults):
    data = make_tiny_dataset(tmp_path / "tiny")
    common = {**FAST, "epochs": 2, "data": str(data), "project": str(tmp_path)}

    def stop(state, epoch):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(callbacks={"on_epoch_end": stop}, **common)
    capsys.readouterr()
    resumed = train(resume=str(tmp_path / "train" / "weights" / "last.pt"), epochs=4, batch=2,
                    workers=0, verbose=False)
    out = capsys.readouterr().out
    with open(resumed.save_dir / "results.csv") as f:
        rows = list(csv.DictReader(f))
    ok = ("WARNING resume ignores epochs=4, batch=2" in out and [r["epoch"] for r in rows] == ["1", "2"]
          and float(rows[1]["time"]) >= float(rows[0]["time"]) > 0)
    assert faults.record(ok, "resume with ignored keys"), out
