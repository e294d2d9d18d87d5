"""Your own network: an ONNX or PyTorch model becomes the quantised integer layers every block,
the integer reference and ``zeroskip verify`` run, plus the host's integer ops between them.

Every way in goes through ONNX: an ``.onnx`` file is read with the ``onnx`` package; a
PyTorch model (a TorchScript file, a ``torch.export`` ``.pt2`` file, ``module:function``
returning an ``nn.Module``, or a named network of ``models.zoo``) is exported with torch's
TorchScript-based ONNX exporter first, in memory. ``models.onnx_import`` turns the ONNX graph
into a float graph of ``Node``s; ``fuse`` folds BatchNorm into its conv, a ReLU / ReLU6 (clip)
into the layer before it, a pool of window = stride right after a layer into the layer's
``pool``; ``quantize`` calibrates (the clip rules of ``models.quant``) and gives every tensor
a scale; ``int_forward`` runs the whole graph in integers.

What runs where:
- **on the blocks**: every Conv (BatchNorm folded) and Linear, as ``QuantLayer``s.
  A grouped / depthwise conv is one ``QuantLayer`` with ``spec.groups`` > 1 (weights
  [out, in / groups, k, k]); every block runs it one group at a time (``sim.workload``).
- **on the host, in integers, between layers**: max-pools other than window = stride after
  a layer, average pools (rounded to nearest), flatten, residual adds and concats (each input
  rescaled to the output scale by a 16-bit fixed-point multiplier, then clipped), a ReLU not
  directly after a layer.
- A layer whose input is signed (a normalised image, a linear bottleneck's output) gets it
  offset by ``2**(act_bits-1)`` by the host, padded with that offset (so the layer itself
  has no padding) and the offset folded into its bias: exact, and the blocks only ever see
  unsigned activations.
"""

from __future__ import annotations

import dataclasses
import importlib
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from zeroskip.hw.config import FixedPointConfig
from zeroskip.models.quant import CLIP_RULES, clip_value, quantize_layer
from zeroskip.models.reference import QuantLayer, layer_forward
from zeroskip.models.workloads import ConvLayer

SUPPORTED_TEXT = ("Conv (square kernel, any stride and padding, groups incl. depthwise, "
                  "dilation 1), BatchNormalization after a Conv, Relu, Clip(0, max) (ReLU6), "
                  "MaxPool, AveragePool, GlobalAveragePool, Flatten, Reshape to N x features, "
                  "Gemm / MatMul (Linear), Add, Concat on channels, Identity, Dropout, a final "
                  "Softmax")
HOST_FRAC_BITS = 16  # fixed-point precision of the host's rescaling for adds and concats
CALIB_SAMPLE = 1 << 18  # values kept per tensor and batch for the clip rules
SEED = 18
DEFAULT_CALIB_IMAGES = 8


@dataclass
class Node:
    """One op of the float graph: ``op`` on the tensors ``inputs``, giving ``output``."""

    name: str
    op: str
    inputs: list[str]
    output: str
    attrs: dict = field(default_factory=dict)


@dataclass
class FloatGraph:
    name: str
    input: str
    input_shape: tuple  # (C, H, W); None where the file leaves a dimension open
    nodes: list[Node]
    output: str
    notes: list = field(default_factory=list)  # what the reader left off, for the report


def _nice(name: str) -> str:
    """The module path of a node torch's exporter named: ``/layer1/layer1.0/conv1/Conv`` ->
    ``layer1.0.conv1``, ``/features/features.1/conv/conv.0/conv.0.0/Conv`` ->
    ``features.1.conv.0.0`` (a Sequential's child repeats the Sequential's name); a name from
    elsewhere as it is."""
    parts = [p for p in name.split("/") if p]
    if len(parts) < 2 or not name.startswith("/"):
        return name.strip("/") or "layer"
    segs: list[str] = []
    for p in parts[:-1]:
        if p == "program" and not segs:  # the wrapper of a torch.export program
            continue
        if segs and p.startswith(segs[-1] + "."):
            segs[-1] = p
        else:
            segs.append(p)
    return ".".join(segs)


