"""ONNX export of the 3D U-Net (segment3d): PyTorch <-> onnxruntime agreement (FP32, FP16),
metadata read back, ``val``/``predict`` through the ONNX backend against the ``.pt`` path
(computed in the same test), INT8 calibration on val patches, and named errors.

The model is the tiny test U-Net (tests/segment3d/unet3d-t.yaml, divisor 4) with random
weights and perturbed InstanceNorm affines, on organs3d at 32x32x24 (2 val volumes)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from mixprec import Model
from mixprec.export import TOLERANCE, ExportError, OnnxBackend, max_relative_error, read_metadata
from mixprec.export import exporter as exporter_mod
from mixprec.io import save_checkpoint
from mixprec.vision.segment3d.builtin import generate
from mixprec.vision.segment3d.task import Segment3DTask
from mixprec.vision.segment3d.unet import UNet3D, load_unet_yaml

TINY = Path(__file__).parents[1] / "segment3d" / "unet3d-t.yaml"
PATCH = [16, 16, 8]
NORM = [(-200.0, 300.0, 40.0, 80.0)]  # CT statistics (lo, hi, mean, std), as training stores them


@pytest.fixture(scope="module")
def seg(tmp_path_factory) -> dict:
    """``pt``: a unet3d-t checkpoint for organs3d (5 classes) whose record holds the patch, the
    CT normalisation and a spacing, trained (says its args) in bf16-mixed; ``data``: the YAML."""
    root = tmp_path_factory.mktemp("seg3d-export")
    data = generate("organs3d", root / "organs3d", 2, 2, (32, 32, 24))
    torch.manual_seed(0)
    model = UNet3D(load_unet_yaml(str(TINY), nc=5, in_channels=1))
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.InstanceNorm3d):
            m.weight.data = 1 + 0.3 * torch.randn(m.weight.shape, generator=gen)
            m.bias.data = 0.3 * torch.randn(m.bias.shape, generator=gen)
    model.names = {0: "background", 1: "liver", 2: "spleen", 3: "kidney", 4: "bladder"}
    model.patch, model.norm_stats = tuple(PATCH), NORM
    record = {**Segment3DTask().model_record(model), "state_dict": model.state_dict(),
              "spacing": [0.8, 0.8, 2.5]}
    pt = root / "weights" / "best.pt"
    save_checkpoint({"model": record, "args": {"patch": PATCH, "data": str(data), "precision": "bf16-mixed",
                                               "datasets_dir": str(root)}}, pt)
    model.eval()
    return {"root": root, "data": data, "pt": pt, "model": model}


@pytest.fixture(scope="module")
def onnx_dynamic(seg) -> Path:
    return Model(seg["pt"]).export(format="onnx", dynamic=True, file=str(seg["root"] / "d.onnx"))


def _ort(path: Path, x: torch.Tensor) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {"images": x.numpy()})[0]


def test_fp32_round_trip_dynamic_batch_and_sides(seg, onnx_dynamic):
    """Outputs equal PyTorch's (relative 1e-4) at shapes other than the traced one."""
    for shape in [(1, 1, 16, 16, 8), (3, 1, 24, 12, 20)]:
        x = torch.randn(shape, generator=torch.Generator().manual_seed(shape[0]))
        with torch.no_grad():
            ref = seg["model"](x).numpy()
        got = _ort(onnx_dynamic, x)
        assert got.shape == ref.shape == (shape[0], 5, *shape[2:])
        assert max_relative_error([got], [ref]) <= TOLERANCE["fp32"] == 1e-4
    proto = onnx.load(str(onnx_dynamic))
    onnx.checker.check_model(proto, full_check=True)
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1] == 1 and all(isinstance(d, str) for d in dims[:1] + dims[2:])


def test_metadata_read_back(seg, onnx_dynamic):
    meta = read_metadata(onnx_dynamic)
    assert meta["task"] == "segment3d" and meta["precision"] == "fp32"
    assert meta["trained_precision"] == "bf16-mixed"
    assert meta["names"] == {str(k): v for k, v in seg["model"].names.items()}  # JSON keys
    assert meta["patch"] == meta["imgsz"] == PATCH and meta["train_patch"] == PATCH
    assert meta["norm"] == [list(s) for s in NORM] and meta["spacing"] == [0.8, 0.8, 2.5]
    assert meta["nc"] == 5 and meta["in_channels"] == 1 and meta["divisor"] == 4
    assert meta["dynamic"] is True and meta["check"]["max_rel_err"] <= 1e-4
    head = OnnxBackend(onnx_dynamic).head
    assert head.patch == tuple(PATCH) and head.norm_stats == NORM and head.nc == 5


