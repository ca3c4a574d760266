"""ONNX export: PyTorch <-> onnxruntime agreement (FP32, FP16), metadata, the ONNX backend in
val/predict against the PyTorch path, INT8 calibration images, and named errors.

References are computed in the same run: the PyTorch FP32 model's outputs, and ``Model(.pt)``'s
val/predict results. Each export traces the model with torch.export (a few seconds each)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from mixprec import Model
from mixprec.export import (
    TOLERANCE,
    ExportError,
    MetadataError,
    OnnxBackend,
    max_relative_error,
    read_metadata,
)
from mixprec.export import exporter as exporter_mod
from mixprec.export.quantize import CalibrationReader, calibration_indices

IMGSZ = 64  # the size the tiny checkpoint records (conftest.tiny)


@pytest.fixture(scope="module")
def fp32_dynamic(tiny) -> Path:
    return Model(tiny["pt"]).export(format="onnx", dynamic=True, file=str(tiny["root"] / "d.onnx"))


@pytest.fixture(scope="module")
def fp32_static(tiny) -> Path:
    return Model(tiny["pt"]).export(batch=2, file=str(tiny["root"] / "s.onnx"))


@pytest.fixture
def reuse_trace(monkeypatch, fp32_dynamic):
    """Exports in this test reuse the dynamic FP32 trace (any batch, any size) instead of
    tracing again: they test what follows the trace (calibration, checks, files), and the
    trace itself is tested by the round trips above. Saves ~10 s of torch.export per test."""
    monkeypatch.setattr(exporter_mod, "_torch_to_onnx", lambda *a, **k: onnx.load(str(fp32_dynamic)))


def _ort(path: Path, x: torch.Tensor) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {"images": x.numpy()})


def _torch(model: torch.nn.Module, x: torch.Tensor) -> list[np.ndarray]:
    model.eval()
    with torch.no_grad():
        return [o.numpy() for o in model(x)]


def test_fp32_round_trip_at_two_shapes(tiny, fp32_dynamic):
    """Dynamic batch and size: outputs equal PyTorch's (relative 1e-4) at shapes other than the
    traced one."""
    for shape in [(1, 3, 64, 64), (3, 3, 96, 128)]:
        x = torch.rand(shape, generator=torch.Generator().manual_seed(shape[0]))
        ref, got = _torch(tiny["model"], x), _ort(fp32_dynamic, x)
        assert [g.shape for g in got] == [r.shape for r in ref]
        assert max_relative_error(got, ref) <= TOLERANCE["fp32"] == 1e-4


def test_fp16_round_trip_is_half_and_within_1e_2(tiny):
    path = Model(tiny["pt"]).export(half=True, file=str(tiny["root"] / "h.onnx"))
    proto = onnx.load(str(path))
    weights = [i for i in proto.graph.initializer if len(i.dims) == 4]
    assert weights and all(w.data_type == onnx.TensorProto.FLOAT16 for w in weights)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    x = torch.rand(1, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(3))
    err = max_relative_error(_ort(path, x), _torch(tiny["model"], x))
    assert 0 < err <= TOLERANCE["fp16"] == 1e-2  # not bit-equal: it really computes in FP16
    assert read_metadata(path)["precision"] == "fp16"


def test_metadata_read_back(tiny, fp32_dynamic):
    proto = onnx.load(str(fp32_dynamic))
    onnx.checker.check_model(proto, full_check=True)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    meta = read_metadata(fp32_dynamic)
    model = tiny["model"]
    assert meta["task"] == "detect"
    assert {int(k): v for k, v in meta["names"].items()} == model.names
    assert meta["stride"] == model.head.stride.tolist()
    assert (meta["reg_max"], meta["nc"]) == (model.head.reg_max, 2)
    assert meta["imgsz"] == [IMGSZ, IMGSZ] and meta["dynamic"] is True
    assert meta["precision"] == "fp32" and meta["trained_precision"] == "bf16-mixed"
    assert meta["outputs"] == ["p3", "p4", "p5"] == [o.name for o in proto.graph.output]
    assert meta["check"]["max_rel_err"] <= 1e-4


def _val(model: Model, data: Path, root: Path, batch: int):
    return model.val(data=str(data), imgsz=IMGSZ, batch=batch, amp=False, plots=False,
                     datasets_dir=str(root), workers=0, verbose=False)


def test_val_on_onnx_agrees_with_val_on_pt(tiny, fp32_static):
    """Same images, same pre/post-processing: the same boxes (1e-3 px), scores and mAP. The
    ONNX model has a fixed batch of 2 and runs the val batches of 3 in padded chunks."""
    ref = _val(Model(tiny["pt"]), tiny["data"], tiny["root"], 3)
    got = _val(Model(fp32_static), tiny["data"], tiny["root"], 3)
    assert len(ref.predictions) > 10
    assert len(got.predictions) == len(ref.predictions)
    for a, b in zip(got.predictions, ref.predictions):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        np.testing.assert_allclose(a["bbox"], b["bbox"], atol=1e-3)
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)
    assert got.box.map == pytest.approx(ref.box.map, abs=1e-6)


def test_predict_on_onnx_agrees_with_pt(tiny, fp32_static):
    folder = tiny["data"].parent / "images"
    ref = Model(tiny["pt"]).predict(folder, imgsz=IMGSZ, conf=0.001, max_det=20)
    got = Model(fp32_static).predict(folder, conf=0.001, max_det=20)  # imgsz: metadata
    assert sum(len(r) for r in ref) > 0
    for a, b in zip(got, ref):
        assert a.names == b.names and len(a) == len(b)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
        np.testing.assert_array_equal(a.classes, b.classes)


def test_calibration_indices_even_and_exact():
    assert calibration_indices(8, 1.0) == list(range(8))
    assert calibration_indices(8, 0.25) == [0, 7]
    assert calibration_indices(10, 0.5) == [0, 2, 4, 7, 9]
    assert calibration_indices(3, 0.01) == [0]


def test_int8_calibrates_on_exactly_the_requested_images(tiny, monkeypatch, reuse_trace):
    seen: list[np.ndarray] = []
    original = CalibrationReader.get_next

    def spy(self):
        batch = original(self)
        if batch is not None:
            seen.extend(batch["images"])
        return batch

    monkeypatch.setattr(CalibrationReader, "get_next", spy)
    path = Model(tiny["pt"]).export(int8=True, data=str(tiny["data"]), fraction=0.5,
                                    datasets_dir=str(tiny["root"]), file=str(tiny["root"] / "q.onnx"))
    meta = read_metadata(path)
    images = sorted((tiny["data"].parent / "images").glob("*.png"))
    expected = [images[i].name for i in calibration_indices(len(images), 0.5)]
    assert meta["int8"]["images"] == expected and len(expected) == 4
    # the reader delivered exactly those images, letterboxed as validation does (64 px: as is)
    from PIL import Image

    want = [np.asarray(Image.open(images[i]).convert("RGB")).transpose(2, 0, 1) / 255
            for i in calibration_indices(len(images), 0.5)]
    assert len(seen) >= 4
    for a, b in zip(seen[-4:], want):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # QDQ with per-channel weights; the head concat (outputs) and the DFL conv stay FP32
    proto = onnx.load(str(path))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") > 10 and "DequantizeLinear" in ops
    producers = {o: n for n in proto.graph.node for o in n.output}
    for out in proto.graph.output:
        cat = producers[out.name]
        assert cat.op_type == "Concat"
        assert producers[cat.input[0]].op_type == "Conv"  # DFL conv not fed through QDQ output
    assert meta["precision"] == "int8" and meta["int8"]["keep_float"] == "dfl"
    assert "map_int8" in meta["check"]


def test_failed_check_leaves_no_file_at_the_target(tiny, monkeypatch, reuse_trace):
    monkeypatch.setitem(exporter_mod.TOLERANCE, "fp32", -1.0)  # nothing can pass
    target = tiny["root"] / "bad.onnx"
    with pytest.raises(ExportError, match="differ from PyTorch"):
        Model(tiny["pt"]).export(file=str(target))
    assert not target.exists() and target.with_suffix(".failed.onnx").is_file()


@pytest.mark.parametrize("kwargs, match", [
    ({"format": "tflite"}, "format='tflite' is not supported; supported: onnx"),
    ({"int8": True}, "int8=True needs data="),
    ({"half": True, "int8": True, "data": "x.yaml"}, "choose one"),
    ({"opset": 13}, "opset=13"),
    ({"fraction": 0}, "fraction=0"),
    ({"keep_float": "all"}, "keep_float='all'"),
    ({"imgsz": 70}, "multiples of the stride 32"),
    ({"imgsz": "64,64,64"}, "a detector takes one size or h,w"),
    ({"keep_float": "norm"}, "keep_float='norm' is not for detect"),
    ({"halff": True}, "did you mean 'half'"),
])
def test_bad_export_arguments_are_named(tiny, kwargs, match):
    with pytest.raises(ExportError, match=match):
        Model(tiny["pt"]).export(**kwargs)


def test_foreign_onnx_without_metadata_is_named(tmp_path):
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "foreign", [x], [y])
    path = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(MetadataError, match="no mixprec metadata"):
        Model(path)
    (tmp_path / "junk.onnx").write_bytes(b"not onnx at all")
    with pytest.raises(MetadataError, match="not a readable ONNX model"):
        OnnxBackend(tmp_path / "junk.onnx")


def test_static_size_mismatch_is_named(fp32_static):
    backend = OnnxBackend(fp32_static)
    with pytest.raises(ExportError, match="use imgsz=64 or export with dynamic=True"):
        backend(torch.zeros(1, 3, 96, 96))


def test_onnx_model_refuses_training(fp32_static):
    with pytest.raises(ValueError, match="exported ONNX model"):
        Model(fp32_static).train(data="x.yaml")


def test_benchmark_rows_and_files(tiny, tmp_path, reuse_trace):
    """pt and onnx rows: the same mAP (same pre/post-processing), latency and sizes filled,
    benchmark.json and benchmark.md written; an unknown format is named."""
    import json

    from mixprec.export.benchmark import BenchmarkConfig, benchmark

    cfg = BenchmarkConfig(model=str(tiny["pt"]), data=str(tiny["data"]), formats=("pt", "onnx"),
                          images=2, warmup=1, rounds=1, threads=1, datasets_dir=str(tiny["root"]))
    result = benchmark(cfg, tmp_path / "b", verbose=False)
    rows = {r["format"]: r for r in result["rows"]}
    assert rows["pt"]["status"] == rows["onnx"]["status"] == "ok"
    assert rows["onnx"]["map"] == pytest.approx(rows["pt"]["map"], abs=1e-6)
    assert rows["onnx"]["latency_ms"]["calls"] == 2 and rows["onnx"]["latency_ratio"] == 1.0
    assert rows["onnx"]["size_bytes"] == Path(rows["onnx"]["file"]).stat().st_size
    assert json.loads((tmp_path / "b" / "benchmark.json").read_text())["baseline"] == "onnx"
    assert "| onnx | fp32 |" in (tmp_path / "b" / "benchmark.md").read_text()
    with pytest.raises(ValueError, match="unknown \\['tflite'\\]"):
        BenchmarkConfig(model="best.pt", data="d.yaml", formats=("pt", "tflite"))


def test_export_command_names_bad_input(capsys):
    from mixprec.cli import main

    for args, message in ((["format=tflite"], "format='tflite' is not supported"),
                          (["int8=True"], "int8=True needs data="),
                          ([], "checkpoint not found: missing.pt")):
        assert main(["export", "model=missing.pt", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("mixprec export: ") and message in err and "Traceback" not in err
