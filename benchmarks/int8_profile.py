"""Where INT8 time goes on the CPU, without wall-clock timing: onnxruntime's profiler at one
thread, for FP32, the exported INT8 model and variants of it (quantization options, session
optimisation levels, rewrites of the quantized SiLU).

    PYTHONPATH=src python3 benchmarks/int8_profile.py --model runs/detect/train/weights/best.pt \\
        --data shapes.yaml --imgsz 640

Per model: each node's *fastest* kernel time over ``--repeats`` fresh sessions x ``--rounds``
rounds x ``--runs`` calls, the models interleaved round by round (the least disturbed call, so
load on a shared machine and one session's bad luck -- identical graphs in two sessions
differed by up to 25% here -- count less), summed per op type; the table gives each op type's share of
that sum, the sum itself ("kernel sum": NOT a latency -- no framework overhead, no threads), its
ratio to FP32's, and the op counts of onnxruntime's optimised graph. Outputs of every INT8
variant are compared with the exported INT8 model's (max |difference| in units of the output's
largest |value|). Writes ``int8_profile.md`` and ``int8_profile.json`` into ``--out``.

Variants:
- ``int8``: the export as it is (QDQ, U8S8, per-channel weights, MinMax, keep_float default).
- ``per_tensor``, ``reduce_range``, ``qoperator``, ``act_symmetric``, ``u8u8``: one
  ``quantize_static`` setting changed.
- ``int8@extended``, ``int8@basic``: the same file, session graph optimisation level lowered
  (no NHWC/NCHWc layout transforms; no QDQ fusion).
- ``silu_lut``: each quantized SiLU (QLinearSigmoid + QLinearMul on the same uint8 input)
  rewritten as one 256-entry table, ``Gather(table, Cast(q_x, int32))``, the table computed as
  onnxruntime's kernels compute the pair (exact: equal outputs).
- ``silu_quickgelu``: each quantized SiLU as DequantizeLinear -> QuickGelu (FP32, onnxruntime's
  fused x*sigmoid(x)) -> QuantizeLinear (not exact: skips the sigmoid's own rounding).
- ``fp32_relu``, ``int8_relu``: the FP32 graph with every SiLU replaced by ReLU, and its INT8
  export -- a *different network* (no retraining: accuracy meaningless), profiled to show what
  an activation that quantizes into QLinearConv would leave. Skipped (with the SiLU rewrites)
  when the model has no SiLU, e.g. ``det-n-relu.yaml``.
- ``base_fp32``, ``base_int8`` (with ``--baseline other.pt``): another trained model's FP32 and
  INT8 exports in the same interleaved profile, e.g. det-n beside det-n-relu; the table then also
  gives each kernel sum relative to ``base_fp32``.

``--variants none`` profiles only fp32, int8 (and the baseline): a shorter run.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantFormat, QuantType

from mixprec.export.quantize import CalibrationReader, calibration_indices, quantize_int8
from mixprec.export.tasks import task_for_model
from mixprec.vision.model import Model

QUANT_VARIANTS: dict[str, dict[str, Any]] = {
    "per_tensor": {"per_channel": False},
    "reduce_range": {"reduce_range": True},
    "qoperator": {"quant_format": QuantFormat.QOperator},
    "act_symmetric": {"extra_options": {"ActivationSymmetric": True}},
    "u8u8": {"weight_type": QuantType.QUInt8},
}
LEVELS = {"extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
          "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC}
SILU_OPS = ("QLinearSigmoid", "QLinearMul", "Gather", "Cast", "QuickGelu")


# ---- the SiLU rewrites ------------------------------------------------------------------------
def silu_table(xs: float, xz: int, ss: float, sz: int, ys: float, yz: int) -> np.ndarray:
    """uint8 (256,): q_y per q_x as QLinearSigmoid then QLinearMul compute it (FP32: dequantize,
    function, rint(v / scale) + zero point, clip)."""
    f = np.float32
    x = (np.arange(256, dtype=f) - f(xz)) * f(xs)
    with np.errstate(over="ignore"):
        sig = f(1) / (f(1) + np.exp(-x))
    sig_f = (np.clip(np.rint(sig / f(ss)) + f(sz), 0, 255) - f(sz)) * f(ss)
    return np.clip(np.rint(x * sig_f / f(ys)) + f(yz), 0, 255).astype(np.uint8)


def _qparams(node: onnx.NodeProto, inits: dict[str, TensorProto]) -> tuple[float, int] | None:
    if len(node.input) < 3 or node.input[1] not in inits or node.input[2] not in inits:
        return None
    s, z = numpy_helper.to_array(inits[node.input[1]]), numpy_helper.to_array(inits[node.input[2]])
    if s.size != 1 or z.size != 1 or z.dtype != np.uint8:
        return None
    return float(s.reshape(())), int(z.reshape(()))


def rewrite_silu(model: onnx.ModelProto, mode: str) -> int:
    """Rewrite each quantized SiLU ``DQ(q_x) -> {Sigmoid -> Q -> DQ} * DQ(q_x) -> Q -> q_y`` in
    place: ``lut`` (Cast + Gather on a 256-entry table) or ``quickgelu`` (DQ -> QuickGelu -> Q).
    Returns how many were rewritten."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    users: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in g.node:
        for i in n.input:
            users[i].append(n)
    outputs = {o.name for o in g.output}

    def only(t: str, op: str) -> onnx.NodeProto | None:
        u = users.get(t, [])
        return u[0] if len(u) == 1 and u[0].op_type == op and t not in outputs else None

    def source(t: str) -> tuple[str, tuple[float, int]] | None:
        dq = producer.get(t)
        qp = _qparams(dq, inits) if dq is not None and dq.op_type == "DequantizeLinear" else None
        return (dq.input[0], qp) if qp else None

    drop: set[int] = set()
    added: dict[int, list[onnx.NodeProto]] = {}
    for pos, sig in enumerate(g.node):
        if sig.op_type != "Sigmoid":
            continue
        q_s = only(sig.output[0], "QuantizeLinear")
        dq_s = only(q_s.output[0], "DequantizeLinear") if q_s else None
        mul = only(dq_s.output[0], "Mul") if dq_s else None
        q_y = only(mul.output[0], "QuantizeLinear") if mul else None
        src = source(sig.input[0])
        if not (q_s and dq_s and mul and q_y and src) or len(mul.input) != 2:
            continue
        other = mul.input[0] if mul.input[1] == dq_s.output[0] else mul.input[1]
        sig_qp, y_qp = _qparams(q_s, inits), _qparams(q_y, inits)
        if source(other) != src or not sig_qp or not y_qp or _qparams(dq_s, inits) != sig_qp:
            continue
        name = f"{sig.name}_silu"
        if mode == "lut":
            table = numpy_helper.from_array(silu_table(*src[1], *sig_qp, *y_qp), f"{name}_table")
            g.initializer.append(table)
            added[pos] = [helper.make_node("Cast", [src[0]], [f"{name}_idx"], to=TensorProto.INT32),
                          helper.make_node("Gather", [table.name, f"{name}_idx"], [q_y.output[0]], axis=0)]
        else:
            added[pos] = [helper.make_node("QuickGelu", [sig.input[0]], [f"{name}_f"], domain="com.microsoft",
                                           alpha=1.0),
                          helper.make_node("QuantizeLinear", [f"{name}_f", *q_y.input[1:]], [q_y.output[0]])]
        drop.update(id(n) for n in (sig, q_s, dq_s, mul, q_y))
    still = {i for n in g.node if id(n) not in drop for i in n.input}
    still |= {i for nodes in added.values() for n in nodes for i in n.input} | outputs
    drop |= {id(n) for n in g.node if n.op_type == "DequantizeLinear" and n.output[0] not in still}
    nodes = [m for pos, n in enumerate(g.node) for m in [*added.get(pos, []), n] if id(m) not in drop]
    del g.node[:]
    g.node.extend(nodes)
    return len(added)