# --- fusing the float graph into layers and host ops ----------------------------------------
def fuse(graph: FloatGraph) -> tuple[list[Node], str]:
    """(steps, output tensor): ``layer`` steps (conv / linear with BatchNorm, activation and
    pool folded in) and host ops, in graph order."""
    consumers: dict[str, int] = {}
    for n in graph.nodes:
        for t in n.inputs:
            consumers[t] = consumers.get(t, 0) + 1
    consumers[graph.output] = consumers.get(graph.output, 0) + 1
    steps: list[Node] = []
    by_output: dict[str, Node] = {}
    alias: dict[str, str] = {}
    names: set[str] = set()

    def src(t):
        while t in alias:
            t = alias[t]
        return t

    def single(t):
        return consumers.get(t, 0) == 1

    for n in graph.nodes:
        ins = [src(t) for t in n.inputs]
        p = by_output.get(ins[0]) if ins else None
        if n.op == "bn":
            if p is None or p.op != "layer" or p.attrs["kind"] != "conv" or p.attrs["act"] \
                    or p.attrs["pool"] > 1 or not single(ins[0]):
                raise ValueError(f"unsupported BatchNormalization (node {n.name!r}): only "
                                 f"directly after a Conv is supported (folded into it); "
                                 f"supported: {SUPPORTED_TEXT}")
            a = p.attrs
            a["weight"] = a["weight"] * n.attrs["mul"][:, None, None, None]
            a["bias"] = a["bias"] * n.attrs["mul"] + n.attrs["add"]
            alias[n.output] = p.output
            continue
        if n.op in ("relu", "clip") and p is not None and single(ins[0]) and (
                (p.op == "layer" and p.attrs["pool"] == 1) or p.op == "add") \
                and p.attrs["act"] is None:
            p.attrs["act"] = n.attrs.get("hi", "relu") if n.op == "clip" else "relu"
            alias[n.output] = p.output
            continue
        if n.op == "maxpool" and p is not None and p.op == "layer" and p.attrs["act"] \
                and p.attrs["pool"] == 1 and n.attrs["k"] == n.attrs["s"] and \
                n.attrs["pad"] == 0 and single(ins[0]) and p.attrs["kind"] == "conv":
            p.attrs["pool"] = n.attrs["k"]
            alias[n.output] = p.output
            continue
        if n.op in ("avgpool",) and n.attrs["k"] == 1 and n.attrs["s"] == 1 and \
                n.attrs["pad"] == 0:  # an adaptive pool to the size it already has
            alias[n.output] = ins[0]
            continue
        if n.op in ("conv", "linear"):
            w = np.asarray(n.attrs["weight"], np.float64)
            b = n.attrs["bias"]
            b = np.zeros(w.shape[0]) if b is None else np.asarray(b, np.float64).reshape(-1)
            attrs = dict(kind="conv" if n.op == "conv" else "fc", weight=w, bias=b,
                         act=None, pool=1, k=n.attrs.get("k", 1), stride=n.attrs.get("stride", 1),
                         pad=n.attrs.get("pad", 0), groups=n.attrs.get("groups", 1))
            base = _nice(n.name)
        else:
            attrs = dict(n.attrs, act=None) if n.op == "add" else dict(n.attrs)
            base = n.name
            if n.name.startswith("/"):  # torch's exporter: the module path, then the op
                path = _nice(n.name) if n.name.count("/") >= 2 else ""
                own = n.op in ("maxpool", "avgpool", "gap", "flatten") and any(
                    w in path.rsplit(".", 1)[-1].lower() for w in ("pool", "flatten"))
                base = path if own else f"{path}.{n.op}" if path else n.op
        name, i = base, 2
        while name in names:
            name, i = f"{base}_{i}", i + 1
        names.add(name)
        step = Node(name, "layer" if n.op in ("conv", "linear") else n.op, ins, n.output, attrs)
        steps.append(step)
        by_output[n.output] = step
    out = src(graph.output)
    if out != graph.input and out not in by_output:
        raise ValueError("the graph's output is not computed by any supported op")
    if not any(s.op == "layer" for s in steps):
        raise ValueError("the model has no Conv or Linear layer to run on the blocks")
    return steps, out


# --- float execution -------------------------------------------------------------------------
def _float_step(s: Node, xs: list[torch.Tensor]) -> torch.Tensor:
    a, x = s.attrs, xs[0]
    if s.op == "layer":
        w = torch.from_numpy(a["weight"])
        b = torch.from_numpy(a["bias"])
        if a["kind"] == "fc":
            y = F.linear(x.flatten(1), w.reshape(w.shape[0], -1), b)
        else:
            y = F.conv2d(x, w, b, stride=a["stride"], padding=a["pad"], groups=a["groups"])
        return y
    if s.op == "relu":
        return x.clamp(min=0)
    if s.op == "clip":
        return x.clamp(0, a["hi"])
    if s.op == "maxpool":
        return F.max_pool2d(x, a["k"], a["s"], a["pad"])
    if s.op == "avgpool":
        return F.avg_pool2d(x, a["k"], a["s"], a["pad"], count_include_pad=a["count_pad"])
    if s.op == "gap":
        return x.mean((2, 3), keepdim=True)
    if s.op == "flatten":
        return x.flatten(1)
    if s.op == "add":
        return xs[0] + xs[1]
    if s.op == "concat":
        return torch.cat(xs, 1)
    raise AssertionError(s.op)