def test_fp16_round_trip_within_1e_2(seg):
    path = Model(seg["pt"]).export(half=True, file=str(seg["root"] / "h.onnx"))
    proto = onnx.load(str(path))
    convs = [i for i in proto.graph.initializer if len(i.dims) == 5]
    assert convs and all(w.data_type == onnx.TensorProto.FLOAT16 for w in convs)
    x = torch.randn(1, 1, *PATCH, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = seg["model"](x).numpy()
    err = max_relative_error([_ort(path, x)], [ref])
    assert err <= TOLERANCE["fp16"] == 1e-2
    assert read_metadata(path)["precision"] == "fp16"


def test_val_through_onnx_gives_the_pt_dice(seg, onnx_dynamic):
    """The same volumes, normalisation (the CT statistics from the metadata), sliding window and
    metric: per-class Dice equal to the .pt's within 1e-3 (FP32 vs onnxruntime FP32 can flip
    an argmax where two logits tie to ~1e-6)."""
    kw = dict(data=str(seg["data"]), amp=False, hd95=False, plots=False, verbose=False)
    ref = Model(seg["pt"]).val(**kw)
    got = Model(onnx_dynamic).val(**kw)  # patch: from the metadata
    assert set(got.per_class) == set(ref.per_class) == {"liver", "spleen", "kidney", "bladder"}
    assert any(v > 0 for v in ref.per_class.values())  # predictions are not empty
    for name, d in ref.per_class.items():
        assert got.per_class[name] == pytest.approx(d, abs=1e-3, nan_ok=True), name


def test_predict_through_onnx_writes_the_pt_label_map(seg, onnx_dynamic, tmp_path):
    case = sorted((seg["data"].parent / "imagesVa").iterdir())[0]
    ref = Model(seg["pt"]).predict(str(case))[0].labels
    res = Model(onnx_dynamic).predict(str(case), save=True, project=str(tmp_path))[0]
    out, src = nib.load(str(res.saved)), nib.load(str(case))
    assert out.shape == src.shape and np.allclose(out.affine, src.affine)
    assert np.mean(res.labels == ref) >= 0.999  # argmax ties only
    np.testing.assert_array_equal(np.asarray(out.dataobj), res.labels)


def test_cli_val_and_predict_pick_segment3d_from_the_onnx(seg, onnx_dynamic, tmp_path, capsys):
    from mixprec.cli import main as cli_main

    assert cli_main(["val", f"model={onnx_dynamic}", f"data={seg['data']}", "hd95=False",
                          "plots=False"]) == 0
    assert "liver" in capsys.readouterr().out
    case = sorted((seg["data"].parent / "imagesVa").iterdir())[0]
    assert cli_main(["predict", f"model={onnx_dynamic}", f"source={case}",
                          f"project={tmp_path}"]) == 0
    saved = list(tmp_path.rglob("*.nii.gz"))
    assert len(saved) == 1 and nib.load(str(saved[0])).shape == nib.load(str(case)).shape


def test_int8_calibrates_on_val_patches_and_keeps_instance_norm_float(seg, onnx_dynamic, monkeypatch):
    """Calibration reads the requested fraction of the val tiles (named in the metadata); the
    InstanceNormalization nodes stay FP32 (keep_float=norm, the default); the file is scored
    by Dice against the FP32 ONNX model."""
    monkeypatch.setattr(exporter_mod, "_torch_to_onnx", lambda *a, **k: onnx.load(str(onnx_dynamic)))
    path = Model(seg["pt"]).export(int8=True, data=str(seg["data"]), fraction=0.5,
                                   file=str(seg["root"] / "q.onnx"))
    meta = read_metadata(path)
    tiles = meta["int8"]["images"]
    # 2 val volumes of 32x32x24 in 16x16x8 tiles: 2 * 2 * 2 * 3 = 24 tiles, half of them
    assert len(tiles) == 12 and all("@" in t for t in tiles)
    assert {t.split("@")[0] for t in tiles} == {p.name.split(".")[0] for p in
                                                 (seg["data"].parent / "imagesVa").iterdir()}
    assert meta["int8"]["keep_float"] == "norm"
    check = meta["check"]  # Dice of the INT8 vs the FP32 ONNX model on the val volumes
    assert check["score"] == "Dice"
    assert check["drop"] == pytest.approx(check["dice_fp32"] - check["dice_int8"])
    assert check["drop"] <= check["max_drop"] == 0.01
    proto = onnx.load(str(path))
    ops = {n.op_type for n in proto.graph.node}
    assert "QuantizeLinear" in ops
    inits = {i.name: i for i in proto.graph.initializer}
    norms = [n for n in proto.graph.node if n.op_type == "InstanceNormalization"]
    assert len(norms) == 11  # unet3d-t: stem 1, encoder 2 + 3 + 3 (2 shortcuts), decoder 2 -- all FP32
    assert all(inits[i].data_type == onnx.TensorProto.FLOAT for n in norms for i in n.input[1:])
    assert sum(n.op_type == "QuantizeLinear" for n in proto.graph.node) > 10
    x = torch.randn(1, 1, *PATCH, generator=torch.Generator().manual_seed(5))
    assert _ort(path, x).shape == (1, 5, *PATCH)


@pytest.mark.parametrize("kwargs, match", [
    ({"imgsz": 10}, "multiple of 4"),
    ({"imgsz": "16,16"}, "give one side"),
    ({"keep_float": "dfl"}, "not for segment3d"),
    ({"int8": True}, "needs data="),
])
def test_bad_input_named_errors(seg, kwargs, match):
    with pytest.raises(ExportError, match=match):
        Model(seg["pt"]).export(file=str(seg["root"] / "bad.onnx"), **kwargs)


def test_onnx_predict_names_a_channel_mismatch(seg, onnx_dynamic):
    with pytest.raises(ValueError, match="2 channel"):
        Model(onnx_dynamic).predict(str(_two_channel_case(seg["root"])))


def _two_channel_case(root: Path) -> Path:
    p = root / "two_channel.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 8, 2), np.float32), np.eye(4)), str(p))
    return p


def test_benchmark_reports_dice_for_segment3d(seg, onnx_dynamic, monkeypatch, tmp_path):
    """pt, onnx and onnx-int8 rows scored by Dice (the pt and onnx rows equal within 1e-3), per-patch
    latency, and the table titled by Dice; the INT8 row is checked against FP32 by Dice."""
    import json

    from mixprec.export.benchmark import BenchmarkConfig, benchmark

    monkeypatch.setattr(exporter_mod, "_torch_to_onnx", lambda *a, **k: onnx.load(str(onnx_dynamic)))
    cfg = BenchmarkConfig(model=str(seg["pt"]), data=str(seg["data"]), formats=("pt", "onnx", "onnx-int8"),
                          fraction=0.5, images=2, warmup=0, rounds=1, threads=1)
    result = benchmark(cfg, tmp_path / "b", verbose=False)
    rows = {r["format"]: r for r in result["rows"]}
    assert all(r["status"] == "ok" for r in rows.values()), rows
    assert rows["onnx"]["dice"] == pytest.approx(rows["pt"]["dice"], abs=1e-3)
    assert "map" not in rows["onnx"] and rows["onnx-int8"]["precision"] == "int8"
    assert all(r["latency_ms"]["calls"] == 2 for r in rows.values())
    assert result["config"]["imgsz"] == PATCH and result["config"]["keep_float"] == "norm"
    md = (tmp_path / "b" / "benchmark.md").read_text()
    assert "| Dice (mean fg) | Δ Dice (mean fg) vs pt |" in md and "ms/patch" in md
    assert json.loads((tmp_path / "b" / "benchmark.json").read_text())["task"] == "segment3d"


def test_onnx_predict_resamples_to_the_metadata_spacing_like_the_pt(seg, onnx_dynamic, tmp_path, monkeypatch):
    """A volume at another spacing (1.2 x 0.8 x 5.0 mm): the .onnx model, whose metadata records
    the training spacing 0.8 x 0.8 x 2.5, sees it resampled exactly as the .pt does, and writes
    the label map on the input's own grid and affine; the labels agree with the .pt's."""
    from mixprec.vision.segment3d import predict as predict_mod
    from mixprec.vision.segment3d.nifti import write_nifti

    case = sorted((seg["data"].parent / "imagesVa").iterdir())[0]
    img = nib.load(str(case))
    affine = np.diag([1.2, 0.8, 5.0, 1.0])
    other = tmp_path / "other.nii.gz"
    write_nifti(other, np.asarray(img.dataobj, dtype=np.float32), affine)
    seen, real = [], predict_mod.predict_logits

    def spy(model, image, *a, **k):
        seen.append(tuple(image.shape[1:]))
        return real(model, image, *a, **k)

    monkeypatch.setattr(predict_mod, "predict_logits", spy)
    ref = Model(seg["pt"]).predict(str(other))[0].labels
    res = Model(onnx_dynamic).predict(str(other), save=True, project=str(tmp_path / "p"))[0]
    x, y, z = img.shape
    assert seen == [(round(x * 1.2 / 0.8), y, round(z * 5.0 / 2.5))] * 2  # resampled, for both
    out = nib.load(str(res.saved))
    assert out.shape == img.shape and np.allclose(out.affine, affine)
    assert np.mean(res.labels == ref) >= 0.999  # argmax ties only
