"""Files under stress: checkpoints truncated at random offsets, a disk that fills up while saving,
random bytes as images, random label lines, stdout redirected while workers fork."""

from __future__ import annotations

import errno
import io
import os
import sys

import numpy as np
import pytest
import torch
from fault_helpers import noise_jpeg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vision_helpers import TINY_MODEL, make_tiny_dataset

from mixprec.cli import main as cli_main
from mixprec.io import load_checkpoint, save_checkpoint
from mixprec.vision.data.augment import load_resized
from mixprec.vision.data.dataset import FlushingDataLoader
from mixprec.vision.data.labels import parse_label_text, scan

# derandomized: the same examples every run, so the printed fault counts are reproducible
HYP = settings(max_examples=25, deadline=None, derandomize=True,
               suppress_health_check=[HealthCheck.function_scoped_fixture])


def _ckpt_bytes() -> bytes:
    buf = io.BytesIO()
    torch.save({"model": {"w": torch.arange(500.0)}, "epoch": 3}, buf)
    return buf.getvalue()


CKPT = _ckpt_bytes()


@HYP
@given(cut=st.integers(0, len(CKPT) - 1))
def test_checkpoint_truncated_at_any_offset_is_named(cut, tmp_path_factory, faults):
    path = tmp_path_factory.mktemp("c") / "last.pt"
    path.write_bytes(CKPT[:cut])
    with pytest.raises(ValueError) as err:
        load_checkpoint(path)
    assert faults.record(str(err.value) == f"{path} is truncated or corrupt ({cut} bytes); use best.pt or "
                         "an earlier checkpoint", f"cut at {cut}")


class DiskFull:
    """``torch.save`` that writes ``fraction`` of the real bytes, then fails as a full disk does."""

    def __init__(self, fraction: float, real=torch.save):
        self.fraction, self.real = fraction, real

    def __call__(self, obj, f, *args, **kwargs):
        buf = io.BytesIO()
        self.real(obj, buf, *args, **kwargs)
        data = buf.getvalue()
        f.write(data[: int(len(data) * self.fraction)])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.99])
def test_disk_full_while_saving_leaves_the_old_file_whole(fraction, tmp_path, monkeypatch, faults):
    path = tmp_path / "weights" / "last.pt"
    save_checkpoint({"epoch": 1, "w": torch.ones(100)}, path)
    monkeypatch.setattr(torch, "save", DiskFull(fraction))
    with pytest.raises(OSError) as err:
        save_checkpoint({"epoch": 2, "w": torch.zeros(100)}, path)
    monkeypatch.undo()
    old = load_checkpoint(path)
    ok = (err.value.errno == errno.ENOSPC and old["epoch"] == 1 and torch.equal(old["w"], torch.ones(100))
          and sorted(p.name for p in path.parent.iterdir()) == ["last.pt"])  # no temp file left
    assert faults.record(ok, f"disk full at {fraction:.0%}")


def test_disk_full_in_training_is_one_line_and_the_run_resumes(tmp_path, monkeypatch, capsys, faults):
    data = make_tiny_dataset(tmp_path / "tiny")
    real = torch.save

    def full_on_second_last_pt(obj, f, *a, **k):  # the checkpoint of epoch 2 meets a full disk
        if isinstance(obj, dict) and "train" in obj and obj.get("epoch") == 1:
            return DiskFull(0.5)(obj, f, *a, **k)
        return real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full_on_second_last_pt)
    args = ["train", f"data={data}", f"model={TINY_MODEL}", "imgsz=64", "batch=4", "nbs=4", "workers=0",
            "epochs=3", "amp=False", "plots=False", "verbose=False", f"project={tmp_path / 'runs'}"]
    capsys.readouterr()
    rc = cli_main(args)
    err = capsys.readouterr().err.strip()
    monkeypatch.undo()
    last = tmp_path / "runs" / "train" / "weights" / "last.pt"
    ok = (rc == 2 and err.startswith("mixprec train: [Errno 28] No space left on device")
          and "\n" not in err and load_checkpoint(last)["epoch"] == 0)
    assert cli_main(["train", f"resume={last}", "verbose=False"]) == 0
    assert faults.record(ok and load_checkpoint(last)["epoch"] == 2, "disk full in training"), err