def _activate(s: Node, y: torch.Tensor) -> torch.Tensor:
    act = s.attrs.get("act")
    if act == "relu":
        return y.clamp(min=0)
    if act is not None:
        return y.clamp(0, act)
    return y


@torch.no_grad()
def float_forward(steps: list[Node], graph_input: str, out: str, x: torch.Tensor,
                  record=None) -> torch.Tensor:
    """The fused graph in float64; ``record(step, activated_output)`` sees every step."""
    last_use = {}
    for i, s in enumerate(steps):
        for t in s.inputs:
            last_use[t] = i
    env = {graph_input: x.double()}
    for i, s in enumerate(steps):
        y = _activate(s, _float_step(s, [env[t] for t in s.inputs]))
        if record is not None:
            record(s, y)
        if s.op == "layer" and s.attrs["pool"] > 1:
            y = F.max_pool2d(y, s.attrs["pool"])
        env[s.output] = y
        for t in set(s.inputs):
            if last_use.get(t) == i and t != out:
                del env[t]
    return env[out]


# --- quantisation ----------------------------------------------------------------------------
@dataclass
class QuantGraph:
    """The integer graph: ``steps`` with per-tensor scales, ``layers`` (QuantLayer per layer
    step, in order) and the input's quantisation."""

    name: str
    steps: list[Node]
    input: str
    output: str
    input_shape: tuple
    layers: list[QuantLayer]
    scales: dict  # tensor -> (scale, signed)
    fxp: FixedPointConfig
    rule: str

    @property
    def zero_point(self) -> int:
        return 1 << (self.fxp.act_bits - 1)

    def where(self) -> dict:
        """Which steps ran on the blocks and which on the host."""
        blocks = [s.attrs["spec"].name for s in self.steps if s.op == "layer"]
        host = [f"{s.name} ({_HOST_NAMES[s.op]})" for s in self.steps if s.op != "layer"]
        return {"blocks": blocks, "host": host}


_HOST_NAMES = {"maxpool": "max-pool", "avgpool": "average pool", "gap": "global average pool",
               "flatten": "flatten", "add": "residual add", "concat": "concat", "relu": "ReLU",
               "clip": "clip"}


def _host_multiplier(ratio: float) -> int:
    return int(round(ratio * (1 << HOST_FRAC_BITS)))