def silu_to_relu(model: onnx.ModelProto) -> int:
    """FP32 graph: replace each ``x * sigmoid(x)`` by ``Relu(x)`` in place (what a ReLU variant
    of the network would export; its weights are the SiLU model's, so its accuracy means
    nothing -- only its op counts and kernel times). Returns how many were replaced."""
    g = model.graph
    users: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in g.node:
        for i in n.input:
            users[i].append(n)
    drop: set[int] = set()
    for sig in [n for n in g.node if n.op_type == "Sigmoid"]:
        muls = [u for u in users[sig.output[0]] if u.op_type == "Mul" and sig.input[0] in u.input]
        if len(users[sig.output[0]]) != 1 or len(muls) != 1:
            continue
        mul = muls[0]
        mul.op_type, mul.input[:] = "Relu", [sig.input[0]]
        drop.add(id(sig))
    nodes = [n for n in g.node if id(n) not in drop]
    del g.node[:]
    g.node.extend(nodes)
    return len(drop)


# ---- profiling -------------------------------------------------------------------------------
def profile(models: dict[str, tuple[Path, Any]], x: np.ndarray, runs: int,
            rounds: int) -> dict[str, dict[str, Any]]:
    """Per model (path, graph optimisation level or None): outputs, per-op-type sums of each
    node's fastest kernel time (us) and the optimised graph's op counts, at one thread. The
    models run interleaved, ``rounds`` rounds of ``runs`` calls each, so load drifts alike."""
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {}
        for i, (name, (path, level)) in enumerate(models.items()):
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = opts.inter_op_num_threads = 1
            opts.enable_profiling, opts.log_severity_level = True, 3
            opts.graph_optimization_level = level or ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            opts.profile_file_prefix = str(Path(tmp) / f"prof{i}")
            opts.optimized_model_filepath = str(Path(tmp) / f"opt{i}.onnx")
            sessions[name] = (ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]),
                              opts.optimized_model_filepath)
        outs: dict[str, Any] = {}
        for _ in range(rounds):
            for name, (sess, _) in sessions.items():
                feed = {sess.get_inputs()[0].name: x}
                for _ in range(runs):  # the first call's warm-up is dropped by taking minima
                    outs[name] = sess.run(None, feed)
        result = {}
        for name, (sess, opt) in sessions.items():
            events = json.loads(Path(sess.end_profiling()).read_text())
            ops = collections.Counter(n.op_type for n in onnx.load(opt).graph.node)
            result[name] = _summarise(events, outs[name], ops)
    return result


