"""INT8 latency: onnxruntime's QDQ export (mixprec's path) against torch's PT2E quantization
lowered by inductor, each against onnxruntime FP32, batch 1, in one process.

Issue 16 asks to pick the better INT8 path. PT2E lives in ``torchao`` (torch 2.14 no longer
ships ``torch.ao.quantization.quantize_pt2e``), which is not a mixprec dependency:

    pip install torchao          # 0.18 was used
    python benchmarks/int8_pt2e_probe.py --imgsz 640 --threads 0
    python benchmarks/int8_pt2e_probe.py --imgsz 160 --threads 1 --model runs/detect/train/weights/best.pt

Variants, timed in blocks (``--rounds`` rounds; in each, every variant in turn gets 3 untimed
calls and ``--calls`` timed ones: torch's OpenMP threads and onnxruntime's pool both spin after
their work, so calls of the two runtimes interleaved one by one slow each other down on a
small machine), min and median ms per image:
- ``ort fp32``: ``torch.onnx.export(dynamo=True)`` of the eval model, onnxruntime CPU provider,
  ``ORT_ENABLE_ALL`` (as ``mixprec export`` writes it; Conv+BN folded by the exporter);
- ``ort int8``: that file through ``mixprec.export.quantize.quantize_int8`` (QDQ, U8S8,
  per-channel), calibrated on ``--calib`` images;
- ``pt2e int8``: ``torch.export`` -> ``X86InductorQuantizer`` (static, per-channel weights) ->
  calibration on the same images -> ``convert_pt2e`` -> ``torch.compile`` with freezing (oneDNN
  INT8 convolutions with fused post-ops);
- ``torch fp32 (compiled)``: the eval model through ``torch.compile`` with freezing.
Calibration images are random (latency does not depend on them); accuracy is not measured here
(``mixprec val`` does that for the ONNX files).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import onnxruntime as ort
import torch

from mixprec.export.backend import session
from mixprec.export.quantize import CalibrationReader, quantize_int8
from mixprec.hardware import cpu_model
from mixprec.vision.models.detector import DetectionModel, load_model_yaml
from mixprec.vision.task import load_weights


class _Images:
    """The ``TaskImages`` interface over a list of tensors (for ``CalibrationReader``)."""

    def __init__(self, images: list[torch.Tensor]):
        self.items, self.names = images, [f"image{i}" for i in range(len(images))]

    def __len__(self) -> int:
        return len(self.items)

    def get(self, i: int) -> torch.Tensor:
        return self.items[i][0]


def load(model: str, nc: int) -> torch.nn.Module:
    if model.endswith(".pt"):
        return load_weights(model)[0].float().eval()
    return DetectionModel(load_model_yaml(model), nc=nc).eval()


def pt2e_int8(model: torch.nn.Module, x: torch.Tensor, calib: list[torch.Tensor]) -> Callable:
    import torchao.quantization.pt2e.inductor_passes.x86  # noqa: F401 (registers the INT8 fusions)
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(torch.export.export(model, (x,)).module(), quantizer)
    for c in calib:
        prepared(c)
    return torch.compile(convert_pt2e(prepared))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="det-n.yaml", help="a model YAML (random weights) or a .pt checkpoint")
    ap.add_argument("--nc", type=int, default=3)
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--threads", type=int, default=0, help="0: all cores (torch's and onnxruntime's default)")
    ap.add_argument("--calib", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=10, help="timed calls per variant per round")
    args = ap.parse_args(argv)
    try:
        import torchao  # noqa: F401
    except ImportError:
        raise SystemExit("int8_pt2e_probe: PT2E quantization needs torchao; pip install torchao") from None
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = load(args.model, args.nc)
    x = torch.rand(1, 3, args.imgsz, args.imgsz)
    calib = [torch.rand(1, 3, args.imgsz, args.imgsz) for _ in range(args.calib)]
    torch._inductor.config.freezing = True  # weights as constants: what inference compiles want
    with torch.no_grad(), tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        with contextlib.redirect_stdout(io.StringIO()):
            torch.onnx.export(model, (x,), str(fp32), dynamo=True, opset_version=18, optimize=True)
        ort32 = session(fp32, threads=threads)
        name = ort32.get_inputs()[0].name
        quantize_int8(fp32, int8, CalibrationReader(_Images(calib), range(len(calib)), name), keep_float=[])
        ort8 = session(int8, threads=threads)
        feed = {name: x.numpy()}
        compiled32 = torch.compile(model)
        q8 = pt2e_int8(model, x, calib)
        variants = {"ort fp32": lambda: ort32.run(None, feed), "ort int8": lambda: ort8.run(None, feed),
                    "pt2e int8": lambda: q8(x), "torch fp32 (compiled)": lambda: compiled32(x)}
        for fn in variants.values():  # compiles and warms up
            for _ in range(5):
                fn()
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.rounds):
            for name, fn in variants.items():
                for _ in range(3):  # the other runtime's spinning threads go idle first
                    fn()
                for _ in range(args.calls):
                    t = time.perf_counter()
                    fn()
                    times[name].append((time.perf_counter() - t) * 1e3)
    base = statistics.median(times["ort fp32"])
    print(f"# {args.model}, {args.imgsz} px, batch 1, {threads} threads; {cpu_model()}; "
          f"torch {torch.__version__}, onnxruntime {ort.__version__}\n")
    print("| variant | ms min | ms median | vs ort fp32 (medians) |\n|---|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {min(ts):.2f} | {med:.2f} | {med / base:.2f}x |")


if __name__ == "__main__":
    main()
