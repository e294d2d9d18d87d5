"""RTL regression of the AXI4-Stream top levels (``hw.axi.AxiTop``) with cocotbext-axi
sources and sinks: outputs bit-identical to the integer torch reference with random idle
cycles and backpressure, and, without either, the cycle count the simulator predicts plus
the wrapper's fixed ``AXI_LATENCY``. Also the Verilator lint of every block's top levels.

Each block adds a function ``(cfg, layer, x) -> (inputs, expected, masks, block_cycles)`` to
``STREAMS``: the payloads (integers) of each stream port, the expected output payloads from
the integer reference, the bits of each output payload that carry data, and the step model's
cycle count for the bare block with every input valid and every output ready.
"""

from __future__ import annotations

import numpy as np
import pytest

from zeroskip.hw.axi import AXI_LATENCY, axi_ports, generate_axi
from zeroskip.hw.config import (CombinedConfig, NullHopConfig, PRESETS, SnaPEAConfig,
                       SystolicConfig)
from zeroskip.hw.layouts import pack, systolic_layouts
from zeroskip.models.workloads import ConvLayer
from tb.cases import gemm_case, random_layer
from tb.runner import run_rtl


def systolic_streams(cfg, layer, x):
    from zeroskip.sim.systolic import Gemm, StepModel, pass_beats, plan_layer

    case = gemm_case(layer, x)
    g = Gemm(case["a"], case["w"], case["bias"], case["mult"], case["shift"], case["relu"])
    m, k, n = g.shape
    lay = systolic_layouts(cfg)
    passes = plan_layer(m, k, n, cfg)
    beats = [pass_beats(g, p, cfg) for p in passes]
    inputs = {
        "cmd": [pack(lay.command, b[0]) for b in beats],
        "weights": [pack(lay.weight_row, r) for b in beats for r in b[1]],
        "acts": [pack(lay.act_vector, v) for b in beats for v in b[2]],
    }
    ref = case["expected"] & cfg.fxp.act_max  # integer torch reference, [M, N]
    bits = cfg.fxp.act_bits
    expected, masks = [], []
    for p in passes:
        if not p.emit:
            continue
        nn = min(cfg.cols, n - p.n0)
        for j in range(p.count):
            row = [int(v) for v in ref[p.m0 + j, p.n0:p.n0 + nn]] + [0] * (cfg.cols - nn)
            expected.append(pack(lay.out_vector, row))
            masks.append((1 << (bits * nn)) - 1)
    _, trace = StepModel(cfg).run(g)
    return inputs, {"out": expected}, {"out": masks}, trace["cycles"]


def nullhop_streams(cfg, layer, x):
    """Compressed (SM + NZVL) words in and out: the expected output words are the encoder's
    stream of the integer reference, which decodes to the reference (checked here)."""
    from zeroskip.hw.nullhop import nullhop_layouts
    from zeroskip.models.reference import layer_forward
    from zeroskip.sim.nullhop import StepModel, layer_beats
    from zeroskip.sim.sparse_format import decode
    from zeroskip.sim.workload import LayerData

    lay = nullhop_layouts(cfg)
    spec = layer.spec
    data = LayerData(x.numpy(), layer.weight.numpy(), layer.bias.numpy(), layer.mult.numpy(),
                     layer.shift.numpy())
    cmds, weights, words, expected, plan, passes = layer_beats(data, spec, cfg)
    # the expected words, cut per pass and regrouped per output-channel group, decode to the
    # integer reference
    ref = layer_forward(x, layer).numpy() & cfg.fxp.act_max
    pieces = np.split(np.arange(len(expected)), (np.flatnonzero(expected.last) + 1)[:-1])
    groups = {}
    for p, idx in zip([p for p in passes if p.emit], pieces):
        groups.setdefault(p.group, []).append(idx)
    ho, wo = spec.out_h // spec.pool, spec.out_w // spec.pool
    for g, idxs in groups.items():
        got = decode(expected.data[np.concatenate(idxs)], (cfg.macs, ho, wo), cfg.sm_bits,
                     cfg.macs, cfg.fxp.act_bits)
        want = ref[g * cfg.macs:(g + 1) * cfg.macs]
        assert (got[:len(want)] == want).all(), f"channel group {g}: stream != reference"
    inputs = {"cmd": [pack(lay.command, c) for c in cmds],
              "weights": [pack(lay.weight_row, list(map(int, w))) for w in weights],
              "act_in": [pack(lay.word, w) for w in words]}
    out = [pack(lay.word, {"data": int(d), "first": int(f), "last": int(l)})
           for d, f, l in zip(expected.data, expected.first, expected.last)]
    _, trace = StepModel(cfg).run(cmds, weights, words, len(out))
    full = (1 << lay.word.size) - 1
    return inputs, {"act_out": out}, {"act_out": [full] * len(out)}, trace["cycles"]


