"""RTL regression of the NullHop block: its compressed output stream equals the Python
encoder's stream of the integer torch reference word for word (so, decoded, it equals the
reference), and its cycle count equals the simulator's, for several MAC counts, kernel
sizes, strides, densities, pooling, band/tile splits, and layers of the trained digits net
fed with real activations."""

import json
from dataclasses import replace

import numpy as np
import pytest

from zeroskip.hw.config import NullHopConfig
from zeroskip.models.reference import layer_forward
from zeroskip.models.workloads import ConvLayer, fc
from zeroskip.sim.nullhop import StepModel, layer_beats, layer_cycles
from zeroskip.sim.sparse_format import decode
from zeroskip.sim.workload import LayerData
from tb.cases import random_layer
from tb.runner import run_rtl

# psum_bank_depth < acc_depth: the partial-sum memory in several banks
CONFIGS = {
    "4mac-sm8": NullHopConfig(macs=4, sm_bits=8, kernel_depth=256, acc_depth=128, max_dim=16,
                              max_k=5, psum_bank_depth=32),
    "8mac-sm16": NullHopConfig(macs=8, sm_bits=16, kernel_depth=512, acc_depth=128,
                               max_dim=16, max_k=5),
    # macs > sm_bits: one output pixel fills two SM words
    "16mac-sm8": NullHopConfig(macs=16, sm_bits=8, kernel_depth=512, acc_depth=64,
                               max_dim=16, max_k=3),
    # M MACs share an output channel: groups of up to M non-zeros of one pixel
    "16mac-M2": NullHopConfig(macs=16, macs_per_channel=2, sm_bits=16, kernel_depth=512,
                              acc_depth=128, max_dim=16, max_k=5, psum_bank_depth=64),
    "16mac-M4-sm4": NullHopConfig(macs=16, macs_per_channel=4, sm_bits=4, kernel_depth=512,
                                  acc_depth=128, max_dim=16, max_k=5),
    # tiny buffers: several bands and input-channel tiles per layer
    "2mac-small": NullHopConfig(macs=2, sm_bits=4, kernel_depth=36, acc_depth=16, max_dim=16,
                                max_k=3, psum_bank_depth=8),
}

SHAPES = {
    "conv3x3-ragged": (ConvLayer("c", 3, 5, 6, 5, k=3, pad=1), 0.5),
    "conv3x3-pool": (ConvLayer("c", 6, 6, 6, 6, k=3, pad=1, pool=2), 0.3),
    "conv3x3-stride2": (ConvLayer("c", 2, 7, 9, 9, k=3, stride=2), 0.6),
    "conv5x5-sparse": (ConvLayer("c", 3, 4, 6, 6, k=5, pad=2), 0.15),
    "conv1x1-dense": (ConvLayer("c", 6, 4, 4, 4, k=1), 1.0),
    "fc-norelu": (fc("f", 19, 6, relu=False), 0.5),
    "all-zero": (ConvLayer("c", 3, 5, 4, 5, k=3, pad=1), 0.0),
}


def layer_data(layer, x) -> LayerData:
    return LayerData(x.numpy(), layer.weight.numpy(), layer.bias.numpy(),
                     layer.mult.numpy(), layer.shift.numpy())


def run_case(cfg, layer, x, tmp_path, valid_p=1.0, ready_p=1.0, seed=0):
    spec = layer.spec
    d = layer_data(layer, x)
    cmds, weights, words, expected, plan, passes = layer_beats(d, spec, cfg)
    # the expected stream, decoded per output slice, is the torch reference
    ref = layer_forward(x, layer).numpy()
    outs, trace = StepModel(cfg).run(cmds, weights, words, len(expected), valid_p, ready_p, seed)
    assert [o[0] for o in outs] == expected.data.astype(np.int64).tolist(), "step model != encoder"
    _check_decodes_to_reference(expected, passes, spec, cfg, ref)
    if valid_p == ready_p == 1.0:
        assert trace["cycles"] == layer_cycles(d, spec, cfg)
    first = trace["cmd"][0]
    case = {
        "cmds": np.array([json.dumps(c) for c in cmds]),
        "weights": np.array(weights, np.int64),
        "words": np.array([[w["data"], w["first"], w["last"]] for w in words], np.int64),
        "expected": np.stack([expected.data.astype(np.int64), expected.first.astype(np.int64),
                              expected.last.astype(np.int64)], 1),
        "cycles": trace["cycles"], "out_cycles": [c - first for c in trace["act_out"]],
        "valid_p": valid_p, "ready_p": ready_p, "seed": seed,
    }
    run_rtl(cfg, "tb.nullhop_tb", case, tmp_path)


