"""RTL regression of the SnaPEA early-termination block: bit-exact against the integer torch
reference (with the cut-off rule) and cycle-exact against the simulator, in exact and
predictive mode, for several lane counts, on layers of the trained digits net and random
layers."""

from dataclasses import replace

import numpy as np
import pytest

from zeroskip.hw.config import SNAPEA_PRESETS, FixedPointConfig, SnaPEAConfig
from zeroskip.models.snapea import LayerParams, snapea_layer_forward
from zeroskip.models.workloads import ConvLayer, fc
from tb.cases import random_layer
from tb.runner import run_rtl
from tb.snapea_cases import snapea_case

CONFIGS = {
    "1lane": SnaPEAConfig(lanes=1, max_taps=64, act_depth=256, max_windows=16),
    "2lanes-chk3": SnaPEAConfig(lanes=2, max_taps=512, act_depth=1024, max_windows=32,
                                check_every=3),
    "3lanes": SnaPEAConfig(lanes=3, max_taps=512, act_depth=2048, max_windows=64,
                           act_bank_depth=512),
    "4lanes": SnaPEAConfig(lanes=4, max_taps=512, act_depth=2048, max_windows=64),
    # short weight buffers (kernels in several segments, partial sums and stop flags kept in
    # the banks) and a small input buffer (rows split into column tiles)
    "3lanes-segments": SnaPEAConfig(lanes=3, max_taps=7, act_depth=60, max_windows=6,
                                    check_every=2, act_bank_depth=16),
}


def some_params(layer, seed, frac=0.25):
    """Predictive parameters: speculate on a quarter of each kernel, threshold at a random
    fraction of the bias spread (enough to trigger predictions both ways)."""
    rng = np.random.default_rng(seed)
    n = layer.spec.out_ch
    k = layer.weight[0].numel()
    spread = int(layer.bias.abs().max()) + 1
    return LayerParams(np.full(n, max(1, int(k * frac))), rng.integers(-spread, spread, n))


def channels(layer, count):
    """The first ``count`` output channels of a layer (keeps RTL cases to a few k cycles)."""
    spec = replace(layer.spec, out_ch=count)
    return replace(layer, spec=spec, weight=layer.weight[:count], bias=layer.bias[:count],
                   mult=layer.mult[:count], shift=layer.shift[:count])


DIGITS = [("conv2", "2lanes-chk3", 3, "exact"), ("conv2", "4lanes", 4, "predictive"),
          ("conv3", "3lanes", 3, "exact"), ("conv3", "4lanes", 5, "predictive"),
          ("fc1", "4lanes", 8, "exact"), ("fc1", "3lanes", 6, "predictive")]


@pytest.mark.rtl
@pytest.mark.parametrize("layer_name,size,nch,mode", DIGITS,
                         ids=[f"{a}-{b}-{d}" for a, b, _, d in DIGITS])
def test_snapea_rtl_on_digits_layers(digits, layer_name, size, nch, mode, tmp_path):
    """Layers of the trained digits net (first output channels) with the real activations of
    a test image."""
    cfg = CONFIGS[size]
    idx = [l.spec.name for l in digits.layers].index(layer_name)
    layer = channels(digits.layers[idx], nch)
    x = digits.inputs[idx][0]
    params = some_params(layer, idx) if mode == "predictive" else None
    run_rtl(cfg, "tb.snapea_tb", snapea_case(cfg, layer, x, params), tmp_path)


RANDOM = {
    # ragged: 3 kernels on 2 lanes, bands of 2 rows (act_depth 256), stride 2, padding
    "conv-stride2-bands": (ConvLayer("c", 2, 3, 9, 8, k=3, stride=2, pad=1), "1lane"),
    "conv-negbias-chk3": (ConvLayer("c", 3, 3, 6, 5, k=3, pad=1), "2lanes-chk3"),
    "fc-norelu-dense": (fc("f", 20, 4, relu=False), "3lanes"),
    "conv-segments-tiles": (ConvLayer("c", 4, 4, 7, 8, k=3, pad=1), "3lanes-segments"),
    "fc-segments": (fc("f", 30, 5), "3lanes-segments"),
    # tiles one and two windows wide (every window of the first ends its row, or every
    # second): the window sequencer's row wrap from the start and on every move
    "conv-one-column": (ConvLayer("c", 2, 3, 5, 1, k=1), "2lanes-chk3"),
    "conv-two-columns": (ConvLayer("c", 2, 3, 5, 2, k=3, pad=1), "1lane"),
    # two kernels on four lanes: the idle lanes take the other band of the rows
    "conv-bands": (ConvLayer("c", 2, 2, 6, 4, k=3, pad=1), "4lanes"),
}


@pytest.mark.rtl
@pytest.mark.parametrize("name", RANDOM)
def test_snapea_rtl_random_layers(name, tmp_path):
    spec, size = RANDOM[name]
    cfg = CONFIGS[size]
    layer, x = random_layer(spec, seed=5, fxp=cfg.fxp, density=0.5)
    run_rtl(cfg, "tb.snapea_tb", snapea_case(cfg, layer, x, terminate=spec.relu), tmp_path)


