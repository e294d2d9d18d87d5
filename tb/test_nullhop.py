"""RTL regression of the NullHop block: its compressed output stream equals the Python
encoder's stream of the integer torch reference word for word (so, decoded, it equals the
reference), and its cycle count equals the simulator's, for several MAC counts, kernel
sizes, strides, densities, pooling, band/tile splits, and layers of the trained digits net
fed with real activations."""

import dataclasses

import pytest

from zeroskip.hw.config import NULLHOP_PRESETS, FixedPointConfig, NullHopConfig
from zeroskip.models.workloads import ConvLayer, fc
from tb.cases import random_layer
from tb.nullhop_cases import nullhop_case
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
    # kernels up to 11x11: a 4-channel slice of 11x11 kernels fills the kernel memory, so
    # layers of more than 4 input channels cross input-channel tiles
    "4mac-k11": NullHopConfig(macs=4, sm_bits=8, kernel_depth=512, acc_depth=128, max_dim=24,
                              max_k=11),
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


# every kernel size and stride the block takes (docs/nullhop.md), with padding
KERNELS_AND_STRIDES = {
    "k1-s2": ConvLayer("c", 6, 3, 7, 7, k=1, stride=2),
    "k3-s4-pad1": ConvLayer("c", 6, 3, 9, 9, k=3, stride=4, pad=1),
    "k5-s8-pad2": ConvLayer("c", 2, 3, 17, 17, k=5, stride=8, pad=2),
    "k7-s2-pad3": ConvLayer("c", 6, 3, 11, 11, k=7, stride=2, pad=3),
    "k11-s4-pad2": ConvLayer("c", 3, 4, 19, 19, k=11, stride=4, pad=2),
}


def run_case(cfg, layer, x, tmp_path, valid_p=1.0, ready_p=1.0, seed=0):
    run_rtl(cfg, "tb.nullhop_tb", nullhop_case(cfg, layer, x, valid_p, ready_p, seed), tmp_path)


def run_random(size, shape, tmp_path, layer_seed=None, **stalls):
    """A random layer of ``SHAPES[shape]`` (seeded by the test's ids unless given) on
    ``CONFIGS[size]``."""
    cfg = CONFIGS[size]
    spec, density = SHAPES[shape]
    seed = sum(map(ord, size + shape)) if layer_seed is None else layer_seed
    layer, x = random_layer(spec, seed=seed, fxp=cfg.fxp, density=density)
    run_case(cfg, layer, x, tmp_path, **stalls)


@pytest.mark.rtl
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", ["4mac-sm8", "8mac-sm16"])
def test_nullhop_rtl_matches_reference_and_simulator(size, shape, tmp_path):
    run_random(size, shape, tmp_path)


@pytest.mark.rtl
@pytest.mark.parametrize("shape", ["conv3x3-pool", "conv3x3-ragged", "fc-norelu"])
@pytest.mark.parametrize("size", ["16mac-sm8", "2mac-small"])
def test_nullhop_rtl_wide_pixels_bands_and_tiles(size, shape, tmp_path):
    """``macs > sm_bits`` (a pixel spans SM words) and buffers so small that layers split
    into several row bands and input-channel tiles (partial sums kept across tiles)."""
    run_random(size, shape, tmp_path, layer_seed=11)


@pytest.mark.rtl
@pytest.mark.parametrize("shape", ["conv3x3-pool", "conv3x3-stride2", "conv5x5-sparse",
                                   "conv1x1-dense", "fc-norelu"])
@pytest.mark.parametrize("size", ["16mac-M2", "16mac-M4-sm4"])
def test_nullhop_rtl_macs_sharing_a_channel(size, shape, tmp_path):
    """``macs_per_channel`` > 1: up to M non-zeros of one pixel are multiplied at once and
    their products summed into one partial sum per output channel."""
    run_random(size, shape, tmp_path)


@pytest.mark.rtl
def test_nullhop_rtl_stalls_keep_results_and_predicted_cycles(tmp_path):
    """Idle input cycles and output backpressure: same stream, and the step model still
    predicts every output word's cycle."""
    run_random("8mac-sm16", "conv3x3-pool", tmp_path, layer_seed=5, valid_p=0.7, ready_p=0.6,
               seed=3)


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


@pytest.mark.rtl
@pytest.mark.parametrize("shape", KERNELS_AND_STRIDES)
def test_nullhop_rtl_every_kernel_size_and_stride(shape, tmp_path):
    """Kernels 1 to 11, strides 1 to 8, with padding, several input-channel tiles where the
    layer has more than 4 input channels, and outputs over the whole range (both clip ends)."""
    cfg = CONFIGS["4mac-k11"]
    spec = KERNELS_AND_STRIDES[shape]
    layer, x = random_layer(spec, seed=sum(map(ord, shape)), fxp=cfg.fxp, density=0.7,
                            full_range=True)
    run_case(cfg, layer, x, tmp_path)


@pytest.mark.rtl
@pytest.mark.parametrize("fxp", [FixedPointConfig(act_bits=4, weight_bits=4, acc_bits=20),
                                 FixedPointConfig(act_bits=16, weight_bits=16, acc_bits=48)],
                         ids=["4bit-acc20", "16bit-acc48"])
def test_nullhop_rtl_other_widths_over_the_whole_output_range(fxp, tmp_path):
    """Activations and weights other than 8-bit (16-bit values are wider than an 8-bit SM
    word), another accumulator width, and outputs over the whole range, both ends clipped."""
    cfg = dataclasses.replace(CONFIGS["4mac-sm8"], fxp=fxp)
    spec = ConvLayer("c", 3, 5, 6, 6, k=3, pad=1, pool=2)
    layer, x = random_layer(spec, seed=fxp.act_bits, fxp=fxp, density=0.6, full_range=True)
    run_case(cfg, layer, x, tmp_path)


@pytest.mark.rtl
def test_nullhop_rtl_default_preset_on_a_small_layer(tmp_path):
    """The ``default`` preset as ``zeroskip gen nullhop`` builds it (8 MACs, 16-bit SM words,
    ``max_dim`` 256 counters) on a map wider than any other case's (40 pixels, three SM words
    a row), more output channels than MACs and pooling, outputs over the whole range."""
    cfg = NULLHOP_PRESETS["default"]
    spec = ConvLayer("c", 3, 10, 6, 40, k=3, pad=1, pool=2)
    layer, x = random_layer(spec, seed=40, fxp=cfg.fxp, density=0.5, full_range=True)
    run_case(cfg, layer, x, tmp_path)