class _Calibration:
    """Per tensor: the largest |value|, the smallest value and a sample for the clip rules."""

    def __init__(self):
        self.stats: dict[str, dict] = {}

    def __call__(self, step: Node, y: torch.Tensor):
        self.add(step.output, y)

    def add(self, name: str, y: torch.Tensor):
        v = y.detach().reshape(-1).numpy()
        st = self.stats.setdefault(name, {"max": 0.0, "min": np.inf, "absmax": 0.0,
                                          "sample": []})
        st["max"] = max(st["max"], float(v.max()))
        st["min"] = min(st["min"], float(v.min()))
        st["absmax"] = max(st["absmax"], float(np.abs(v).max()))
        step = max(1, v.size // CALIB_SAMPLE)
        st["sample"].append(v[::step].copy())

    def clip(self, name: str, rule: str, relu: bool) -> float:
        st = self.stats[name]
        if not relu:
            return st["absmax"] if st["absmax"] > 0 else 1.0
        if rule == "minmax":
            return st["max"] if st["max"] > 0 else 1.0
        return clip_value(np.concatenate(st["sample"]), rule)


def quantize(graph: FloatGraph, calib: torch.Tensor, rule: str = "kl",
             fxp: FixedPointConfig | None = None, batch: int = 8) -> QuantGraph:
    """Calibrate on ``calib`` (float [N, C, H, W]) and quantise every layer and host op."""
    if rule not in CLIP_RULES:
        raise ValueError(f"unknown clip rule {rule!r}; choose one of {', '.join(CLIP_RULES)}")
    fxp = fxp or FixedPointConfig()
    steps, out = fuse(graph)
    shapes = _shapes(steps, graph.input, tuple(calib.shape[1:]))
    cal = _Calibration()
    for i in range(0, len(calib), batch):
        xb = calib[i:i + batch].double()
        cal.add(graph.input, xb)
        float_forward(steps, graph.input, out, xb, record=cal)
    z = 1 << (fxp.act_bits - 1)
    in_st = cal.stats[graph.input]
    signed_in = in_st["min"] < 0
    in_scale = (in_st["absmax"] or 1.0) / ((z - 1) if signed_in else fxp.act_max)
    scales = {graph.input: (in_scale, signed_in)}
    layers = []
    for s in steps:
        a = s.attrs
        ins = [scales[t] for t in s.inputs]
        if s.op == "layer":
            s_in, signed = ins[0]
            weight = a["weight"]
            host_pad = a["pad"] if signed else 0
            relu = a["act"] is not None
            spec = _spec(s, shapes, host_pad)
            clip = cal.clip(s.output, rule, relu)
            if relu and a["act"] != "relu":
                clip = min(clip, float(a["act"]))
            q = quantize_layer(spec, torch.from_numpy(weight), torch.from_numpy(a["bias"]),
                               s_in, clip, fxp)
            if signed:  # x = x_u - z: the bias absorbs -z * sum(W), exactly
                bias = q.bias - z * q.weight.sum((1, 2, 3))
                if int(bias.abs().max()) > fxp.bias_max:
                    raise ValueError(f"layer {s.name!r}: its signed input's offset does not "
                                     f"fit the {fxp.bias_bits}-bit bias")
                q = dataclasses.replace(q, bias=bias)
            a.update(spec=spec, index=len(layers), host_pad=host_pad, signed_in=signed)
            layers.append(q)
            scales[s.output] = (q.out_scale, not relu)
        elif s.op in ("maxpool", "avgpool", "gap", "flatten"):
            scales[s.output] = ins[0]
        elif s.op in ("relu", "clip"):
            if s.op == "clip":
                a["hi_int"] = min(fxp.act_max, int(round(a["hi"] / ins[0][0])))
            scales[s.output] = (ins[0][0], False)
        elif s.op == "add":
            relu = a["act"] is not None
            clip = cal.clip(s.output, rule, relu)
            if relu and a["act"] != "relu":
                clip = min(clip, float(a["act"]))
            s_out = clip / (fxp.act_max if relu else z - 1)
            a["mults"] = [_host_multiplier(si / s_out) for si, _ in ins]
            scales[s.output] = (s_out, not relu)
        elif s.op == "concat":
            s_out = max(si for si, _ in ins)
            a["mults"] = [_host_multiplier(si / s_out) for si, _ in ins]
            scales[s.output] = (s_out, any(sg for _, sg in ins))
        else:
            raise AssertionError(s.op)
    return QuantGraph(graph.name, steps, graph.input, out, tuple(calib.shape[1:]), layers,
                      scales, fxp, rule)


def _shapes(steps, graph_input, input_shape: tuple) -> dict:
    """Every tensor's shape without an image through the graph: (C, H, W), or (features,)
    after a flatten or a linear layer."""
    shapes = {graph_input: tuple(input_shape)}

    def window(shape, k, s, p, what):
        c, h, w = shape
        oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        if oh < 1 or ow < 1:
            raise ValueError(f"{what}: a {k}x{k} window does not fit its {h}x{w} input")
        return c, oh, ow

    for st in steps:
        a, ins = st.attrs, [shapes[t] for t in st.inputs]
        x = ins[0]
        if st.op == "layer" and a["kind"] == "fc":
            if len(x) == 3 and x[1:] != (1, 1):
                raise ValueError(f"layer {st.name!r}: a Linear / MatMul on a {x} tensor "
                                 "(only on N x features: flatten first)")
            if int(np.prod(x)) != a["weight"].shape[1]:
                raise ValueError(f"layer {st.name!r}: {int(np.prod(x))} inputs, but its "
                                 f"weights take {a['weight'].shape[1]}")
            y = (a["weight"].shape[0],)
        elif st.op == "layer":
            if len(x) != 3 or x[0] != a["weight"].shape[1] * a["groups"]:
                raise ValueError(f"layer {st.name!r}: input of shape {x}, but its weights "
                                 f"take {a['weight'].shape[1] * a['groups']} channels")
            y = window((a["weight"].shape[0], *x[1:]), a["k"], a["stride"], a["pad"], st.name)
            p = a["pool"]
            y = (y[0], y[1] // p, y[2] // p)
        elif st.op in ("maxpool", "avgpool"):
            y = window(x, a["k"], a["s"], a["pad"], st.name)
        elif st.op == "gap":
            y = (x[0], 1, 1)
        elif st.op == "flatten":
            y = (int(np.prod(x)),)
            if a.get("features", -1) not in (-1, y[0]):
                raise ValueError(f"{st.name}: a reshape to {a['features']} features of a "
                                 f"{x} tensor: only a flatten is supported")
        elif st.op == "add":
            if ins[0] != ins[1]:
                raise ValueError(f"{st.name}: adding shapes {ins[0]} and {ins[1]} (broadcast "
                                 "adds are not supported)")
            y = x
        elif st.op == "concat":
            if any(len(i) != 3 or i[1:] != x[1:] for i in ins):
                raise ValueError(f"{st.name}: concatenating shapes {ins}")
            y = (sum(i[0] for i in ins), *x[1:])
        else:  # relu, clip
            y = x
        shapes[st.output] = y
    return shapes


def layer_shapes(graph: FloatGraph, input_shape: tuple | None = None) -> list[ConvLayer]:
    """The layers the blocks would run, from the graph alone (no calibration: the padding
    stays in the layer, where ``quantize`` moves a signed input's padding to the host)."""
    steps, _ = fuse(graph)
    shapes = _shapes(steps, graph.input, input_shape or graph.input_shape)
    return [_spec(s, shapes, 0) for s in steps if s.op == "layer"]


def _spec(s: Node, shapes: dict, host_pad: int) -> ConvLayer:
    a = s.attrs
    x = shapes[s.inputs[0]]
    c, h, w = x if a["kind"] == "conv" else (int(np.prod(x)), 1, 1)
    return ConvLayer(s.name, c, a["weight"].shape[0], h + 2 * host_pad, w + 2 * host_pad,
                     k=a["k"], stride=a["stride"], pad=a["pad"] - host_pad,
                     relu=a["act"] is not None, pool=a["pool"], kind=a["kind"],
                     groups=a["groups"])


# --- integer execution -----------------------------------------------------------------------
def _rescale(x: torch.Tensor, mult: int) -> torch.Tensor:
    return (x * mult + (1 << (HOST_FRAC_BITS - 1))) >> HOST_FRAC_BITS


def quantize_input(qg: QuantGraph, x: torch.Tensor) -> torch.Tensor:
    scale, signed = qg.scales[qg.input]
    lo, hi = (-(qg.zero_point - 1), qg.zero_point - 1) if signed else (0, qg.fxp.act_max)
    return torch.round(x.double() / scale).clamp(lo, hi).long()


@torch.no_grad()
def int_forward(qg: QuantGraph, x: torch.Tensor, layer_inputs: list | None = None):
    """The whole graph in integers on float images ``x`` [N, C, H, W]: returns the output's
    integers (logits = these times ``qg.scales[qg.output][0]``). ``layer_inputs``, when a
    list, receives every layer's integer input as the blocks see it ([N, C, H, W], FC inputs
    [N, C*H*W, 1, 1])."""
    fxp, z = qg.fxp, qg.zero_point
    env = {qg.input: quantize_input(qg, x)}
    for s in qg.steps:
        a = s.attrs
        xs = [env[t] for t in s.inputs]
        x0 = xs[0]
        if s.op == "layer":
            if a["kind"] == "fc":
                x0 = x0.reshape(x0.shape[0], -1, 1, 1)
            if a["signed_in"]:
                x0 = x0 + z
                if a["host_pad"]:
                    p = a["host_pad"]
                    x0 = F.pad(x0, (p, p, p, p), value=z)
            if layer_inputs is not None:
                layer_inputs.append(x0)
            y = layer_forward(x0, qg.layers[a["index"]])
        elif s.op == "maxpool":
            y = F.max_pool2d(x0.double(), a["k"], a["s"], a["pad"]).long()
        elif s.op in ("avgpool", "gap"):
            if s.op == "gap":
                y = x0.double().mean((2, 3), keepdim=True)
            else:
                y = F.avg_pool2d(x0.double(), a["k"], a["s"], a["pad"],
                                 count_include_pad=a["count_pad"])
            y = torch.round(y).long()  # means of integers: exact in float64, then rounded
        elif s.op == "flatten":
            y = x0.reshape(x0.shape[0], -1, 1, 1)
        elif s.op == "relu":
            y = x0.clamp(min=0)
        elif s.op == "clip":
            y = x0.clamp(0, a["hi_int"])
        elif s.op in ("add", "concat"):
            parts = [_rescale(t, m) for t, m in zip(xs, a["mults"])]
            if s.op == "add":
                y = parts[0] + parts[1]
                relu = a["act"] is not None
            else:
                y = torch.cat(parts, 1)
                relu = not qg.scales[s.output][1]
            y = y.clamp(0, fxp.act_max) if relu else y.clamp(-z, z - 1)
        else:
            raise AssertionError(s.op)
        env[s.output] = y
    return env[qg.output]


def int_logits(qg: QuantGraph, x: torch.Tensor) -> torch.Tensor:
    """The integer graph's output as floats (integers times the output scale), [N, classes]."""
    y = int_forward(qg, x)
    return y.reshape(len(x), -1).double() * qg.scales[qg.output][0]


# --- getting a model -------------------------------------------------------------------------
@dataclass
class ImportedModel:
    graph: FloatGraph
    source: str  # what was read, for the report
    weights: str  # where the weights came from, for the report
    module: object = None  # the torch module where there is one (the float reference)


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _torch_module(model: str):
    """(module, source text) for a named network, a TorchScript / torch.export file or
    ``module:function``; None when ``model`` is none of these."""
    from zeroskip.models import zoo

    if model in zoo.MODELS:
        return zoo.build(model), f"the {model} architecture (models/zoo.py, torchvision's shapes)"
    p = Path(model)
    if p.suffix in (".pt", ".pth", ".pt2", ".ts", ".torchscript"):
        if not p.is_file():
            raise ValueError(f"--model {model!r}: no such file")
        if p.suffix == ".pt2":
            try:
                return _Exported(torch.export.load(str(p)).module()), \
                    f"torch.export file {model}"
            except Exception as e:
                raise ValueError(f"--model {model!r} is not a torch.export (.pt2) file: "
                                 f"{_first_line(e)}") from None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
                module = torch.jit.load(str(p), map_location="cpu").eval()
            return module, f"TorchScript file {model}"
        except Exception as e:
            raise ValueError(f"--model {model!r} is not a TorchScript file "
                             f"(torch.jit.script/trace(...).save): {_first_line(e)}") from None
    mod_name, sep, fn_name = model.partition(":")
    if not sep:
        return None
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        hint = ""
        if mod_name.split(".")[0] == "torchvision" and fn_name in zoo.MODELS:
            hint = (f" (torchvision does not install beside the pinned torch; --model "
                    f"{fn_name} is the same architecture)")
        raise ValueError(f"--model {model!r}: cannot import {fn_name!r} from {mod_name!r}: "
                         f"{_first_line(e)}{hint}") from None
    try:
        module = fn()
    except Exception as e:
        raise ValueError(f"--model {model!r}: {fn_name}() failed: {_first_line(e)}") from None
    if not isinstance(module, torch.nn.Module):
        raise ValueError(f"--model {model!r}: {fn_name}() returned a {type(module).__name__}, "
                         "not a torch.nn.Module")
    return module.eval(), f"{model}()"


class ImagesOutOfRange(ValueError):
    """More images asked for than there are calibration images (``available``)."""

    def __init__(self, message: str, available: int):
        super().__init__(message)
        self.available = available


class _Exported(torch.nn.Module):
    """A ``torch.export`` program's module for the ONNX exporter, which switches modules to
    eval mode: the program is already in it and refuses ``train()``."""

    def __init__(self, program_module):
        super().__init__()
        self.program = program_module

    def forward(self, x):
        return self.program(x)

    def train(self, mode: bool = True):
        return self


def _load_weights(module, path: str) -> None:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--weights {path!r}: no such file")
    try:
        sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"--weights {path!r} is not a torch state dict: {_first_line(e)}") \
            from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    try:
        module.load_state_dict(sd, strict=True)
    except Exception as e:
        raise ValueError(f"--weights {path!r} does not fit the model: {_first_line(e)}") \
            from None


def torch_to_onnx(module, input_shape: tuple):
    """Export a torch module to an in-memory ONNX model (TorchScript-based exporter, eval)."""
    import onnx

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, (torch.zeros(1, *input_shape),), buf, dynamo=False,
                              opset_version=17, do_constant_folding=True,
                              input_names=["input"], output_names=["output"])
        except Exception as e:
            raise ValueError(f"the model does not export to ONNX: {_first_line(e)}") from None
    return onnx.load_from_string(buf.getvalue())