def snapea_streams(cfg, layer, x):
    """Exact mode (no prediction): with ReLU the block stops a window once its sum can only
    fall, which the reference's ReLU makes invisible."""
    from dataclasses import replace

    from zeroskip.hw.layouts import snapea_layouts
    from zeroskip.models.snapea import snapea_layer_forward
    from zeroskip.sim.snapea import StepModel, layer_commands

    lay = snapea_layouts(cfg)
    spec = replace(layer.spec, pool=1)
    layer = replace(layer, spec=spec)
    ref = snapea_layer_forward(x, layer, None).reshape(spec.out_ch, -1).T.numpy()
    ref = ref & cfg.fxp.act_max
    w, b, m, s = (t.numpy() for t in (layer.weight, layer.bias, layer.mult, layer.shift))
    cmds = layer_commands(x.numpy(), spec, w, b, m, s, cfg, None, spec.relu)
    inputs = {"cmd": [pack(lay.command, c.cmd) for c in cmds],
              "acts": [pack(lay.act, [int(v)]) for c in cmds for v in c.acts],
              "weights": [pack(lay.weight_row, r) for c in cmds for r in c.weights]}
    bits = cfg.fxp.act_bits
    expected, masks = [], []
    for c in (c for c in cmds if c.cmd["readout"]):
        for j in range(c.windows):
            row = [int(v) for v in ref[c.pixels[j], c.channel0:c.channel0 + c.lanes_used]]
            expected.append(pack(lay.out_vector, row + [0] * (lay.out_vector.length - len(row))))
            masks.append((1 << (bits * c.lanes_used)) - 1)
    _, stats = StepModel(cfg).run(cmds, *ref.shape)
    return inputs, {"out": expected}, {"out": masks}, stats["cycles"]


def combined_streams(cfg, layer, x):
    """The layer pruned and packed (alpha, gamma of the config); the reference is the plain
    integer convolution on the pruned, conflict-free weights."""
    from zeroskip.hw.layouts import combined_layouts
    from zeroskip.models import column_combining as cc
    from dataclasses import replace

    import torch

    from zeroskip.sim.combined import CombinedStepModel, PackedGemm, pass_beats, plan_packed

    packing = cc.prune_and_pack(layer.weight_matrix.numpy(), cfg.alpha, cfg.gamma, 0.6)
    # the layer with the packing's pruned, conflict-free weights
    w = packing.dense().T.reshape(tuple(layer.weight.shape))
    pruned = replace(layer, weight=torch.from_numpy(np.ascontiguousarray(w)).long())
    case = gemm_case(pruned, x)
    g = PackedGemm(case["a"], packing, case["bias"], case["mult"], case["shift"], case["relu"])
    m, k, n = g.shape
    lay = combined_layouts(cfg)
    passes = plan_packed(m, packing, cfg)
    beats = [pass_beats(g, p, cfg) for p in passes]
    inputs = {"cmd": [pack(lay.command, b[0]) for b in beats],
              "weights": [pack(lay.weight_row, r) for b in beats for r in b[1]],
              "acts": [pack(lay.act_vector, v) for b in beats for v in b[2]]}
    ref = case["expected"] & cfg.fxp.act_max
    bits = cfg.fxp.act_bits
    expected, masks = [], []
    for p in passes:
        if p.emit:
            for j in range(p.count):
                row = [int(v) for v in ref[p.m0 + j, p.n0:p.n0 + p.width]]
                expected.append(pack(lay.out_vector, row + [0] * (cfg.cols - p.width)))
                masks.append((1 << (bits * p.width)) - 1)
    _, trace = CombinedStepModel(cfg).run(g)
    return inputs, {"out": expected}, {"out": masks}, trace["cycles"]


STREAMS = {"systolic": systolic_streams, "nullhop": nullhop_streams,
           "snapea": snapea_streams, "combined": combined_streams}

