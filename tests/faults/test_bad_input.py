"""Every bad input of issue #11's table ends in a named one-line error or a counted skip."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from fault_helpers import evil_checkpoint, noise_jpeg, truncate
from PIL import Image, ImageOps
from vision_helpers import TINY_MODEL, make_tiny_dataset

import mixprec as mp
from mixprec.cli import main as cli_main
from mixprec.vision.data import build_dataloader, load_data_config
from mixprec.vision.data.augment import load_resized
from mixprec.vision.data.labels import parse_label_text, scan
from mixprec.vision.models import load_model_yaml
from mixprec.vision.predict import predict
from mixprec.vision.trainer import train

FAST = dict(model=TINY_MODEL, imgsz=64, batch=4, nbs=4, workers=0, verbose=False, plots=False,
            amp=False, close_mosaic=0)


def one_line_error(err: str) -> bool:
    return err.count("\n") <= 1 and "Traceback" not in err


@pytest.fixture
def tiny(tmp_path):
    return make_tiny_dataset(tmp_path / "tiny")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    torch.set_num_threads(1)
    data = make_tiny_dataset(root / "tiny")
    return train(data=str(data), epochs=1, project=str(root / "runs"), **FAST), data


# -- images -------------------------------------------------------------------------------

def test_truncated_jpeg_is_found_at_scan_and_skipped_with_its_path(tiny, faults, capsys):
    bad = truncate(noise_jpeg(tiny.parent / "images" / "bad.jpg"), 0.6)
    with Image.open(bad) as im:
        im.verify()  # what the scan used to rely on: verify alone does not see it
    loader = build_dataloader(load_data_config(tiny), "train", 64, 4, True, cache=False)
    out = capsys.readouterr().out
    assert faults.record(f"WARNING skipped {bad}: unreadable image (OSError: image file is truncated" in out
                         and "9 images: 8 used" in out and "1 skipped" in out, "truncated jpeg")
    assert sum(len(b["paths"]) for b in loader) == 8  # the epoch runs over the rest


def test_exif_orientation_is_applied_in_scan_dataset_and_predict(tmp_path, faults, trained):
    img = noise_jpeg(tmp_path / "images" / "rot.jpg", w=64, h=32, exif_orientation=6)
    with Image.open(img) as im:
        reference = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        raw_size = im.size
    assert raw_size == (64, 32) and reference.shape[:2] == (64, 32)  # shown turned: 32 wide, 64 high
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "rot.txt").write_text("0 0.5 0.25 0.5 0.25\n")
    index = scan([img], nc=2)
    arr, shape = load_resized(img, 64)
    det = predict(mp.Model(trained[0].best).model, img, imgsz=64)[0]
    ok = index.shapes == [(32, 64)] and shape == (32, 64) and np.array_equal(arr, reference) \
        and np.array_equal(det.image, reference)
    assert faults.record(ok, "exif orientation")


def test_predict_on_a_folder_skips_an_unreadable_image(tmp_path, faults, trained, capsys):
    folder = tmp_path / "imgs"
    for i in range(3):
        noise_jpeg(folder / f"{i}.jpg", seed=i)
    truncate(folder / "1.jpg", 0.5)
    (folder / "3.png").write_bytes(b"not an image at all")
    model = mp.Model(trained[0].best)
    results = model.predict(str(folder), imgsz=64, save=True, project=str(tmp_path / "p"))
    out = capsys.readouterr().out
    saved = list((tmp_path / "p").rglob("*.jpg"))
    ok = ([r.path for r in results] == [str(folder / "0.jpg"), str(folder / "2.jpg")]
          and f"WARNING skipped {folder / '1.jpg'}" in out and f"WARNING skipped {folder / '3.png'}" in out
          and "2 images predicted, 2 unreadable skipped" in out and len(saved) == 2)
    assert faults.record(ok, "predict folder with unreadable files")
    faults.injected += 1  # the second bad file of this folder
    faults.survived += ok
    with pytest.raises(ValueError, match="cannot read image .*1.jpg"):
        model.predict(str(folder / "1.jpg"), imgsz=64)


# -- labels -------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["inf", "1e400", "nan", "-inf", "NaN"])
@pytest.mark.parametrize("column", [0, 2])
def test_non_finite_label_value_is_rejected_with_the_line_number(value, column, faults):
    row = ["0", "0.5", "0.5", "0.2", "0.2"]
    row[column] = value
    text = "1 0.3 0.3 0.1 0.1\n" + " ".join(row) + "\n"
    with pytest.raises(ValueError) as err:
        parse_label_text(text, nc=2)
    assert faults.record(re.match(r"line 2: not a finite number", str(err.value)) is not None, value)


def test_scan_counts_a_file_with_an_inf_class_as_corrupt(tiny, faults, capsys):
    (tiny.parent / "labels" / "3.txt").write_text("1e400 0.5 0.5 0.2 0.2\n")
    index = scan(sorted((tiny.parent / "images").glob("*.png")), nc=2)
    reasons = list(index.skipped.values())
    ok = len(reasons) == 1 and "3.txt: line 1: not a finite number" in reasons[0]
    assert faults.record(ok, "inf class at scan")


# -- YAML ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "match"), [
    ("path: .\ntrain: images\nval: images\nnames: {a: x, b: y}\n", r"'names' key 'a' is not a class id"),
    ("path: .\ntrain: images\nval: images\nnc: six\n", r"nc: 'six' must be a positive integer"),
    ("path: .\ntrain: images\nval: images\nnc: six\nnames: [a]\n", r"nc: 'six' must be a positive integer"),
    ("path: .\ntrain: images\nval: images\nnames: {0: x, 1.5: y}\n", r"'names' key 1.5 is not a class id"),
    ("path: .\ntrain: [images\nval: images\n", r"tiny.yaml:3:4: not valid YAML"),
    ("path: .\n\ttrain: images\n", r"tiny.yaml:2:1: not valid YAML"),
])
def test_bad_data_yaml_is_one_named_line(tiny, body, match, faults):
    tiny.write_text(body)
    with pytest.raises(ValueError) as err:
        load_data_config(tiny)
    assert faults.record(re.search(match, str(err.value)) is not None and "\n" not in str(err.value),
                         body), str(err.value)


def test_model_yaml_syntax_error_is_one_line(tmp_path, faults):
    bad = tmp_path / "m.yaml"
    bad.write_text("nc: 2\nbackbone: [[-1, 1, Conv, [64, 3, 2]]\nhead: x\n")
    with pytest.raises(ValueError) as err:
        load_model_yaml(bad)
    pattern = rf"model YAML {re.escape(str(bad))}:\d+:\d+: not valid YAML"
    assert faults.record(re.match(pattern, str(err.value)) is not None, "model yaml")


# -- the CLI ------------------------------------------------------------------------------

def cli(args, capsys) -> tuple[int, str]:
    capsys.readouterr()
    rc = cli_main(args)
    captured = capsys.readouterr()
    return rc, captured.err.strip()


@pytest.mark.parametrize("device", ["cuda", "7", "cuda:3"], ids=["name", "index", "name-index"])
def test_cuda_device_without_a_gpu_is_named(device, tiny, tmp_path, monkeypatch, capsys, faults):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rc, err = cli(["train", f"data={tiny}", f"device={device}", f"project={tmp_path}", "epochs=1",
                   f"model={TINY_MODEL}", "imgsz=64"], capsys)
    shown = f"cuda:{device}" if device.isdigit() else device
    assert faults.record(rc == 2 and err.startswith(f"mixprec train: device={shown} requested but no CUDA "
                                                    "device is available; use device=cpu")
                         and one_line_error(err), device), err


def test_truncated_and_evil_checkpoints_through_every_command(trained, tmp_path, capsys, faults):
    run, data = trained
    last = tmp_path / "run" / "weights" / "last.pt"
    last.parent.mkdir(parents=True)
    last.write_bytes(run.last.read_bytes())
    truncate(last, 0.5)
    size = last.stat().st_size
    evil = evil_checkpoint(tmp_path / "evil.pt")
    cases = [
        (["train", f"resume={last}"], f"{last} is truncated or corrupt ({size} bytes); use best.pt"),
        (["val", f"model={last}", f"data={data}"], f"{last} is truncated or corrupt ({size} bytes)"),
        (["predict", f"model={last}", f"source={data.parent / 'images'}"], "is truncated or corrupt"),
        (["train", f"model={evil}", f"data={data}"], f"{evil} is not a mixprec checkpoint: refused"),
        (["train", f"resume={evil}"], "not a mixprec checkpoint: refused to unpickle"),
        (["val", f"model={evil}"], "not a mixprec checkpoint: refused to unpickle"),
        (["predict", f"model={evil}", f"source={data.parent / 'images'}"], "refused to unpickle"),
    ]
    for args, expected in cases:
        rc, err = cli(args, capsys)
        assert faults.record(rc == 2 and expected in err and one_line_error(err), " ".join(args)), err
    assert "this-should-never-run" not in capsys.readouterr().out


def test_a_plain_state_dict_is_not_a_mixprec_checkpoint(tmp_path, faults):
    path = tmp_path / "plain.pt"
    torch.save({"weight": torch.ones(2)}, path)
    with pytest.raises(ValueError, match=r"not a mixprec checkpoint to load \(missing model\)"):
        mp.Model(path)
    faults.record(True, "plain state dict")


@pytest.mark.parametrize(("args", "expected"), [
    (["epochs=-1"], "mixprec train: epochs=-1: must be an integer >= 1"),
    (["nan_action=retry"], "mixprec train: nan_action='retry': use reload or stop"),
    (["data=missing.yaml"], "mixprec train: data YAML not found: missing.yaml"),
])
def test_cli_turns_library_errors_into_one_line_and_exit_2(args, expected, tmp_path, capsys, faults):
    rc, err = cli(["train", f"project={tmp_path}", *args], capsys)
    assert faults.record(rc == 2 and err.startswith(expected) and one_line_error(err), str(args)), err


def test_mixprec_debug_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXPREC_DEBUG", "1")
    with pytest.raises(ValueError, match="epochs=-1"):
        cli_main(["train", "epochs=-1", f"project={tmp_path}"])


def test_bench_with_few_steps_defaults_repeats_to_the_steps(tmp_path, capsys, faults):
    rc = cli_main(["bench", "model=convnet", "imgsz=32", "steps=3", "warmup=1", "precisions=32",
                   "batch=2", "device=cpu", "energy=False", "plots=False", "budget=0",
                   f"project={tmp_path}"])
    out = capsys.readouterr()
    report = json.loads((tmp_path / "bench" / "bench.json").read_text()) if rc == 0 else {}
    assert faults.record(rc == 0 and '"repeats": 3' in json.dumps(report), "bench steps=3"), out.err
