"""``mixprec train ... device=cpu,cpu``: the trainer relaunches itself under torchrun on 2 CPU
processes (gloo), trains data-parallel, and only rank 0 writes the one run folder; its reported
validation equals a single-process validation of the saved weights on the same data."""

import csv
import math
import subprocess
import sys

import pytest
import torch

from mixprec.distributed.launch import device_list
from mixprec.vision.data import build_dataloader, load_data_config
from mixprec.vision.loss import DetectionLoss
from mixprec.vision.trainer import load_weights
from mixprec.vision.validate import validate


def test_device_list_parsing():
    assert device_list("0,1") == ["0", "1"]
    assert device_list("cpu,cpu") == ["cpu", "cpu"]
    assert device_list("0") is None and device_list(0) is None and device_list(None) is None
    with pytest.raises(ValueError, match="not a mix"):
        device_list("0,cpu")
    with pytest.raises(ValueError, match="twice"):
        device_list("1,1")


def test_two_process_cpu_training_writes_one_run_folder(tmp_path):
    project, datasets = tmp_path / "runs", tmp_path / "datasets"
    cmd = [sys.executable, "-m", "mixprec.cli", "train", "model=det-n.yaml", "data=shapes8.yaml",
           "epochs=1", "imgsz=64", "batch=8", "device=cpu,cpu", "workers=0", "plots=False",
           f"project={project}", f"datasets_dir={datasets}", "amp=False"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "data-parallel on 2 processes" in done.stdout
    assert sorted(p.name for p in project.iterdir()) == ["train"]  # rank 1 made no train2
    run = project / "train"
    assert (run / "weights" / "last.pt").is_file() and (run / "weights" / "best.pt").is_file()
    assert done.stdout.count("Starting training for 1 epochs") == 1  # logged by rank 0 only
    with open(run / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1

    model, ckpt = load_weights(run / "weights" / "best.pt")
    assert ckpt["args"]["world_size"] == 2
    data = load_data_config("shapes8.yaml", datasets)
    loader = build_dataloader(data, "val", 64, 16, False, 0, 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as torchrun's ranks ran (OMP_NUM_THREADS=1): the box loss's anchor
    try:                      # assignment is sensitive to the conv's summation order (2e-4 relative)
        single = validate(model, loader, model.names, None, DetectionLoss(model), verbose=False)
    finally:
        torch.set_num_threads(threads)
    for key, value in zip(("box", "cls", "dfl"), single.loss.tolist()):
        assert float(rows[0][f"val/{key}_loss"]) == pytest.approx(value, rel=1e-5)
    assert float(rows[0]["metrics/mAP50-95(B)"]) == pytest.approx(single.box.map, abs=1e-6)
    assert all(math.isfinite(v) for v in single.loss.tolist())