def _summarise(events: list[dict[str, Any]], outs: Any, ops: collections.Counter) -> dict[str, Any]:
    per_node: dict[str, tuple[str, int]] = {}  # node -> (op type, fastest kernel time in us)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op, best = per_node.get(e["name"], (e["args"]["op_name"], 1 << 62))
            per_node[e["name"]] = (op, min(best, int(e["dur"])))
    return {"outputs": outs, "per_node": per_node, "ops": dict(ops)}


def merge(runs: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per model: each node's minimum over the repeats (fresh sessions), summed per op type;
    ``sums_us``: each repeat's own kernel sum (the spread between sessions)."""
    out = {}
    for name in runs[0]:
        nodes: dict[str, tuple[str, int]] = {}
        for r in runs:
            for node, (op, t) in r[name]["per_node"].items():
                nodes[node] = (op, min(t, nodes.get(node, (op, t))[1]))
        by_op: collections.Counter = collections.Counter()
        for op, t in nodes.values():
            by_op[op] += t
        out[name] = {"outputs": runs[0][name]["outputs"], "ops": runs[0][name]["ops"], "by_op": dict(by_op),
                     "sum_us": sum(by_op.values()),
                     "sums_us": [sum(t for _, t in r[name]["per_node"].values()) for r in runs]}
    return out


def _rel_diff(got: list[np.ndarray], ref: list[np.ndarray]) -> float:
    return max(float(np.abs(g - r).max() / max(np.abs(r).max(), 1e-12)) for g, r in zip(got, ref))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a trained .pt")
    ap.add_argument("--data", required=True, help="data YAML (INT8 calibration images)")
    ap.add_argument("--imgsz", default=None, help="input size (default: the training size)")
    ap.add_argument("--fraction", type=float, default=0.1, help="calibration fraction of val")
    ap.add_argument("--runs", type=int, default=5, help="calls per model per round")
    ap.add_argument("--rounds", type=int, default=2, help="rounds per session (models interleaved)")
    ap.add_argument("--repeats", type=int, default=3, help="fresh sessions (their spread is reported)")
    ap.add_argument("--datasets-dir", default="datasets")
    ap.add_argument("--out", default="runs/int8_profile")
    ap.add_argument("--baseline", default=None, help="another trained .pt profiled beside (e.g. det-n)")
    ap.add_argument("--variants", choices=("all", "none"), default="all",
                    help="none: only fp32 and int8 (and the baseline)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    src = Model(a.model)
    task = task_for_model(src.model)
    common = dict(imgsz=a.imgsz, data=a.data, fraction=a.fraction, datasets_dir=a.datasets_dir)
    fp32 = src.export(file=str(out / "fp32.onnx"), check=False, imgsz=a.imgsz)
    int8 = src.export(file=str(out / "int8.onnx"), int8=True, check=False, **common)
    meta = json.loads(next(p.value for p in onnx.load(str(int8)).metadata_props if p.key == "int8"))
    files: dict[str, tuple[Path, Any]] = {"fp32": (fp32, None), "int8": (int8, None)}
    if a.baseline:
        base = Model(a.baseline)
        files["base_fp32"] = (base.export(file=str(out / "base_fp32.onnx"), check=False, imgsz=a.imgsz), None)
        files["base_int8"] = (base.export(file=str(out / "base_int8.onnx"), int8=True, check=False,
                                          **common), None)
    size = tuple(json.loads(next(p.value for p in onnx.load(str(fp32)).metadata_props if p.key == "imgsz")))
    images = task.images(a.data, size, a.datasets_dir, task.metadata(src.model, src.ckpt))
    idx = calibration_indices(len(images), a.fraction)
    for name, options in QUANT_VARIANTS.items() if a.variants == "all" else ():
        path = out / f"{name}.onnx"
        quantize_int8(fp32, path, CalibrationReader(images, idx, "images"), meta["float_nodes"], options)
        files[name] = (path, None)
    for lvl, level in LEVELS.items() if a.variants == "all" else ():
        files[f"int8@{lvl}"] = (int8, level)
    for mode in ("lut", "quickgelu") if a.variants == "all" else ():
        proto = onnx.load(str(int8))
        n = rewrite_silu(proto, mode)
        if n == 0:  # no SiLU (a ReLU model): nothing to rewrite
            print(f"silu_{mode}: no SiLU in the model, skipped")
            continue
        path = out / f"silu_{mode}.onnx"
        if mode == "quickgelu" and not any(o.domain == "com.microsoft" for o in proto.opset_import):
            proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        onnx.save(proto, str(path))
        if mode == "lut":  # standard ops only (onnx's checker does not know com.microsoft's)
            onnx.checker.check_model(str(path), full_check=True)
        files[f"silu_{mode}"] = (path, None)
        print(f"silu_{mode}: {n} SiLUs rewritten")
    relu = onnx.load(str(fp32))
    n_relu = silu_to_relu(relu) if a.variants == "all" else 0
    print(f"relu variant: {n_relu} SiLUs replaced")
    if n_relu:
        onnx.save(relu, str(out / "fp32_relu.onnx"))
        quantize_int8(out / "fp32_relu.onnx", out / "int8_relu.onnx",
                      CalibrationReader(images, idx, "images"), meta["float_nodes"])
        files["fp32_relu"] = (out / "fp32_relu.onnx", None)
        files["int8_relu"] = (out / "int8_relu.onnx", None)
    x = images.get(0)[None].numpy().astype(np.float32)
    rows = merge([profile(files, x, a.runs, a.rounds) for _ in range(a.repeats)])
    ref = rows["int8"]["outputs"]
    lines = [f"# INT8 profile: {a.model} at {'x'.join(map(str, size))}, onnxruntime {ort.__version__}, "
             f"1 thread, per-node minimum over {a.repeats} sessions x {a.rounds} interleaved rounds x "
             f"{a.runs} calls", "",
             "| model | kernel sum vs fp32 | vs base_fp32 | per session | QLinearConv / Conv share | "
             "SiLU share | top ops | max diff vs int8 | QLinearConv | Transpose |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    base = rows["fp32"]["sum_us"]
    other = rows["base_fp32"]["sum_us"] if "base_fp32" in rows else None
    for name, r in rows.items():
        tot = r["sum_us"]
        share = {k: 100 * v / tot for k, v in sorted(r["by_op"].items(), key=lambda kv: -kv[1])}
        silu = sum(v for k, v in share.items() if k in SILU_OPS)
        conv = share.get("QLinearConv", 0) + share.get("Conv", 0)
        top = ", ".join(f"{k} {v:.0f}%" for k, v in list(share.items())[:4])
        diff = "" if name in ("fp32", "fp32_relu", "base_fp32") else \
            "(other net)" if name in ("int8_relu", "base_int8") else f"{_rel_diff(r['outputs'], ref):.2g}"
        vs_base = f"{tot / other:.2f}" if other else ""
        spread = "-".join(f"{v / b:.2f}" for v, b in ((min(r["sums_us"]), max(rows["fp32"]["sums_us"])),
                                                      (max(r["sums_us"]), min(rows["fp32"]["sums_us"]))))
        lines.append(f"| {name} | {tot / base:.2f} | {vs_base} | {spread} | {conv:.0f}% | {silu:.0f}% | "
                     f"{top} | {diff} | {r['ops'].get('QLinearConv', 0)} | {r['ops'].get('Transpose', 0)} |")
        r.pop("outputs")
    lines += ["", "Kernel sum: the per-node minima summed -- a load-robust profile, not a latency. "
              "Time latency with benchmarks/export_formats.py or mixprec benchmark on a quiet machine.", ""]
    (out / "int8_profile.md").write_text("\n".join(lines))
    (out / "int8_profile.json").write_text(json.dumps(rows, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
