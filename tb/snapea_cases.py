"""SnaPEA RTL cases: a layer, its input and (Th, n) parameters -> the case dict the cocotb
testbench (``tb.snapea_tb``) checks, with the integer torch reference and the simulator's
cycle prediction; ``verify_snapea_layer`` backs ``zeroskip verify snapea``."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from zeroskip.models.snapea import snapea_layer_forward
from zeroskip.sim.snapea import StepModel, layer_commands, run_layer
from tb.runner import run_rtl


def snapea_case(cfg, layer, x, params=None, terminate=True, ready_p=1.0, seed=0):
    """The case dict: inputs, reference outputs, and the simulator's cycle prediction (the
    step model and the vectorised count must agree first)."""
    spec = replace(layer.spec, pool=1)
    layer = replace(layer, spec=spec)
    ref = snapea_layer_forward(x, layer, params)
    expected = ref.reshape(spec.out_ch, -1).T.numpy()
    w, b, m, s = (t.numpy() for t in (layer.weight, layer.bias, layer.mult, layer.shift))
    xn = x.numpy()
    cmds = layer_commands(xn, spec, w, b, m, s, cfg, params, terminate)
    out, stats = StepModel(cfg).run(cmds, *expected.shape)
    assert (out == expected).all(), "step model != torch reference"
    run = run_layer(xn, spec, w, b, m, s, cfg, params, terminate)
    assert (run.outputs == expected).all(), "vectorised simulator != torch reference"
    assert run.cyc["cycles"] == stats["cycles"], "vectorised cycles != step model"
    assert int(run.t.macs.sum()) == stats["macs"]
    g = [spec.in_ch, spec.out_ch, spec.in_h, spec.in_w, spec.k, spec.stride, spec.pad]
    return {"x": xn, "w": w, "bias": b, "mult": m, "shift": s, "geometry": np.array(g),
            "relu": spec.relu, "terminate": terminate, "expected": expected,
            "spec_n": np.zeros(0, np.int64) if params is None else params.spec_n,
            "threshold": np.zeros(0, np.int64) if params is None else params.threshold,
            "cycles": stats["cycles"], "ready_p": ready_p, "seed": seed,
            "segments": run.cyc["segments"], "tiles": run.cyc["tiles"],
            # windows that stopped before their kernel's last segment (flags in the bank)
            "carried_stops": int((run.t.zeroed & (run.t.macs <= (
                -(-run.order.taps // cfg.max_taps) - 1)[None] * cfg.max_taps)).sum())}


def verify_snapea_layer(cfg, layer, x, build_dir) -> dict:
    """Exact mode on one layer (termination on for ReLU layers: the inputs are unsigned)."""
    case = snapea_case(cfg, layer, x, None, terminate=layer.spec.relu)
    run_rtl(cfg, "tb.snapea_tb", case, build_dir)
    return {"outputs": int(case["expected"].size), "cycles": int(case["cycles"])}
