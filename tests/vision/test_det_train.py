"""End to end: training writes every run artefact, exact resume, overfitting 8 images,
validation re-scored from the saved COCO files, prediction on a saved model, the CLI."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from vision_helpers import TINY_MODEL

from mixprec.cli import main as cli_main
from mixprec.io import load_checkpoint
from mixprec.vision import Model
from mixprec.vision.metrics import coco_evaluate
from mixprec.vision.trainer import train

FAST = dict(model=TINY_MODEL, imgsz=64, batch=4, workers=0, verbose=False)


@pytest.fixture(scope="module")
def shapes8_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    torch.set_num_threads(1)
    # amp pinned: amp=True would let `auto` pick bf16-mixed on a CPU with native BF16
    result = train(data="shapes8.yaml", datasets_dir=str(root / "datasets"), epochs=2,
                   project=str(root / "runs"), save_json=True, amp=False, **FAST)
    return result


def test_training_writes_every_run_artefact(shapes8_run):
    d = shapes8_run.save_dir
    assert d.name == "train"
    for name in ("args.yaml", "results.csv", "results.png", "precision.yaml", "weights/last.pt",
                 "weights/best.pt", "predictions.json", "ground_truth.json",
                 "val_batch0_labels.jpg", "val_batch0_pred.jpg"):
        assert (d / name).is_file(), name
    with open(d / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for col in ("time", "train/box_loss", "train/cls_loss", "train/dfl_loss", "metrics/precision(B)",
                "metrics/recall(B)", "metrics/mAP50(B)", "metrics/mAP50-95(B)", "val/box_loss",
                "val/cls_loss", "val/dfl_loss", "lr/pg0", "lr/pg1", "lr/pg2", "amp/scale",
                "amp/skipped_steps"):
        assert col in rows[0], col
    args = (d / "args.yaml").read_text()
    assert "precision: '32'" in args and "precision_reason:" in args
    ckpt = load_checkpoint(d / "weights" / "last.pt")  # weights_only=True
    assert {"model", "train", "epoch", "args"} <= set(ckpt)
    assert {"optimizer", "precision", "schedule"} <= set(ckpt["train"])
    # 2 batches per epoch, accumulate 2 ramping from 1 over the first epoch: steps at batch 0
    # (accumulate 1) and 1 (epoch end), then at the end of epoch 2 -> 3 optimizer steps
    assert ckpt["train"]["schedule"]["count"] == 3
    assert ckpt["model"]["state_dict"]["layers.0.conv.weight"].dtype == torch.float32


def test_saved_coco_files_rescore_to_the_same_numbers(shapes8_run):
    d = shapes8_run.save_dir
    gt = json.loads((d / "ground_truth.json").read_text())
    dets = json.loads((d / "predictions.json").read_text())
    map50, map_, _ = coco_evaluate(gt, dets)
    m = shapes8_run.metrics.box
    assert map50 == pytest.approx(m.map50, abs=1e-12) and map_ == pytest.approx(m.map, abs=1e-12)


def test_second_run_increments_the_folder_and_model_facade_trains(shapes8_run, tmp_path):
    project = shapes8_run.save_dir.parent
    datasets = project.parent / "datasets"
    model = Model(TINY_MODEL)
    metrics = model.train(data="shapes8.yaml", datasets_dir=str(datasets), epochs=1,
                          project=str(project), imgsz=64, batch=8, workers=0, verbose=False,
                          plots=False, val=False)
    assert model.last_train.save_dir.name == "train2" and metrics is not None
    assert model.source.endswith("train2/weights/best.pt")


def test_predict_on_a_saved_model(shapes8_run, tmp_path):
    model = Model(shapes8_run.best)
    images = shapes8_run.save_dir.parent.parent / "datasets" / "shapes8" / "images" / "train"
    one = model.predict(sorted(images.iterdir())[0], imgsz=64, conf=0.0, max_det=5)
    assert len(one) == 1 and len(one[0]) == 5
    r = one[0]
    assert r.boxes.shape == (5, 4) and r.scores.shape == (5,) and r.classes.dtype == np.int64
    assert (r.boxes[:, 2] <= 256).all() and (r.boxes >= 0).all()  # original 256 px image
    folder = model.predict(images, imgsz=64, conf=0.0, max_det=3, save=True,
                           project=str(tmp_path), name="p")
    assert len(folder) == 8 and len(list((tmp_path / "p").glob("*.jpg"))) == 8
    arr = model.predict(np.zeros((100, 150, 3), np.uint8), imgsz=64, conf=0.0, max_det=2)
    assert arr[0].boxes[:, [0, 2]].max() <= 150 and arr[0].boxes[:, [1, 3]].max() <= 100
    with pytest.raises(FileNotFoundError, match="predict source not found"):
        model.predict(tmp_path / "missing.jpg")


def test_val_reproduces_the_final_metrics(shapes8_run, tmp_path):
    model = Model(shapes8_run.best)  # data, imgsz, datasets_dir default to the training run's
    m = model.val(batch=8, workers=0, plots=False, project=str(tmp_path), verbose=False)
    assert m.box.map50 == pytest.approx(shapes8_run.metrics.box.map50, abs=1e-9)
    assert m.box.map == pytest.approx(shapes8_run.metrics.box.map, abs=1e-9)


def test_exact_resume_after_an_interrupted_run(tiny_data, tmp_path):
    common = dict(data=str(tiny_data), epochs=3, project=str(tmp_path), plots=False,
                  close_mosaic=1, **FAST)
    full = train(name="full", **common)

    def stop_after_first_epoch(state, epoch):
        if epoch == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(name="cut", callbacks={"on_epoch_end": stop_after_first_epoch}, **common)
    resumed = train(resume=str(tmp_path / "cut" / "weights" / "last.pt"), verbose=False)
    assert resumed.save_dir == tmp_path / "cut"
    a = load_checkpoint(full.last)
    b = load_checkpoint(resumed.last)
    for key in ("model", "train"):
        sa = a[key]["state_dict"] if key == "model" else a[key]["model"]
        sb = b[key]["state_dict"] if key == "model" else b[key]["model"]
        for k in sa:
            assert torch.equal(sa[k], sb[k]), (key, k)
    with open(full.save_dir / "results.csv") as f1, open(resumed.save_dir / "results.csv") as f2:
        ra, rb = list(csv.DictReader(f1)), list(csv.DictReader(f2))
    assert [r["train/box_loss"] for r in ra] == [r["train/box_loss"] for r in rb]
    with pytest.raises(ValueError, match="nothing to resume"):
        train(resume=str(full.last))


def test_overfitting_eight_images_reaches_map50_090(tiny_data, tmp_path):
    result = train(data=str(tiny_data), epochs=60, project=str(tmp_path), plots=False, val=False,
                   mosaic=0, scale=0, translate=0, hsv_h=0, hsv_s=0, hsv_v=0, fliplr=0, nbs=8,
                   optimizer="AdamW", lr0=0.01, warmup_epochs=1, close_mosaic=0,
                   **{**FAST, "batch": 8})
    assert result.metrics.box.map50 >= 0.9, result.metrics.box


def test_cli_help_lists_keys_and_unknown_key_suggests(capsys):
    assert cli_main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for key in ("model", "data", "epochs", "imgsz", "batch", "device", "workers", "optimizer",
                "lr0", "amp", "emulate", "val", "resume", "patience", "close_mosaic", "seed",
                "project", "name", "exist_ok", "save_json"):
        assert f"  {key} " in out, key
    assert cli_main(["train", "epoch=3"]) == 2
    assert "did you mean 'epochs'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="did you mean 'imgsz'"):
        train(imgsize=64)


def test_cli_predict_and_val_on_a_saved_model(shapes8_run, tmp_path, capsys):
    images = shapes8_run.save_dir.parent.parent / "datasets" / "shapes8" / "images" / "train"
    assert cli_main(["predict", f"model={shapes8_run.best}", f"source={images}", "imgsz=64",
                     f"project={tmp_path}", "conf=0.0", "max_det=1"]) == 0
    assert "1 objects" in capsys.readouterr().out
    assert cli_main(["val", f"model={shapes8_run.best}", "workers=0", "plots=False",
                     f"project={tmp_path}"]) == 0
    assert "mAP50-95" in capsys.readouterr().out


def test_emulated_bf16_training_goes_through_precision(tiny_data, tmp_path):
    result = train(data=str(tiny_data), epochs=1, project=str(tmp_path), plots=False,
                   amp="bf16-mixed", emulate=True, **FAST)
    record = (result.save_dir / "precision.yaml").read_text()
    assert "policy: bf16-mixed" in record and "emulate: true" in record
    assert "(emulated numerics)" in (result.save_dir / "args.yaml").read_text()
    assert np.isfinite(result.metrics.box.map)


def test_autobatch_asks_mixprec_bench_for_the_batch(tiny_data, tmp_path, capsys):
    result = train(data=str(tiny_data), epochs=1, project=str(tmp_path), plots=False,
                   **{**FAST, "batch": -1, "verbose": True})
    assert "autobatch: batch=" in capsys.readouterr().out
    import yaml

    batch = yaml.safe_load((result.save_dir / "args.yaml").read_text())["batch"]
    assert isinstance(batch, int) and 1 <= batch <= 256


def test_ema_off_saves_the_raw_detector_weights(tiny_data, tmp_path):
    """``ema`` is a loop key: detection switches the EMA off the same way as segment3d."""
    res = train(data=str(tiny_data), epochs=1, ema=False, amp=False, project=str(tmp_path / "runs"),
                **{**FAST, "batch": 8})
    ckpt = load_checkpoint(res.last)
    saved, raw = ckpt["model"]["state_dict"], ckpt["train"]["model"]
    assert all(torch.equal(saved[k], raw[k].to(saved[k].dtype)) for k in raw)
