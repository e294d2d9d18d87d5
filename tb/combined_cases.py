"""Cases for the column-combined array's RTL: a quantised layer with its weights replaced by
a packing's pruned, conflict-free weights, the integer torch reference on those weights and
the step model's cycle prediction; ``verify_layer`` for ``zeroskip verify``."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from zeroskip.hw.layouts import combined_layouts
from zeroskip.models import column_combining as cc
from zeroskip.sim.combined import (CombinedStepModel, PackedGemm, layer_cycles, pass_beats,
                                   plan_packed)
from tb.cases import gemm_case, gemm_stream_case
from tb.runner import run_rtl
from tb.scoreboard import Case


def pruned_layer(layer, packing: cc.Packing):
    """The QuantLayer with its weights replaced by the packing's conflict-free weights."""
    w = packing.dense().T.reshape(tuple(layer.weight.shape))
    return replace(layer, weight=torch.from_numpy(np.ascontiguousarray(w)).long())


def packed_case(cfg, layer, x, packing, valid_p=1.0, ready_p=1.0, seed=0) -> Case:
    """The ``Case`` of one packed layer; without stalls the step model's cycles must also
    equal the closed form."""
    case = gemm_case(pruned_layer(layer, packing), x)
    g = PackedGemm(case["a"], packing, case["bias"], case["mult"], case["shift"], case["relu"])
    c = gemm_stream_case(combined_layouts(cfg), g, plan_packed(g.shape[0], packing, cfg),
                         lambda p: pass_beats(g, p, cfg), lambda p: p.width,
                         CombinedStepModel(cfg), case["expected"], cfg.fxp, valid_p, ready_p,
                         seed)
    if valid_p == ready_p == 1.0 and c.cycles != layer_cycles(g.shape[0], packing, cfg):
        raise AssertionError("the step model's cycles differ from the vectorised count")
    return c


def verify_packed(cfg, layer, x, packing, build_dir, valid_p=1.0, ready_p=1.0,
                  seed=0) -> dict:
    """Run ``tb.combined_tb`` on one packed layer: RTL outputs must equal the integer torch
    reference on the pruned weights, RTL cycles (and each output beat's cycle) the step
    model's."""
    c = packed_case(cfg, layer, x, packing, valid_p, ready_p, seed)
    run_rtl(cfg, "tb.combined_tb", c, build_dir)
    return {"outputs": layer.spec.gemm[0] * layer.spec.out_ch, "cycles": c.cycles}


def verify_layer(cfg, layer, x, build_dir) -> dict:
    """``zeroskip verify combined``: alpha = 1 runs the dense weights; alpha > 1 the layer of
    the jointly optimised net (``joint_optimize(alpha, gamma, group_block)``, as
    ``zeroskip sim combined``) on the given input activations."""
    if cfg.alpha == 1:
        packing = cc.pack(layer.weight_matrix.numpy(), 1, 0.0)
    else:
        res = cc.joint_optimize(cfg.alpha, cfg.gamma, cfg.group_block)
        layers = cc.joint_quant_layers(res, fxp=cfg.fxp)
        idx = [q.spec.name for q in layers].index(layer.spec.name)
        layer = layers[idx]
        packing = cc.joint_packings(res, [layer])[0]
    return verify_packed(cfg, layer, x, packing, build_dir)
