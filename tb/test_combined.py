"""RTL regression of the column-combined array: packed layers of the trained digits net (and
random layers) are bit-exact against the integer torch reference run on the pruned,
conflict-free weights, and cycle-exact against the simulator, for several alpha, gamma and
array sizes; alpha = 1 is the dense array cycle for cycle."""

import pytest

from zeroskip.hw.config import COMBINED_PRESETS, CombinedConfig, FixedPointConfig
from zeroskip.models import column_combining as cc
from zeroskip.models.workloads import ConvLayer
from zeroskip.sim import systolic
from tb.cases import assert_saturates_both_ends, gemm_case, random_layer
from tb.combined_cases import pruned_layer, verify_packed


def run_case(cfg, layer, x, packing, tmp_path, valid_p=1.0, ready_p=1.0, seed=0):
    return verify_packed(cfg, layer, x, packing, tmp_path, valid_p, ready_p, seed)


def digits_layer(digits, name):
    idx = [l.spec.name for l in digits.layers].index(name)
    return digits.layers[idx], digits.inputs[idx][0]


# (layer, rows x cols, alpha, gamma, grouping block, sparsity): magnitude-pruned to the
# sparsity (None: target_sparsity(alpha)) and packed
DIGITS_CASES = {
    "conv1-4x4-a4-g0.5": ("conv1", 4, 4, 4, 0.5, 0, None),
    "conv2-8x8-a8-g0.5": ("conv2", 8, 8, 8, 0.5, 0, None),
    "conv3-8x8-a8-g0.25": ("conv3", 8, 8, 8, 0.25, 0, None),
    "conv3-4x4-a2-g0.1-s0.6": ("conv3", 4, 4, 2, 0.1, 0, 0.6),
    "fc1-4x3-a4-g0.5": ("fc1", 4, 3, 4, 0.5, 0, None),
    "fc2-4x4-a8-g1.0": ("fc2", 4, 4, 8, 1.0, 0, None),
    "conv2-4x4-a4-g0.5-block4": ("conv2", 4, 4, 4, 0.5, 4, None),
}


@pytest.mark.rtl
@pytest.mark.parametrize("case_id", DIGITS_CASES)
def test_combined_rtl_packed_digits_layers_match_reference_and_simulator(digits, case_id,
                                                                       tmp_path):
    name, rows, cols, alpha, gamma, block, sparsity = DIGITS_CASES[case_id]
    layer, x = digits_layer(digits, name)
    cfg = CombinedConfig(rows=rows, cols=cols, acc_depth=64, alpha=alpha, gamma=gamma,
                         group_block=block)
    packing = cc.prune_and_pack(layer.weight_matrix.numpy(), alpha, gamma, sparsity, block)
    assert packing.packed_columns < layer.spec.gemm[1]
    run_case(cfg, layer, x, packing, tmp_path)


@pytest.mark.rtl
@pytest.mark.parametrize("name", ["conv3", "fc1"])
def test_combined_rtl_on_jointly_optimised_digits_layers(name, tmp_path):
    """The retrained, packed net of ``zeroskip combine --alpha 8 --gamma 0.5`` on the array,
    with its own real activations."""
    from zeroskip.models import digits as d

    res = cc.joint_optimize(8, 0.5)
    layers = cc.joint_quant_layers(res)
    packings = cc.joint_packings(res, layers)
    data = d.load_data()
    inputs = d.layer_inputs(layers, d.sample_images(data, 1))
    idx = [l.spec.name for l in layers].index(name)
    cfg = CombinedConfig(rows=8, cols=8, acc_depth=64, alpha=8, gamma=0.5)
    run_case(cfg, layers[idx], inputs[idx][0], packings[idx], tmp_path)


@pytest.mark.rtl
def test_combined_rtl_alpha1_is_the_dense_array(tmp_path):
    """alpha = 1: identity packing, the dense block's outputs and cycles."""
    cfg = CombinedConfig(rows=4, cols=3, acc_depth=24, alpha=1)
    layer, x = random_layer(ConvLayer("c", 3, 5, 6, 5, k=3, pad=1), seed=5, fxp=cfg.fxp)
    packing = cc.pack(layer.weight_matrix.numpy(), 1, 0.0)
    res = run_case(cfg, layer, x, packing, tmp_path)
    m, k, n = layer.spec.gemm
    assert res["cycles"] == systolic.layer_cycles(m, k, n, cfg.dense())


