"""segment3d through the shared loop: run artefacts, best.pt by Dice, val, predict, CLI, exact
resume, and that training learns."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from mixprec.cli import main as cli_main
from mixprec.io import load_checkpoint
from mixprec.vision import Model
from mixprec.vision.optim import Schedule
from mixprec.vision.segment3d.schedule import poly_decay
from mixprec.vision.trainer import train

TINY = str(Path(__file__).with_name("unet3d-t.yaml"))
FAST = dict(model=TINY, patch=16, batch=2, iterations=2, amp=False, verbose=False, plots=False)


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "results.csv") as f:
        return list(csv.DictReader(f))


def test_train_val_predict_through_the_model_facade(tiny_organs, tmp_path):
    model = Model(TINY)
    assert model.task.name == "segment3d"
    metrics = model.train(data=str(tiny_organs), epochs=3, project=str(tmp_path / "runs"), **{
        k: v for k, v in FAST.items() if k != "model"})
    run = tmp_path / "runs" / "train"
    assert (run / "weights" / "best.pt").is_file() and (run / "precision.yaml").is_file()
    rows = _rows(run)
    names = ["liver", "spleen", "kidney", "bladder"]
    for col in ["train/ce_loss", "train/dice_loss", "metrics/dice", "amp/scale",
                *(f"metrics/dice_{n}" for n in names)]:
        assert col in rows[0], col
    dices = [float(r["metrics/dice"]) for r in rows]
    best = load_checkpoint(run / "weights" / "best.pt")
    assert best["epoch"] == int(np.argmax(dices)) and best["model"]["task"] == "segment3d"
    assert best["model"]["patch"] == [16, 16, 16]
    # the final validation and Model.val of best.pt (FP32) reproduce the best epoch's Dice
    assert metrics.dice == pytest.approx(max(dices), abs=1e-5)
    again = model.val(amp=False, hd95=False)
    assert again.dice == pytest.approx(max(dices), abs=1e-5)
    assert set(again.per_class) == set(names)
    # predict: a NIfTI label map with the input's affine and shape
    case = sorted((tiny_organs.parent / "imagesVa").iterdir())[0]
    res = model.predict(str(case), save=True, project=str(tmp_path / "pred"))
    out = nib.load(str(res[0].saved))
    src = nib.load(str(case))
    assert out.shape == src.shape and np.allclose(out.affine, src.affine)
    np.testing.assert_array_equal(np.asarray(out.dataobj), res[0].labels)


def test_exact_resume_after_an_interrupted_run(tiny_organs, tmp_path):
    common = dict(data=str(tiny_organs), epochs=3, project=str(tmp_path), **FAST)
    full = train(name="full", **common)

    def stop_after_first_epoch(state, epoch):
        if epoch == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(name="cut", callbacks={"on_epoch_end": stop_after_first_epoch}, **common)
    resumed = train(resume=str(tmp_path / "cut" / "weights" / "last.pt"), verbose=False)
    assert resumed.save_dir == tmp_path / "cut"
    a, b = load_checkpoint(full.last), load_checkpoint(resumed.last)
    for k, v in a["train"]["model"].items():
        assert torch.equal(v, b["train"]["model"][k]), k
    for k, v in a["model"]["state_dict"].items():
        assert torch.equal(v, b["model"]["state_dict"][k]), k
    ra, rb = _rows(full.save_dir), _rows(resumed.save_dir)
    for col in ("train/ce_loss", "train/dice_loss", "metrics/dice"):
        assert [r[col] for r in ra] == [r[col] for r in rb], col


def test_cli_train_uses_the_task_keys_and_run_folder(tiny_organs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc = cli_main(["train", f"model={TINY}", f"data={tiny_organs}", "epochs=1", "patch=16", "batch=2",
                   "iterations=1", "amp=False", "verbose=False", "plots=False"])
    assert rc == 0
    assert (tmp_path / "runs" / "segment3d" / "train" / "weights" / "last.pt").is_file()
    assert "final: Dice=" in capsys.readouterr().out
    assert cli_main(["train", f"model={TINY}", "imgsz=64"]) == 2
    assert "unknown mixprec train argument 'imgsz'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="patch=10: each side must be a multiple of 4"):
        train(data=str(tiny_organs), epochs=1, project=str(tmp_path), **{**FAST, "patch": 10})


def test_loop_schedule_takes_the_poly_decay():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = Schedule(opt, 0.1, 0.0, total=100, warmup=10, decay=poly_decay)
    lrs = []
    for _ in range(100):
        lrs.append(sched.lrs()[0])
        sched.step()
    assert lrs[5] == pytest.approx(0.1 * 0.5 * poly_decay(0.05))  # warmup ramp on the poly curve
    assert lrs[50] == pytest.approx(0.1 * 0.5 ** 0.9) and lrs[99] == pytest.approx(0.1 * 0.01 ** 0.9)


def test_training_learns_the_liver(tiny_organs, tmp_path):
    result = train(data=str(tiny_organs), epochs=4, project=str(tmp_path), val=False,
                   **{**FAST, "iterations": 20, "lr0": 0.002, "warmup_epochs": 0})
    assert result.metrics.per_class["liver"] > 0.6, result.metrics.per_class


def test_forward_overflow_is_located_and_the_skip_attributed(tiny_organs, tmp_path, capsys):
    """16-mixed, stem conv weights of 3e4 (representable in FP16): its FP16 output overflows; the
    run folder names the module (NaN locator) and the skipped step, as for detection."""
    import json

    from mixprec.vision.segment3d.unet import UNet3D, load_unet_yaml

    model = UNet3D(load_unet_yaml(TINY, nc=5))
    with torch.no_grad():
        model.stem[0].weight.fill_(3e4)
    res = train(data=str(tiny_organs), epochs=1, project=str(tmp_path), weights=model,
                **{**FAST, "amp": "16-mixed", "iterations": 1})
    loc = json.loads((res.save_dir / "nan_locator.json").read_text())
    origin = loc["origin"]
    assert origin["phase"] == "forward" and origin["module"] == "stem.0"
    assert origin["op"].startswith("aten.convolution") and origin["output"]["dtype"] == "float16"
    recs = [json.loads(x) for x in (res.save_dir / "skipped_steps.jsonl").read_text().splitlines()]
    assert recs[0]["step"] == 0 and recs[0]["cause"] == "forward"
    assert "created in forward stem.0 / aten.convolution" in capsys.readouterr().out


def test_bench_cli_measures_a_unet_workload_by_patch(tmp_path, capsys):
    rc = cli_main(["bench", f"model={TINY}", "patch=8", "batch=1", "steps=1", "warmup=1", "repeats=1",
                   "precision=32", "device=cpu", "plots=False", "energy=False",
                   f"project={tmp_path}"])
    out = capsys.readouterr().out
    assert rc == 0 and "(patch 8^3, synthetic volumes)" in out
    import json

    row = json.loads((tmp_path / "bench" / "bench.json").read_text())["rows"][0]
    assert row["precision"] == "32" and row["memory"]["activations"] > 0


def test_trains_from_a_decathlon_dataset_json_with_ct_normalisation(tiny_organs, tmp_path):
    res = train(data=str(tiny_organs.parent / "dataset.json"), epochs=1, project=str(tmp_path),
                **{**FAST, "iterations": 1})
    record = load_checkpoint(res.best)["model"]
    assert record["norm"] is not None and len(record["norm"]) == 1  # CT: dataset-wide statistics
    lo, hi, mean, std = record["norm"][0]
    assert -200 < lo < mean < hi < 300 and std > 0  # soft tissue / organ HU, not air


def test_scientific_notation_on_the_command_line_is_a_float():
    """``weight_decay=3e-5`` (and the relaunch under torchrun, which writes floats as repr: 3e-05)
    must reach the trainer as a float: YAML 1.1 alone reads both as strings."""
    from mixprec.keys import parse_value

    assert parse_value("3e-5") == 3e-5 and parse_value(repr(3e-5)) == 3e-5 and parse_value("1E4") == 1e4
    assert parse_value("cpu") == "cpu" and parse_value("e5") == "e5" and parse_value("64") == 64


@pytest.mark.parametrize("ema", [False, True])
def test_ema_off_saves_and_validates_the_raw_weights(tiny_organs, tmp_path, ema):
    res = train(data=str(tiny_organs), epochs=2, ema=ema, project=str(tmp_path / "runs"), **FAST)
    for name in ("last.pt", "best.pt"):
        ckpt = load_checkpoint(res.save_dir / "weights" / name)
        saved, raw = ckpt["model"]["state_dict"], ckpt["train"]["model"]
        same = all(torch.equal(saved[k], raw[k].to(saved[k].dtype)) for k in raw)
        assert same is (not ema), name  # with the EMA on, the saved weights are an average
