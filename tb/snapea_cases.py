"""SnaPEA RTL cases: a layer, its input and (Th, n) parameters -> the ``Case`` the cocotb
testbench (``tb.snapea_tb``) checks, with the integer torch reference and the simulator's
cycle prediction; ``verify_layer`` backs ``zeroskip verify snapea``."""

from __future__ import annotations

from dataclasses import replace

from zeroskip.hw.layouts import pack, snapea_layouts
from zeroskip.models.snapea import snapea_layer_forward
from zeroskip.sim.snapea import StepModel, layer_commands, run_layer
from tb.runner import run_rtl
from tb.scoreboard import Case


def snapea_case(cfg, layer, x, params=None, terminate=True, valid_p=1.0, ready_p=1.0,
                seed=0) -> Case:
    """The host driver's beats, the reference outputs, and the step model's cycle prediction
    under the same handshake patterns (input gaps with ``valid_p`` < 1, output backpressure
    with ``ready_p`` < 1): the total and the cycle of every output beat. Without stalls the
    step model and the vectorised count must agree first. ``extra`` counts the segments,
    column tiles, windows that stopped before their kernel's last segment (their flags
    kept in the bank) and the (window, kernel) pairs stopped by the exact check and by the
    prediction."""
    spec = replace(layer.spec, pool=1)
    layer = replace(layer, spec=spec)
    ref = snapea_layer_forward(x, layer, params)
    expected = ref.reshape(spec.out_ch, -1).T.numpy()
    w, b, m, s = (t.numpy() for t in (layer.weight, layer.bias, layer.mult, layer.shift))
    xn = x.numpy()
    cmds = layer_commands(xn, spec, w, b, m, s, cfg, params, terminate)
    out, stats = StepModel(cfg).run(cmds, *expected.shape, valid_p, ready_p, seed)
    assert (out == expected).all(), "step model != torch reference"
    run = run_layer(xn, spec, w, b, m, s, cfg, params, terminate)
    assert (run.outputs == expected).all(), "vectorised simulator != torch reference"
    if valid_p == ready_p == 1.0:
        assert run.cyc["cycles"] == stats["cycles"], "vectorised cycles != step model"
    assert int(run.t.macs.sum()) == stats["macs"]
    lay = snapea_layouts(cfg)
    inputs = {"cmd": [pack(lay.command, c.cmd) for c in cmds],
              "acts": [pack(lay.act, [int(v)]) for c in cmds for v in c.acts],
              "weights": [pack(lay.weight_row, r) for c in cmds for r in c.weights]}
    beats, masks = out_beats(lay.out_vector, expected & cfg.fxp.act_max, cmds,
                             cfg.fxp.act_bits)
    last_segment = (-(-run.order.taps // cfg.max_taps) - 1)[None] * cfg.max_taps
    return Case(inputs, {"out": beats}, masks={"out": masks}, cycles=int(stats["cycles"]),
                out_cycles={"out": stats["out_cycles"]}, valid_p=valid_p, ready_p=ready_p,
                seed=seed, extra={"segments": run.cyc["segments"], "tiles": run.cyc["tiles"],
                                  "carried_stops": int((run.t.zeroed
                                                        & (run.t.macs <= last_segment)).sum()),
                                  "exact_stops": int(run.t.exact.sum()),
                                  "predicted_stops": int(run.t.predicted.sum())})


def out_beats(layout, ref, cmds, act_bits) -> tuple[list[int], list[int]]:
    """The read-out beats of every command: beat ``j`` holds, in lane ``b * kernels + i``,
    output channel ``channel0 + i`` of the ``j``-th window of band ``b``; idle lanes are
    padding, left out of the mask."""
    beats, masks = [], []
    for c in cmds:
        if not c.cmd["readout"]:
            continue
        for j in range(c.windows):
            row = [int(ref[c.pixels[lane // c.kernels, j], c.channel0 + lane % c.kernels])
                   for lane in range(c.lanes_used)]
            beats.append(pack(layout, row + [0] * (layout.length - len(row))))
            masks.append((1 << (act_bits * len(row))) - 1)
    return beats, masks


def verify_layer(cfg, layer, x, build_dir) -> dict:
    """Exact mode on one layer (termination on for ReLU layers: the inputs are unsigned)."""
    case = snapea_case(cfg, layer, x, None, terminate=layer.spec.relu)
    run_rtl(cfg, "tb.snapea_tb", case, build_dir)
    return {"outputs": layer.spec.gemm[0] * layer.spec.out_ch, "cycles": case.cycles}