@pytest.mark.rtl
def test_snapea_rtl_segments_in_predictive_mode(tmp_path):
    """Predictions that fall in a later segment than the first, windows that stopped in an
    earlier segment (their flag is in the bank), several column tiles."""
    cfg = CONFIGS["3lanes-segments"]
    layer, x = random_layer(ConvLayer("c", 3, 4, 6, 7, k=3, pad=1), seed=11, density=0.6)
    params = some_params(layer, 3, frac=0.15)
    case = snapea_case(cfg, layer, x, params)
    assert case.extra["segments"] > 1 and case.extra["tiles"] > 1
    assert case.extra["carried_stops"] > 0
    run_rtl(cfg, "tb.snapea_tb", case, tmp_path)


@pytest.mark.rtl
def test_snapea_rtl_output_backpressure_keeps_results(tmp_path):
    """Output backpressure: results, the total cycles and every output beat's cycle as the
    step model predicts them under the same ready pattern."""
    cfg = CONFIGS["3lanes"]
    layer, x = random_layer(ConvLayer("c", 2, 4, 5, 5, k=3, pad=1), seed=8, density=0.5)
    case = snapea_case(cfg, layer, x, some_params(layer, 1), ready_p=0.5, seed=4)
    assert case.cycles > 0 and len(case.out_cycles["out"]) == len(case.outputs["out"])
    run_rtl(cfg, "tb.snapea_tb", case, tmp_path)


STALLS = [("conv-bands", 0.6, 0.7, 2), ("conv-segments-tiles", 0.7, 0.5, 6)]


@pytest.mark.rtl
@pytest.mark.parametrize("name,valid_p,ready_p,seed", STALLS, ids=[s[0] for s in STALLS])
def test_snapea_rtl_cycles_under_input_gaps_and_backpressure(name, valid_p, ready_p, seed,
                                                             tmp_path):
    """Random gaps on every input stream and random output backpressure: outputs, total
    cycles and the cycle of every output beat as the step model predicts them."""
    spec, size = RANDOM[name]
    cfg = CONFIGS[size]
    layer, x = random_layer(spec, seed=5, fxp=cfg.fxp, density=0.5)
    case = snapea_case(cfg, layer, x, some_params(layer, seed), valid_p=valid_p,
                       ready_p=ready_p, seed=seed)
    run_rtl(cfg, "tb.snapea_tb", case, tmp_path)


WIDTHS = {
    "4bit-acc24": FixedPointConfig(act_bits=4, weight_bits=4, acc_bits=24),
    "16bit-acc48": FixedPointConfig(act_bits=16, weight_bits=16, acc_bits=48),
}
WIDTH_SHAPES = {
    # ReLU, terminating (exact, then predictive), rows in two bands on four lanes
    "conv-relu": ConvLayer("c", 3, 2, 6, 5, k=3, pad=1),
    # no ReLU: dense, clipped at both signed ends
    "fc-norelu": fc("f", 24, 12, relu=False),
}


def reaches_both_ends(expected, fxp, relu: bool) -> bool:
    lo, hi = (0, fxp.act_max) if relu else (-(fxp.act_max + 1) // 2, fxp.act_max // 2)
    return bool((expected == lo).any() and (expected == hi).any())


# a layer without ReLU runs dense (no prediction to make), so it runs once
WIDTH_RUNS = [("conv-relu", "exact"), ("conv-relu", "predictive"), ("fc-norelu", "exact")]


@pytest.mark.rtl
@pytest.mark.parametrize("shape,mode", WIDTH_RUNS, ids=[f"{a}-{b}" for a, b in WIDTH_RUNS])
@pytest.mark.parametrize("width", WIDTHS)
def test_snapea_rtl_other_widths_over_the_whole_output_range(width, shape, mode, tmp_path):
    """Activations and weights of 4 and 16 bits, 24- and 48-bit accumulators, outputs that
    span the whole range and saturate at both clip ends (the ReLU layer's low end is also
    where early termination forces its outputs), in exact and predictive mode, with input
    gaps and output backpressure."""
    spec = WIDTH_SHAPES[shape]
    cfg = replace(CONFIGS["4lanes"], fxp=WIDTHS[width])
    layer, x = random_layer(spec, seed=sum(map(ord, width + shape)), fxp=cfg.fxp,
                            density=0.7, full_range=True)
    params = some_params(layer, 7) if mode == "predictive" else None
    case = snapea_case(cfg, layer, x, params, terminate=spec.relu, valid_p=0.8, ready_p=0.7,
                       seed=3)
    assert reaches_both_ends(snapea_layer_forward(x, layer, params).numpy(), cfg.fxp,
                             spec.relu)
    if spec.relu:
        assert case.extra["exact_stops" if params is None else "predicted_stops"] > 0
    run_rtl(cfg, "tb.snapea_tb", case, tmp_path)


@pytest.mark.rtl
def test_snapea_rtl_default_preset_on_a_small_layer(tmp_path):
    """The default preset (8 lanes, 512-tap weight buffers, the 32768-activation input buffer
    in two banks, 1024-window banks) as generated for the FPGA, on a small layer: four
    kernels on eight lanes (two bands), exact mode, input gaps and output backpressure."""
    cfg = SNAPEA_PRESETS["default"]
    layer, x = random_layer(ConvLayer("c", 3, 4, 6, 6, k=3, pad=1), seed=21, fxp=cfg.fxp,
                            density=0.6, full_range=True)
    case = snapea_case(cfg, layer, x, valid_p=0.8, ready_p=0.7, seed=9)
    assert case.extra["exact_stops"] > 0
    run_rtl(cfg, "tb.snapea_tb", case, tmp_path)