def load_model(model: str, weights: str | None = None,
               input_shape: tuple | None = None) -> ImportedModel:
    """Any of the ways in, as a float graph (with the torch module where there is one)."""
    from zeroskip.models import onnx_import, zoo

    name = Path(model.partition(":")[2] or model).stem if ":" in model else Path(model).stem
    if model.endswith(".onnx"):
        if weights:
            raise ValueError("--weights applies to PyTorch models; an ONNX file has its own")
        proto = onnx_import.load_model_proto(model)
        return ImportedModel(onnx_import.from_onnx(proto, name), f"ONNX file {model}",
                             "the ONNX file's weights")
    got = _torch_module(model)
    if got is None:
        raise ValueError(f"--model {model!r} is not a file (.onnx, .pt, .pt2), a named model "
                         f"({', '.join(zoo.MODELS)}) or module:function")
    module, source = got
    if weights:
        _load_weights(module, weights)
        wtext = f"weights from {weights}"
    elif model in zoo.MODELS:
        wtext = (f"seeded random weights (torchvision's initialisation, seed {zoo.SEED}; "
                 "no --weights given)")
    else:
        wtext = "the model's own weights"
    if input_shape is None:
        if model not in zoo.MODELS:
            raise ValueError(f"--model {model!r}: give --input-size C,H,W or --calib (a "
                             "PyTorch model does not say its input size)")
        input_shape = zoo.INPUT_SIZE
    proto = torch_to_onnx(module, input_shape)
    graph = onnx_import.from_onnx(proto, name)
    return ImportedModel(graph, source, wtext, module)