@HYP
@given(data=st.binary(min_size=0, max_size=2000), suffix=st.sampled_from([".jpg", ".png", ".bmp"]))
def test_random_bytes_as_an_image_are_skipped_with_the_reason_or_load(data, suffix, tmp_path_factory, faults):
    root = tmp_path_factory.mktemp("rb")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    img = root / "images" / f"x{suffix}"
    img.write_bytes(data)
    (root / "labels" / "x.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    index = scan([img], nc=1)
    if index.images:  # accepted: it must then load for training
        arr, _ = load_resized(img, 32)
        ok = arr.ndim == 3 and arr.shape[2] == 3
    else:
        ok = str(img) in index.skipped and index.skipped[str(img)].startswith("unreadable image (")
    assert faults.record(ok, f"{len(data)} random bytes as {suffix}")


@HYP
@given(cut=st.floats(0.0, 0.98), flip=st.integers(0, 10_000))
def test_damaged_jpeg_is_skipped_or_loads(cut, flip, tmp_path_factory, faults):
    """A real JPEG cut short or with one byte changed: skipped at scan, or (a change the decoder
    tolerates) loaded; never an error later in training."""
    root = tmp_path_factory.mktemp("dj")
    img = noise_jpeg(root / "images" / "x.jpg", seed=flip % 7)
    raw = bytearray(img.read_bytes())
    if flip % 2:
        raw[flip % len(raw)] ^= 0xFF
    else:
        raw = raw[: max(1, int(len(raw) * cut))]
    img.write_bytes(bytes(raw))
    (root / "labels").mkdir()
    index = scan([img], nc=1)
    if index.images:
        ok = load_resized(img, 32)[0].shape[2] == 3
    else:
        ok = index.skipped[str(img)].startswith("unreadable image (")
    assert faults.record(ok, f"damaged jpeg cut={cut:.2f} flip={flip}")


TOKENS = ["0", "1", "2", "0.5", "0.2", "1.0", "1.5", "-1", "nan", "inf", "-inf", "1e400", "1e-400", "abc",
          "0x1", "1_0", "١", "", "   "]


@HYP
@given(lines=st.lists(st.lists(st.sampled_from(TOKENS), max_size=7), max_size=5), noise=st.text(max_size=20))
def test_random_label_lines_are_parsed_or_rejected_with_a_line_number(lines, noise, faults):
    text = "\n".join(" ".join(t) for t in lines) + ("\n" + noise if noise else "")
    try:
        arr = parse_label_text(text, nc=2)
    except ValueError as err:
        ok = str(err).startswith("line ") or str(err) == "duplicate rows"
    else:
        ok = (np.isfinite(arr).all() and ((arr[:, 0] == 0) | (arr[:, 0] == 1)).all()
              and (arr[:, 1:] >= 0).all() and (arr[:, 1:] <= 1).all() and (arr[:, 3:] > 0).all())
    assert faults.record(ok, repr(text))


class Numbers(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.tensor(i)


def test_stdout_redirected_to_a_file_each_line_once_when_workers_fork(tmp_path, faults):
    """A line still in stdout's buffer when the loader forks its workers is written once."""
    out, saved = tmp_path / "out.txt", sys.stdout
    with open(out, "w") as f:  # block-buffered, as stdout is when redirected to a file
        sys.stdout = f
        try:
            print("line printed before the workers fork")
            batches = list(FlushingDataLoader(Numbers(), batch_size=2, num_workers=1))
        finally:
            sys.stdout = saved
    ok = out.read_text().count("line printed before") == 1 and len(batches) == 2
    assert faults.record(ok, "stdout with forked workers")
