"""One lookup table per quantized SiLU: a graph rewrite of an INT8 QDQ model.

onnxruntime quantizes ``x * sigmoid(x)`` as two integer kernels, QLinearSigmoid and QLinearMul,
each reading and writing the whole uint8 activation. Both input and output are uint8 with a
known scale and zero point, so the pair is a function of 256 input values: this rewrite
replaces

    q_x -> DequantizeLinear -> {Sigmoid -> QuantizeLinear -> DequantizeLinear} -> Mul -> QuantizeLinear -> q_y

by ``q_y = Gather(table, Cast(q_x, int32))`` with a 256-entry uint8 table. The table is
computed the way onnxruntime's CPU kernels compute the pair (FP32: the sigmoid quantized to its
own calibrated scale, then the product requantized, round half to even), so the rewritten model
gives the same uint8 values up to rounding ties (at most one quantization step).

Only SiLUs whose scales and zero points are scalar initializers with uint8 zero points are
rewritten; anything else is left as it is. Library only; no I/O.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["fuse_quantized_silu", "silu_table"]


def silu_table(x_scale: float, x_zero: int, sig_scale: float, sig_zero: int, y_scale: float,
               y_zero: int) -> np.ndarray:
    """uint8 (256,): ``q_y`` for each ``q_x``, as QLinearSigmoid then QLinearMul compute it in
    FP32 (dequantize, function, ``rint(v / scale) + zero``, clip to [0, 255])."""
    f32 = np.float32
    q = np.arange(256, dtype=f32)
    x = (q - f32(x_zero)) * f32(x_scale)
    with np.errstate(over="ignore"):
        sig = f32(1) / (f32(1) + np.exp(-x))
    sig_q = np.clip(np.rint(sig / f32(sig_scale)) + f32(sig_zero), 0, 255)
    sig_f = (sig_q - f32(sig_zero)) * f32(sig_scale)
    y = x * sig_f
    return np.clip(np.rint(y / f32(y_scale)) + f32(y_zero), 0, 255).astype(np.uint8)


def _scalar(inits: dict[str, TensorProto], name: str) -> np.ndarray | None:
    t = inits.get(name)
    if t is None:
        return None
    a = numpy_helper.to_array(t)
    return a if a.size == 1 else None


def _qparams(node: onnx.NodeProto, inits: dict[str, TensorProto]) -> tuple[float, int] | None:
    """(scale, zero point) of a Quantize/DequantizeLinear with scalar initializers and a uint8
    zero point; None otherwise."""
    if len(node.input) < 3:
        return None
    s, z = _scalar(inits, node.input[1]), _scalar(inits, node.input[2])
    if s is None or z is None or z.dtype != np.uint8:
        return None
    return float(s.reshape(())), int(z.reshape(()))


def fuse_quantized_silu(model: onnx.ModelProto) -> int:
    """Rewrite every quantized SiLU of ``model`` (QDQ, uint8 activations) into a Cast + Gather
    lookup, in place; returns how many were rewritten. Nodes feeding graph outputs are left."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in graph.node:
        for i in n.input:
            consumers[i].append(n)
    outputs = {o.name for o in graph.output}

    def only(tensor: str, op: str) -> onnx.NodeProto | None:
        users = consumers.get(tensor, [])
        if len(users) == 1 and users[0].op_type == op and tensor not in outputs:
            return users[0]
        return None

    def dq_source(tensor: str) -> tuple[str, tuple[float, int]] | None:
        dq = producer.get(tensor)
        if dq is None or dq.op_type != "DequantizeLinear":
            return None
        qp = _qparams(dq, inits)
        return (dq.input[0], qp) if qp else None

    remove: set[int] = set()
    added: list[tuple[int, list[onnx.NodeProto]]] = []
    new_inits: list[TensorProto] = []
    count = 0
    for pos, sig in enumerate(graph.node):
        if sig.op_type != "Sigmoid":
            continue
        q_s = only(sig.output[0], "QuantizeLinear")
        dq_s = only(q_s.output[0], "DequantizeLinear") if q_s else None
        mul = only(dq_s.output[0], "Mul") if dq_s else None
        q_y = only(mul.output[0], "QuantizeLinear") if mul else None
        src = dq_source(sig.input[0])
        if not (q_s and dq_s and mul and q_y and src) or len(mul.input) != 2:
            continue
        other = mul.input[0] if mul.input[1] == dq_s.output[0] else mul.input[1]
        if dq_source(other) != src:  # x * sigmoid(x): both from the same quantized tensor
            continue
        sig_qp, sig_dqp, y_qp = _qparams(q_s, inits), _qparams(dq_s, inits), _qparams(q_y, inits)
        if not (sig_qp and y_qp) or sig_qp != sig_dqp:
            continue
        (q_x, (xs, xz)) = src
        table = silu_table(xs, xz, *sig_qp, *y_qp)
        name = f"{sig.name}_silu_lut"
        new_inits.append(numpy_helper.from_array(table, f"{name}_table"))
        cast = helper.make_node("Cast", [q_x], [f"{name}_index"], f"{name}_cast", to=TensorProto.INT32)
        gather = helper.make_node("Gather", [f"{name}_table", f"{name}_index"], [q_y.output[0]],
                                  f"{name}_gather", axis=0)
        added.append((pos, [cast, gather]))
        remove.update(id(n) for n in (sig, q_s, dq_s, mul, q_y))
        count += 1
    if not count:
        return 0
    # the DequantizeLinear of x when only the rewritten nodes read it
    for n in graph.node:
        users = consumers.get(n.output[0], []) if n.op_type == "DequantizeLinear" else []
        if users and n.output[0] not in outputs and all(id(u) in remove for u in users):
            remove.add(id(n))
    at = dict(added)
    nodes = []
    for pos, n in enumerate(graph.node):
        nodes.extend(at.get(pos, []))
        if id(n) not in remove:
            nodes.append(n)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(new_inits)
    used = {i for n in graph.node for i in n.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return count
