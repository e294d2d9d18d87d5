"""Cases for the column-combined array's RTL: a quantised layer with its weights replaced by
a packing's pruned, conflict-free weights, the integer torch reference on those weights and
the step model's cycle prediction; ``verify_combined_layer`` for ``zeroskip verify``."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from zeroskip.models import column_combining as cc
from zeroskip.sim.combined import CombinedStepModel, PackedGemm, layer_cycles, packing_arrays
from tb.cases import gemm_case
from tb.runner import run_rtl


def pruned_layer(layer, packing: cc.Packing):
    """The QuantLayer with its weights replaced by the packing's conflict-free weights."""
    w = packing.dense().T.reshape(tuple(layer.weight.shape))
    return replace(layer, weight=torch.from_numpy(np.ascontiguousarray(w)).long())


def verify_packed(cfg, layer, x, packing, build_dir, valid_p=1.0, ready_p=1.0,
                  seed=0) -> dict:
    """Run ``tb.combined_tb`` on one packed layer: RTL outputs must equal the integer torch
    reference on the pruned weights, RTL cycles (and each output beat's cycle) the step
    model's, which must itself match the reference and, without stalls, the closed form."""
    case = gemm_case(pruned_layer(layer, packing), x)
    g = PackedGemm(case["a"], packing, case["bias"], case["mult"], case["shift"], case["relu"])
    outputs, trace = CombinedStepModel(cfg).run(g, valid_p, ready_p, seed)
    if not (outputs == case["expected"] & cfg.fxp.act_max).all():
        raise AssertionError("the step model's outputs differ from the integer reference")
    if valid_p == ready_p == 1.0 and trace["cycles"] != layer_cycles(g.shape[0], packing, cfg):
        raise AssertionError("the step model's cycles differ from the vectorised count")
    first = trace["cmd"][0]
    case = dict(case, **packing_arrays(packing), cycles=trace["cycles"],
                out_cycles=[c - first for c in trace["out"]], valid_p=valid_p,
                ready_p=ready_p, seed=seed)
    run_rtl(cfg, "tb.combined_tb", case, build_dir)
    return {"outputs": int(case["expected"].size), "cycles": int(trace["cycles"]),
            "trace": trace}


def verify_combined_layer(cfg, layer, x, build_dir) -> dict:
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
    res = verify_packed(cfg, layer, x, packing, build_dir)
    return {"outputs": res["outputs"], "cycles": res["cycles"]}