# --- calibration images ----------------------------------------------------------------------
def parse_floats(text: str | None, option: str, n: int | None = None) -> list[float] | None:
    if text is None:
        return None
    try:
        vals = [float(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{option} takes comma-separated numbers, not {text!r}") from None
    if not vals or (n is not None and len(vals) not in (1, n)):
        raise ValueError(f"{option} takes 1{f' or {n}' if n else ''} numbers, not {text!r}")
    return vals


def parse_input_size(text: str | None) -> tuple | None:
    """``C,H,W`` (or ``CxHxW``), or ``H,W`` / ``H`` for 3-channel images."""
    vals = parse_floats(text, "--input-size")
    if vals is None:
        return None
    if len(vals) > 3 or any(v < 1 or v != int(v) for v in vals):
        raise ValueError(f"--input-size takes C,H,W (positive integers), not {text!r}")
    vals = [int(v) for v in vals]
    return tuple([3] + vals * 2 if len(vals) == 1 else [3] + vals if len(vals) == 2 else vals)


def load_calib(path: str, input_shape: tuple | None, mean=None, std=None) -> torch.Tensor:
    """Float images [N, C, H, W] from an .npy / .npz array or a folder of PNG / JPEG files
    (resized to ``input_shape``, scaled to [0, 1], then ``(x - mean) / std``)."""
    p = Path(path)
    if p.is_dir():
        if input_shape is None:
            raise ValueError("--calib with a folder of images needs --input-size C,H,W")
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in (".png", ".jpg", ".jpeg"))
        if not files:
            raise ValueError(f"--calib {path!r}: no .png / .jpg / .jpeg files in the folder")
        from PIL import Image

        c, h, w = input_shape
        imgs = []
        for f in files:
            try:
                im = Image.open(f).convert("RGB" if c == 3 else "L").resize((w, h),
                                                                            Image.BILINEAR)
            except Exception as e:
                raise ValueError(f"--calib: {f.name} is not a readable image: "
                                 f"{_first_line(e)}") from None
            a = np.asarray(im, np.float32) / 255.0
            imgs.append(a.transpose(2, 0, 1) if a.ndim == 3 else a[None])
        x = np.stack(imgs)
        mean = np.asarray(mean if mean else [0.0], np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(std if std else [1.0], np.float32).reshape(1, -1, 1, 1)
        return torch.from_numpy((x - mean) / std)
    if not p.is_file():
        raise ValueError(f"--calib {path!r}: no such file or folder")
    if mean or std:
        raise ValueError("--mean/--std apply to a folder of images; normalise an array "
                         "before saving it")
    try:
        data = np.load(str(p), allow_pickle=False)
    except Exception as e:
        raise ValueError(f"--calib {path!r} is not an .npy / .npz array: {_first_line(e)}") \
            from None
    if isinstance(data, np.lib.npyio.NpzFile):
        keys = list(data.keys())
        key = next((k for k in ("images", "x") if k in keys), keys[0] if len(keys) == 1 else None)
        if key is None:
            raise ValueError(f"--calib {path!r} holds arrays {', '.join(keys) or '(none)'}; "
                             "name the images 'images' or 'x', or save one array")
        data = data[key]
    if data.dtype.kind != "f":
        raise ValueError(f"--calib {path!r} has dtype {data.dtype}; float images "
                         "(float32 / float64, normalised as the model expects) are needed")
    if data.ndim != 4 or len(data) == 0:
        raise ValueError(f"--calib {path!r} has shape {tuple(data.shape)}; N x C x H x W "
                         "images are needed")
    if input_shape is not None and tuple(data.shape[1:]) != tuple(input_shape):
        raise ValueError(f"--calib {path!r} has images of shape {tuple(data.shape[1:])}; "
                         f"the model takes {tuple(input_shape)}")
    if not np.isfinite(data).all():
        raise ValueError(f"--calib {path!r} has NaN or infinite values")
    return torch.from_numpy(np.ascontiguousarray(data, np.float32))


def seeded_images(shape: tuple, n: int = DEFAULT_CALIB_IMAGES, seed: int = SEED) -> torch.Tensor:
    """Stand-in images without ``--calib``: N(0, 1) (as a normalised image), seeded."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g)


# --- the workload ----------------------------------------------------------------------------
def load_workload(model: str, weights: str | None = None, calib: str | None = None,
                  input_size: str | None = None, mean: str | None = None,
                  std: str | None = None, images: int = 1, rule: str = "kl"):
    """``sim.workload.Workload`` of an imported model: layer shapes, quantised layers and the
    integer inputs of every layer for ``images`` images, with notes saying what ran where."""
    from zeroskip.sim.workload import Workload

    shape = parse_input_size(input_size)
    means, stds = parse_floats(mean, "--mean", 3), parse_floats(std, "--std", 3)
    x = None
    if calib is not None and Path(calib).is_file():
        x = load_calib(calib, shape, means, stds)
        shape = shape or tuple(x.shape[1:])
    imported = load_model(model, weights, shape)
    g = imported.graph
    file_shape = tuple(g.input_shape)
    if all(d is not None for d in file_shape):
        if shape is not None and tuple(shape) != file_shape:
            raise ValueError(f"the model takes {file_shape} images, not {tuple(shape)}")
        shape = file_shape
    elif shape is None:
        raise ValueError("the model's input size is not fixed in the file: give --input-size "
                         "C,H,W or --calib")
    g.input_shape = tuple(shape)
    if calib is None:
        x = seeded_images(shape, max(DEFAULT_CALIB_IMAGES, images))
        ctext = (f"no --calib: {len(x)} seeded N(0,1) images (seed {SEED}) stand in for "
                 "calibration and input images")
    else:
        x = x if x is not None else load_calib(calib, shape, means, stds)
        ctext = f"{len(x)} calibration image(s) from {calib}"
    if not 1 <= images <= len(x):
        raise ImagesOutOfRange(f"--images must be in 1..{len(x)} (the calibration images), "
                               f"not {images}", len(x))
    qg = quantize(g, x, rule)
    inputs: list[torch.Tensor] = []
    int_forward(qg, x[:images], inputs)
    specs = [q.spec for q in qg.layers]
    where = qg.where()
    notes = g.notes + [f"weights: {imported.weights}", f"activations: {ctext}; the first {images} "
             "simulated",
             f"on the blocks: {len(specs)} layers ({', '.join(where['blocks'])})",
             "on the host, in integers, between layers: " + (", ".join(where["host"]) or
                                                              "nothing")]
    grouped = [s.attrs["spec"] for s in qg.steps if s.op == "layer" and s.attrs["groups"] > 1]
    if grouped:
        notes.append(
            f"grouped / depthwise convs ({', '.join(s.name for s in grouped)}): every block "
            "runs each group as a conv of its own, one after another (no block has a "
            f"grouped mode); {sum(s.macs for s in grouped):,} MACs, the real count (no "
            "zero weights between the groups), with the MAC units a small group leaves idle "
            "in the layer's cycles and utilisation")
    signed = [s.attrs["spec"].name for s in qg.steps if s.op == "layer" and s.attrs["signed_in"]]
    if signed:
        notes.append(f"signed inputs ({', '.join(signed)}): the host adds "
                     f"{qg.zero_point} (and pads with it where the layer pads), the bias "
                     "absorbs the offset, so the "
                     "blocks see unsigned activations (exact)")
    desc = (f"{g.name}: {imported.source}, {imported.weights}, int{qg.fxp.act_bits} with "
            f"'{rule}' clipping; {ctext}, {images} simulated")
    wl = Workload(g.name, specs, desc, quant=qg.layers, real_inputs=inputs, notes=notes)
    wl.graph = qg
    wl.calib = x
    wl.imported = imported
    return wl