@pytest.mark.rtl
def test_combined_rtl_stalls_keep_results_and_predicted_cycles(tmp_path):
    """Idle input cycles and output backpressure: same outputs, every output beat's cycle
    still predicted by the step model."""
    cfg = CombinedConfig(rows=4, cols=3, acc_depth=24, alpha=4, gamma=0.5)
    layer, x = random_layer(ConvLayer("c", 3, 5, 6, 5, k=3, pad=1), seed=7, fxp=cfg.fxp)
    packing = cc.prune_and_pack(layer.weight_matrix.numpy(), 4, 0.5, sparsity=0.6)
    run_case(cfg, layer, x, packing, tmp_path, valid_p=0.7, ready_p=0.6, seed=3)


# (layer, acc_depth): passes back to back over several packed K tiles and column tiles
BACK_TO_BACK = {
    "m2": (ConvLayer("c", 9, 7, 1, 2, k=1), 24),  # passes of 2 pixels: the hazard gap
    # 65 pixels: four chunks of count == acc_depth, then a pass of 1 pixel
    "m65": (ConvLayer("c", 9, 9, 5, 13, k=1), 16),
}


@pytest.mark.rtl
@pytest.mark.parametrize("stalls", [False, True], ids=["streaming", "stalls"])
@pytest.mark.parametrize("shape", BACK_TO_BACK)
def test_combined_rtl_overlapped_passes_keep_results_and_predicted_cycles(shape, stalls,
                                                                         tmp_path):
    """Tiny passes (1 and 2 pixels), full chunks and several K and column tiles in a row, so
    consecutive passes overlap on the two banks: outputs, total cycles and every output
    beat's cycle as the step model predicts, with and without stalls."""
    spec, depth = BACK_TO_BACK[shape]
    cfg = CombinedConfig(rows=2, cols=3, acc_depth=depth, alpha=4, gamma=0.5)
    layer, x = random_layer(spec, seed=11, fxp=cfg.fxp)
    packing = cc.prune_and_pack(layer.weight_matrix.numpy(), 4, 0.5, sparsity=0.5)
    assert packing.tiles(cfg.rows, cfg.cols) > 3
    run_case(cfg, layer, x, packing, tmp_path, *((0.7, 0.6, 4) if stalls else ()))


WIDTHS = {
    "4bit-acc16": FixedPointConfig(act_bits=4, weight_bits=4, acc_bits=16),
    "8bit-acc24": FixedPointConfig(act_bits=8, weight_bits=8, acc_bits=24),
    "16bit-acc48": FixedPointConfig(act_bits=16, weight_bits=16, acc_bits=48),
}


@pytest.mark.rtl
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "norelu"])
@pytest.mark.parametrize("width", WIDTHS)
def test_combined_rtl_other_widths_over_the_whole_output_range(width, relu, tmp_path):
    """Activations, weights and accumulators other than 8/8/32 bits on a packed layer whose
    outputs span the whole range and saturate at both ends (0 and the top with ReLU, both
    signed ends without)."""
    cfg = CombinedConfig(rows=4, cols=3, acc_depth=24, alpha=4, gamma=0.5, fxp=WIDTHS[width])
    spec = ConvLayer("c", 3, 6, 6, 5, k=3, pad=1, relu=relu)
    layer, x = random_layer(spec, seed=sum(map(ord, width)) + relu + 10, fxp=cfg.fxp,
                            full_range=True)
    packing = cc.prune_and_pack(layer.weight_matrix.numpy(), 4, 0.5, sparsity=0.6)
    expected = gemm_case(pruned_layer(layer, packing), x)["expected"]
    assert_saturates_both_ends(expected, cfg.fxp, relu)
    run_case(cfg, layer, x, packing, tmp_path)


@pytest.mark.rtl
def test_combined_rtl_default_preset_on_a_small_layer(tmp_path):
    """The ``default`` preset as ``zeroskip gen combined`` builds it (8x8, 256-row partial-sum
    memory, alpha 8) on a layer that crosses K and column tiles."""
    cfg = COMBINED_PRESETS["default"]
    layer, x = random_layer(ConvLayer("c", 8, 20, 7, 7, k=3, pad=1), seed=21, fxp=cfg.fxp,
                            full_range=True)
    packing = cc.prune_and_pack(layer.weight_matrix.numpy(), cfg.alpha, cfg.gamma)
    assert packing.tiles(cfg.rows, cfg.cols) > 2
    run_case(cfg, layer, x, packing, tmp_path)
