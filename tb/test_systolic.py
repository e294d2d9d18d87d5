"""RTL regression of the dense systolic array: bit-exact against the integer torch
reference and cycle-exact against the simulator, for several array sizes and layers."""

import pytest

from zeroskip.hw.config import SYSTOLIC_PRESETS, FixedPointConfig, SystolicConfig
from zeroskip.models.workloads import ConvLayer, fc
from zeroskip.sim.systolic import Gemm, StepModel, layer_cycles
from tb.cases import assert_saturates_both_ends, gemm_case, random_layer
from tb.systolic_cases import verify_gemm

CONFIGS = {
    "2x2": SystolicConfig(rows=2, cols=2, acc_depth=16),
    "4x3": SystolicConfig(rows=4, cols=3, acc_depth=24),
    "8x8": SystolicConfig(rows=8, cols=8, acc_depth=64),
}

SHAPES = {
    # ragged everywhere: K=27, N=5, M=30, none a multiple of the array
    "conv3x3-ragged": ConvLayer("c", 3, 5, 6, 5, k=3, pad=1),
    "conv1x1": ConvLayer("c", 6, 4, 4, 4, k=1),
    "conv3x3-stride2": ConvLayer("c", 2, 7, 9, 9, k=3, stride=2),
    "fc-norelu": fc("f", 19, 6, relu=False),
    # passes of 2 pixels back to back: the partial-sum hazard gap
    "conv1x1-m2": ConvLayer("c", 5, 7, 1, 2, k=1),
    # 65 pixels: full chunks (count == acc_depth) and a last chunk of 1 (8x8) or 17 / 1
    # pixels, several K tiles and column tiles each
    "conv1x1-m65": ConvLayer("c", 9, 9, 5, 13, k=1),
}


def run_case(cfg, case, tmp_path, valid_p=1.0, ready_p=1.0, seed=0):
    g = Gemm(case["a"], case["w"], case["bias"], case["mult"], case["shift"], case["relu"])
    if valid_p == ready_p == 1.0:
        assert StepModel(cfg).run(g)[1]["cycles"] == layer_cycles(*g.shape, cfg)
    verify_gemm(cfg, case, tmp_path, valid_p, ready_p, seed)


@pytest.mark.rtl
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", CONFIGS)
def test_systolic_rtl_matches_reference_and_simulator(size, shape, tmp_path):
    cfg = CONFIGS[size]
    layer, x = random_layer(SHAPES[shape], seed=sum(map(ord, size + shape)), fxp=cfg.fxp)
    run_case(cfg, gemm_case(layer, x), tmp_path)


@pytest.mark.rtl
@pytest.mark.parametrize("size,shape", [("4x3", "conv3x3-ragged"), ("8x8", "conv3x3-ragged"),
                                        ("2x2", "conv1x1-m2"), ("2x2", "conv1x1-m65"),
                                        ("4x3", "fc-norelu")])
def test_systolic_rtl_stalls_keep_results_and_predicted_cycles(size, shape, tmp_path):
    """Idle input cycles and output backpressure: same outputs, and the step model still
    predicts every output beat's cycle (also with tiny passes, where the hazard gap acts)."""
    cfg = CONFIGS[size]
    layer, x = random_layer(SHAPES[shape], seed=7, fxp=cfg.fxp)
    run_case(cfg, gemm_case(layer, x), tmp_path, valid_p=0.7, ready_p=0.6, seed=3)


@pytest.mark.rtl
@pytest.mark.parametrize("layer_name,size", [("conv1", "4x3"), ("conv2", "8x8"),
                                             ("conv3", "8x8"), ("fc1", "8x8"), ("fc2", "4x3")])
def test_systolic_rtl_on_digits_layers(digits, layer_name, size, tmp_path):
    """Layers of the trained digits net with the real activations of a test image."""
    cfg = CONFIGS[size]
    idx = [l.spec.name for l in digits.layers].index(layer_name)
    x = digits.inputs[idx][0]
    run_case(cfg, gemm_case(digits.layers[idx], x), tmp_path)


WIDTHS = {
    "4bit-acc16": FixedPointConfig(act_bits=4, weight_bits=4, acc_bits=16),
    "8bit-acc24": FixedPointConfig(act_bits=8, weight_bits=8, acc_bits=24),
    "16bit-acc48": FixedPointConfig(act_bits=16, weight_bits=16, acc_bits=48),
}


@pytest.mark.rtl
@pytest.mark.parametrize("shape", ["conv3x3-ragged", "fc-norelu"])
@pytest.mark.parametrize("width", WIDTHS)
def test_systolic_rtl_other_widths_over_the_whole_output_range(width, shape, tmp_path):
    """Activations and weights other than 8-bit, another accumulator width, and outputs
    that span the whole range and saturate at both ends."""
    cfg = SystolicConfig(rows=4, cols=3, acc_depth=24, fxp=WIDTHS[width])
    # 24 outputs for the linear layer, so that both clip ends can be reached
    spec = fc("f", 19, 24, relu=False) if shape == "fc-norelu" else SHAPES[shape]
    layer, x = random_layer(spec, seed=sum(map(ord, width + shape)) + 1, fxp=cfg.fxp,
                            full_range=True)
    case = gemm_case(layer, x)
    assert_saturates_both_ends(case["expected"], cfg.fxp, layer.spec.relu)
    run_case(cfg, case, tmp_path)


@pytest.mark.rtl
def test_systolic_rtl_default_preset_on_a_small_layer(tmp_path):
    """The ``default`` preset as ``zeroskip gen systolic`` builds it (8x8, 256-row partial-sum
    memory) on a layer with several K and column tiles, outputs over the whole range."""
    cfg = SYSTOLIC_PRESETS["default"]
    layer, x = random_layer(ConvLayer("c", 5, 20, 7, 7, k=3, pad=1), seed=22, fxp=cfg.fxp,
                            full_range=True)
    run_case(cfg, gemm_case(layer, x), tmp_path)
