"""Property tests: for random layer shapes, densities, widths and configurations, each
block's vectorised count equals its step-per-cycle model, the step model's outputs equal the
integer torch reference, and stalls only add cycles. Every example prints its seed and case
on failure (hypothesis shows the falsifying example); the profile is set in conftest.py."""

from __future__ import annotations

import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from zeroskip.hw.config import CombinedConfig, FixedPointConfig, NullHopConfig, SystolicConfig
from zeroskip.hw.fixedpoint import requantize
from zeroskip.models import column_combining as cc
from zeroskip.models.reference import layer_forward
from zeroskip.models.workloads import ConvLayer, fc
from zeroskip.sim import combined as sc
from zeroskip.sim import nullhop as nh
from zeroskip.sim import systolic as ss
from zeroskip.sim.workload import LayerData
from tb.cases import gemm_case, random_layer
from tb.nullhop_cases import check_decodes_to

WIDTHS = [FixedPointConfig(), FixedPointConfig(act_bits=4, weight_bits=4, acc_bits=20),
          FixedPointConfig(act_bits=16, weight_bits=16, acc_bits=48),
          FixedPointConfig(act_bits=8, weight_bits=8, acc_bits=24)]


@st.composite
def conv_layers(draw, max_k=5, max_dim=12, max_ch=12):
    """A conv (or linear) layer the small configurations can run, its density and seed."""
    if draw(st.booleans()) and draw(st.booleans()):  # a quarter are linear layers
        spec = fc("f", draw(st.integers(1, 40)), draw(st.integers(1, 20)),
                  relu=draw(st.booleans()))
    else:
        k = draw(st.sampled_from([k for k in (1, 3, 5, 7) if k <= max_k]))
        stride = draw(st.sampled_from([1, 2, 4]))
        pad = draw(st.integers(0, k // 2))
        pool = draw(st.sampled_from([1, 2]))
        h_out = draw(st.integers(1, 6)) * pool
        w_out = draw(st.integers(1, 6)) * pool
        h = (h_out - 1) * stride + k - 2 * pad
        w = (w_out - 1) * stride + k - 2 * pad
        if min(h, w) < 1 or max(h, w) > max_dim:
            h, w, pad, stride, pool = k, k, 0, 1, 1
        spec = ConvLayer("c", draw(st.integers(1, max_ch)), draw(st.integers(1, max_ch)), h, w,
                         k=k, stride=stride, pad=pad, pool=pool, relu=draw(st.booleans())
                         if pool == 1 else True)
    return spec, draw(st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0])), draw(st.integers(0, 2**16))


def _data(layer, x):
    return LayerData(x.numpy(), layer.weight.numpy(), layer.bias.numpy(),
                     layer.mult.numpy(), layer.shift.numpy())


@st.composite
def nullhop_configs(draw):
    macs = draw(st.sampled_from([1, 2, 4, 8, 16]))
    m = draw(st.sampled_from([p for p in (1, 2, 4) if p <= macs]))
    return NullHopConfig(macs=macs, macs_per_channel=m, sm_bits=draw(st.sampled_from([4, 8, 16])),
                         kernel_depth=1024, acc_depth=draw(st.sampled_from([64, 256])),
                         max_dim=16, max_k=7, fxp=draw(st.sampled_from(WIDTHS)))


@settings(max_examples=150, deadline=None)
@given(cfg=nullhop_configs(), case=conv_layers(max_k=7), stall=st.booleans())
def test_nullhop_count_step_model_and_reference_agree(cfg, case, stall):
    spec, density, seed = case
    try:
        layer, x = random_layer(spec, seed, cfg.fxp, density, full_range=True)
        nh.plan_layer(spec, cfg)
    except ValueError:  # too wide for the accumulator, or a layer the block refuses
        assume(False)  # (the refusals have their own tests)
    d = _data(layer, x)
    cmds, weights, words, expected, plan, passes = nh.layer_beats(d, spec, cfg)
    outs, trace = nh.StepModel(cfg).run(cmds, weights, words, len(expected))
    assert trace["cycles"] == nh.layer_cycles(d, spec, cfg)
    check_decodes_to([o[0] for o in outs], [o[2] for o in outs], passes, spec, cfg,
                     layer_forward(x, layer).numpy())
    if stall:
        stalled, t2 = nh.StepModel(cfg).run(cmds, weights, words, len(expected), valid_p=0.6,
                                            ready_p=0.7, seed=seed)
        assert stalled == outs and t2["cycles"] >= trace["cycles"]
    assert np.array_equal(nh.layer_outputs(d, spec, cfg.fxp), layer_forward(x, layer).numpy())


def _layer_gemm(case, fxp):
    """A random layer as the arrays' GEMM (im2col rows x weight matrix) and its reference."""
    spec, density, seed = case
    try:
        layer, x = random_layer(spec, seed, fxp, density, full_range=True)
    except ValueError:  # too wide for the accumulator
        assume(False)
    return gemm_case(layer, x)


@st.composite
def array_configs(draw, cls=SystolicConfig, **extra):
    return cls(rows=draw(st.integers(1, 6)), cols=draw(st.integers(1, 6)),
               acc_depth=draw(st.sampled_from([1, 2, 3, 8, 32])),
               fxp=draw(st.sampled_from(WIDTHS)), **{k: draw(v) for k, v in extra.items()})


@settings(max_examples=400, deadline=None)
@given(cfg=array_configs(), case=conv_layers(), stall=st.booleans())
def test_systolic_count_step_model_and_reference_agree(cfg, case, stall):
    c = _layer_gemm(case, cfg.fxp)
    g = ss.Gemm(c["a"], c["w"], c["bias"], c["mult"], c["shift"], c["relu"])
    out, trace = ss.StepModel(cfg).run(g)
    assert np.array_equal(out, c["expected"] & cfg.fxp.act_max)
    assert trace["cycles"] == ss.layer_cycles(*g.shape, cfg)
    if stall:
        out2, t2 = ss.StepModel(cfg).run(g, valid_p=0.6, ready_p=0.5, seed=case[2])
        assert np.array_equal(out2, out) and t2["cycles"] >= trace["cycles"]


@settings(max_examples=300, deadline=None)
@given(cfg=array_configs(CombinedConfig, alpha=st.sampled_from([1, 2, 4, 8]),
                         gamma=st.sampled_from([0.0, 0.25, 0.5, 1.0]),
                         group_block=st.sampled_from([0, 2, 3])),
       case=conv_layers(), sparsity=st.sampled_from([0.0, 0.5, 0.8, 0.95]), stall=st.booleans())
def test_combined_count_step_model_and_reference_agree(cfg, case, sparsity, stall):
    c = _layer_gemm(case, cfg.fxp)
    packing = cc.prune_and_pack(c["w"], cfg.alpha, cfg.gamma, sparsity, cfg.group_block)
    g = sc.PackedGemm(c["a"], packing, c["bias"], c["mult"], c["shift"], c["relu"])
    want = requantize(c["a"] @ packing.dense() + c["bias"], c["mult"], c["shift"], cfg.fxp,
                      c["relu"]) & cfg.fxp.act_max
    out, trace = sc.CombinedStepModel(cfg).run(g)
    assert np.array_equal(out, want)
    assert trace["cycles"] == sc.layer_cycles(len(c["a"]), packing, cfg)
    if stall:
        out2, t2 = sc.CombinedStepModel(cfg).run(g, 0.6, 0.5, seed=case[2])
        assert np.array_equal(out2, out) and t2["cycles"] >= trace["cycles"]