def _check_decodes_to_reference(expected, passes, spec, cfg, ref):
    """Cut the expected stream into passes, regroup per output slice, decode, compare."""
    from zeroskip.sim.sparse_format import Stream

    bounds = np.flatnonzero(expected.last) + 1
    pieces = np.split(np.arange(len(expected)), bounds[:-1])
    emits = [p for p in passes if p.emit]
    per_group = {}
    for p, idx in zip(emits, pieces):
        per_group.setdefault(p.group, []).append(idx)
    ho, wo = spec.out_h // spec.pool, spec.out_w // spec.pool
    for g, idxs in per_group.items():
        sel = np.concatenate(idxs)
        n0 = g * cfg.lanes
        got = decode(expected.data[sel], (cfg.lanes, ho, wo), cfg.sm_bits, cfg.lanes,
                     cfg.fxp.act_bits)
        want = ref[n0:n0 + cfg.lanes] & cfg.fxp.act_max
        assert (got[:len(want)] == want).all(), f"group {g} decodes to something else"
        assert not got[len(want):].any(), "padding channels are not zero"


@pytest.mark.rtl
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", ["4mac-sm8", "8mac-sm16"])
def test_nullhop_rtl_matches_reference_and_simulator(size, shape, tmp_path):
    cfg = CONFIGS[size]
    spec, density = SHAPES[shape]
    layer, x = random_layer(spec, seed=sum(map(ord, size + shape)), fxp=cfg.fxp,
                            density=density)
    run_case(cfg, layer, x, tmp_path)


@pytest.mark.rtl
@pytest.mark.parametrize("shape", ["conv3x3-pool", "conv3x3-ragged", "fc-norelu"])
@pytest.mark.parametrize("size", ["16mac-sm8", "2mac-small"])
def test_nullhop_rtl_wide_pixels_bands_and_tiles(size, shape, tmp_path):
    """``macs > sm_bits`` (a pixel spans SM words) and buffers so small that layers split
    into several row bands and input-channel tiles (partial sums kept across tiles)."""
    cfg = CONFIGS[size]
    spec, density = SHAPES[shape]
    layer, x = random_layer(spec, seed=11, fxp=cfg.fxp, density=density)
    run_case(cfg, layer, x, tmp_path)


@pytest.mark.rtl
@pytest.mark.parametrize("shape", ["conv3x3-pool", "conv3x3-stride2", "conv5x5-sparse",
                                   "conv1x1-dense", "fc-norelu"])
@pytest.mark.parametrize("size", ["16mac-M2", "16mac-M4-sm4"])
def test_nullhop_rtl_macs_sharing_a_channel(size, shape, tmp_path):
    """``macs_per_channel`` > 1: up to M non-zeros of one pixel are multiplied at once and
    their products summed into one partial sum per output channel."""
    cfg = CONFIGS[size]
    spec, density = SHAPES[shape]
    layer, x = random_layer(spec, seed=sum(map(ord, size + shape)), fxp=cfg.fxp,
                            density=density)
    run_case(cfg, layer, x, tmp_path)


@pytest.mark.rtl
def test_nullhop_rtl_stalls_keep_results_and_predicted_cycles(tmp_path):
    """Idle input cycles and output backpressure: same stream, and the step model still
    predicts every output word's cycle."""
    cfg = CONFIGS["8mac-sm16"]
    spec, density = SHAPES["conv3x3-pool"]
    layer, x = random_layer(spec, seed=5, fxp=cfg.fxp, density=density)
    run_case(cfg, layer, x, tmp_path, valid_p=0.7, ready_p=0.6, seed=3)


@pytest.mark.rtl
@pytest.mark.parametrize("layer_name,size", [("conv1", "4mac-sm8"), ("conv2", "8mac-sm16"),
                                             ("conv3", "8mac-sm16"), ("fc1", "16mac-sm8"),
                                             ("fc2", "4mac-sm8")])
def test_nullhop_rtl_on_digits_layers(digits, layer_name, size, tmp_path):
    """Layers of the trained digits net with the real activations of a test image."""
    cfg = CONFIGS[size]
    idx = [l.spec.name for l in digits.layers].index(layer_name)
    x = digits.inputs[idx][0]
    run_case(cfg, digits.layers[idx], x, tmp_path)