SMALL = {
    "systolic": SystolicConfig(rows=4, cols=3, acc_depth=24),
    "nullhop": NullHopConfig(macs=4, sm_bits=8, kernel_depth=256, acc_depth=128, max_dim=16,
                             max_k=5),
    "snapea": SnaPEAConfig(lanes=2, max_taps=512, act_depth=1024, max_windows=32),
    "combined": CombinedConfig(rows=4, cols=3, acc_depth=24, alpha=4, gamma=0.5),
}
SHAPE = ConvLayer("c", 3, 5, 6, 5, k=3, pad=1)  # K=27, N=5, M=30: ragged on every axis


def _hex(values) -> np.ndarray:
    return np.array([format(int(v), "x") for v in values])


def axi_case(cfg, layer, x, max_bytes, valid_p=1.0, ready_p=1.0, seed=0) -> dict:
    inputs, expected, masks, block_cycles = STREAMS[cfg.block](cfg, layer, x)
    ports = axi_ports(cfg, max_bytes)
    single_beat = all(p.beats == 1 for p in ports)
    # the prediction holds for one beat per payload, no idle cycles and no backpressure
    cycles = block_cycles + AXI_LATENCY if single_beat and valid_p == ready_p == 1.0 else -1
    case = {"max_bytes": max_bytes, "valid_p": valid_p, "ready_p": ready_p, "seed": seed,
            "cycles": cycles}
    for name, vals in inputs.items():
        case[f"in__{name}"] = _hex(vals)
    for name, vals in expected.items():
        case[f"out__{name}"] = _hex(vals)
        case[f"mask__{name}"] = _hex(masks[name])
    return case


RUNS = {
    # id: (max_bytes, valid_p, ready_p, seed)
    "one-beat-no-stalls": (64, 1.0, 1.0, 0),
    "one-beat-backpressure": (64, 0.6, 0.5, 1),
    "two-byte-bus-backpressure": (2, 0.7, 0.4, 2),
}


@pytest.mark.rtl
@pytest.mark.parametrize("run", RUNS)
@pytest.mark.parametrize("block", STREAMS)
def test_axi_top_matches_reference(block, run, tmp_path):
    """Random tvalid gaps and tready backpressure never drop or duplicate a beat: outputs
    equal the integer reference; without stalls the cycle count is the simulator's."""
    cfg = SMALL[block]
    max_bytes, valid_p, ready_p, seed = RUNS[run]
    layer, x = random_layer(SHAPE, seed=11, fxp=cfg.fxp)
    case = axi_case(cfg, layer, x, max_bytes, valid_p, ready_p, seed)
    run_rtl(cfg, "tb.axi_tb", case, tmp_path,
            generator=lambda c, d: generate_axi(c, d, max_bytes))


@pytest.mark.rtl
@pytest.mark.parametrize("block", STREAMS)
def test_axi_top_on_digits_layer(block, digits, tmp_path):
    """The classifier of the trained digits net (signed outputs, no ReLU) with the real
    activations of a test image, an 8-byte bus and backpressure."""
    cfg = SMALL[block]
    idx = [l.spec.name for l in digits.layers].index("fc2")
    case = axi_case(cfg, digits.layers[idx], digits.inputs[idx][0], 8, 0.8, 0.7, 5)
    run_rtl(cfg, "tb.axi_tb", case, tmp_path, generator=lambda c, d: generate_axi(c, d, 8))


def _lint_configs():
    from zeroskip.hw.gen import RTL_TOPS

    for block in RTL_TOPS:
        yield pytest.param(block, "block", id=f"{block}-block")
        yield pytest.param(block, "axi", id=f"{block}-axi")


@pytest.mark.parametrize("block,top", list(_lint_configs()))
def test_generated_verilog_is_lint_clean(block, top, tmp_path):
    """``verilator --lint-only -Wall`` reports nothing beyond the waivers in hw/lint.py, for
    the default configuration of every block, bare and behind its AXI4-Stream top."""
    import shutil

    from zeroskip.hw.gen import generate
    from zeroskip.hw.lint import VERILATOR_HINT, lint

    if not shutil.which("verilator"):
        pytest.skip(VERILATOR_HINT)
    cfg = PRESETS[block]["default"]
    vpath = generate_axi(cfg, tmp_path) if top == "axi" else generate(cfg, tmp_path)
    issues = lint(vpath, vpath.stem)
    assert not issues, "\n".join(issues[:20])
