"""An ONNX graph (read with the ``onnx`` package) as the importer's float graph
(``models.importer.FloatGraph``).

Every node becomes one float op or is refused: an op outside ``SUPPORTED`` (or a supported op
with attributes the blocks cannot run, e.g. a dilated conv) raises ``ValueError`` naming the
op, its node and what is supported; nothing is skipped silently. Identity and Dropout (eval)
pass through; a MatMul followed by a constant Add becomes one linear layer; a Softmax whose
output is the graph's output is left off (the report's logits are its input).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from zeroskip.models.importer import SUPPORTED_TEXT, FloatGraph, Node


ONNX_OPS = ("Conv", "BatchNormalization", "Relu", "Clip", "MaxPool", "AveragePool",
            "GlobalAveragePool", "Flatten", "Reshape", "Gemm", "MatMul", "Add", "Concat",
            "Identity", "Dropout", "Constant", "Softmax")


def _attrs(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _unsupported(node, why: str | None = None) -> ValueError:
    what = f"unsupported ONNX op {node.op_type} (node {node.name or node.output[0]!r})"
    if why:
        return ValueError(f"{what}: {why}; supported: {SUPPORTED_TEXT}")
    return ValueError(f"{what}; supported: {SUPPORTED_TEXT}")


def _square(node, values, what: str) -> int:
    values = list(values)
    if len(set(values)) != 1:
        raise _unsupported(node, f"non-square {what} {values}")
    return int(values[0])


def _pads(node, a: dict) -> int:
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise _unsupported(node, f"auto_pad={a['auto_pad']!r}")
    return _square(node, a.get("pads", [0, 0, 0, 0]), "padding")


def load_model_proto(path):
    """Read and check an ONNX file; a missing or malformed file is one ``ValueError``."""
    import onnx

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--model {str(p)!r}: no such file")
    try:
        proto = onnx.load(str(p))
        onnx.checker.check_model(proto)
    except Exception as e:  # protobuf's DecodeError, onnx's ValidationError, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"--model {str(p)!r} is not a valid ONNX model: {first}") from None
    return proto


def from_onnx(proto, name: str = "model") -> FloatGraph:
    """Convert a checked ``onnx.ModelProto`` into a ``FloatGraph``."""
    from onnx import numpy_helper

    g = proto.graph
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    inputs = [i for i in g.input if i.name not in consts]
    if len(inputs) != 1:
        raise ValueError(f"the ONNX graph has {len(inputs)} inputs "
                         f"({', '.join(i.name for i in inputs)}); one image input is supported")
    dims = [d.dim_value if d.HasField("dim_value") else None
            for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise ValueError(f"the ONNX graph's input {inputs[0].name!r} has shape {dims}; an "
                         "N x C x H x W image batch is supported")
    if len(g.output) != 1:
        raise ValueError(f"the ONNX graph has {len(g.output)} outputs; one is supported")
    out_name = g.output[0].name
    unknown: dict[str, str] = {}
    for node in g.node:  # every unsupported op at once, not only the first
        if node.op_type not in ONNX_OPS or node.domain not in ("", "ai.onnx"):
            unknown.setdefault(node.op_type, node.name or node.output[0])
    if unknown:
        ops = ", ".join(f"{op} (node {n!r})" for op, n in unknown.items())
        raise ValueError(f"unsupported ONNX op{'s' if len(unknown) > 1 else ''} {ops}; "
                         f"supported: {SUPPORTED_TEXT}")
    alias: dict[str, str] = {}
    nodes: list[Node] = []
    notes: list[str] = []
    producer: dict[str, Node] = {}

    def src(t: str) -> str:
        while t in alias:
            t = alias[t]
        return t

    def const(node, t: str, what: str):
        if t not in consts:
            raise _unsupported(node, f"its {what} is computed in the graph, not a constant")
        return consts[t]

    def emit(node, op: str, ins: list[str], **attrs):
        n = Node(node.name or node.output[0], op, [src(i) for i in ins], node.output[0], attrs)
        nodes.append(n)
        producer[n.output] = n

    for node in g.node:
        op, a = node.op_type, _attrs(node)
        if node.domain not in ("", "ai.onnx"):
            raise _unsupported(node, f"domain {node.domain!r}")
        if op == "Constant":
            from onnx import numpy_helper

            if "value" not in a:
                raise _unsupported(node, "a Constant without a tensor value")
            consts[node.output[0]] = numpy_helper.to_array(a["value"])
        elif op in ("Identity", "Dropout") and node.input[0] in consts:
            consts[node.output[0]] = consts[node.input[0]]
        elif op in ("Identity", "Dropout"):
            alias[node.output[0]] = node.input[0]
        elif op == "Conv":
            w = const(node, node.input[1], "weight")
            b = const(node, node.input[2], "bias") if len(node.input) > 2 and node.input[2] \
                else None
            if w.ndim != 4:
                raise _unsupported(node, f"a {w.ndim - 2}-D convolution")
            if any(d != 1 for d in a.get("dilations", [1, 1])):
                raise _unsupported(node, f"dilation {list(a['dilations'])} (only 1)")
            k = _square(node, w.shape[2:], "kernel")
            emit(node, "conv", [node.input[0]], weight=w, bias=b,
                 stride=_square(node, a.get("strides", [1, 1]), "stride"), pad=_pads(node, a),
                 groups=int(a.get("group", 1)), k=k)
        elif op == "BatchNormalization":
            scale, bias, mean, var = (const(node, t, "statistics") for t in node.input[1:5])
            mul = scale / np.sqrt(var + a.get("epsilon", 1e-5))
            emit(node, "bn", [node.input[0]], mul=mul, add=bias - mean * mul)
        elif op == "Relu":
            emit(node, "relu", [node.input[0]])
        elif op == "Clip":
            lo = a.get("min", -np.inf)
            hi = a.get("max", np.inf)
            if len(node.input) > 1 and node.input[1]:
                lo = float(const(node, node.input[1], "min"))
            if len(node.input) > 2 and node.input[2]:
                hi = float(const(node, node.input[2], "max"))
            if lo != 0 or not np.isfinite(hi) or hi <= 0:
                raise _unsupported(node, f"Clip({lo:g}, {hi:g}) (only Clip(0, max), "
                                         "e.g. ReLU6)")
            emit(node, "clip", [node.input[0]], hi=float(hi))
        elif op in ("MaxPool", "AveragePool"):
            if a.get("ceil_mode", 0):
                raise _unsupported(node, "ceil_mode=1")
            if any(d != 1 for d in a.get("dilations", [1, 1])):
                raise _unsupported(node, "a dilated pool")
            k = _square(node, a["kernel_shape"], "kernel")
            s = _square(node, a.get("strides", [1, 1]), "stride")
            emit(node, "maxpool" if op == "MaxPool" else "avgpool", [node.input[0]], k=k, s=s,
                 pad=_pads(node, a), count_pad=bool(a.get("count_include_pad", 0)))
        elif op == "GlobalAveragePool":
            emit(node, "gap", [node.input[0]])
        elif op == "Flatten":
            if a.get("axis", 1) != 1:
                raise _unsupported(node, f"axis={a['axis']} (only 1)")
            emit(node, "flatten", [node.input[0]])
        elif op == "Reshape":
            shape = [int(v) for v in const(node, node.input[1], "shape")]
            if len(shape) != 2 or shape[0] not in (0, 1, -1):
                raise _unsupported(node, f"shape {shape} (only a flatten to N x features)")
            emit(node, "flatten", [node.input[0]], features=shape[1])
        elif op == "Gemm":
            if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
                raise _unsupported(node, "transA, alpha or beta other than the defaults")
            w = const(node, node.input[1], "weight")
            w = w if a.get("transB", 0) else w.T
            b = const(node, node.input[2], "bias") if len(node.input) > 2 and node.input[2] \
                else None
            emit(node, "linear", [node.input[0]], weight=w, bias=b)
        elif op == "MatMul":
            emit(node, "linear", [node.input[0]], weight=const(node, node.input[1], "weight").T,
                 bias=None)
        elif op == "Add":
            a_in, b_in = node.input
            if a_in in consts or b_in in consts:
                c, x = (a_in, b_in) if a_in in consts else (b_in, a_in)
                p = producer.get(src(x))
                if p is None or p.op != "linear" or p.attrs["bias"] is not None:
                    raise _unsupported(node, "a constant added to a tensor other than a "
                                             "bias-free MatMul")
                p.attrs["bias"] = np.asarray(consts[c], np.float64).reshape(-1)
                alias[node.output[0]] = p.output
            else:
                emit(node, "add", [a_in, b_in])
        elif op == "Concat":
            if a.get("axis") != 1:
                raise _unsupported(node, f"axis={a.get('axis')} (only the channel axis, 1)")
            emit(node, "concat", list(node.input))
        elif op == "Softmax" and node.output[0] == out_name:
            alias[node.output[0]] = node.input[0]
            notes.append(f"the final Softmax (node {node.name!r}) is left off: the logits "
                         "are its input, the class order is the same")
        else:
            raise _unsupported(node)
    return FloatGraph(name, inputs[0].name, tuple(dims[1:]), nodes, src(out_name), notes)
