"""NullHop RTL cases: a layer and its input -> the ``Case`` the cocotb testbench
(``tb.nullhop_tb``) checks: the commands, kernels and compressed input words of every pass,
the expected output words (the Python encoder's stream of the integer torch reference, checked
to decode back to it) and the step model's cycle prediction; ``verify_layer`` backs
``zeroskip verify nullhop``."""

from __future__ import annotations

import numpy as np

from zeroskip.hw.layouts import nullhop_layouts, pack, unpack
from zeroskip.models.reference import layer_forward
from zeroskip.sim.nullhop import StepModel, layer_beats, layer_cycles
from zeroskip.sim.sparse_format import decode
from zeroskip.sim.workload import LayerData
from tb.cases import step_prediction
from tb.runner import run_rtl
from tb.scoreboard import Case


def describe_word(cfg):
    lay = nullhop_layouts(cfg)

    def describe(port, bits):
        w = unpack(lay.word, bits)
        return f"(data {int(w.data):#x}, first {int(w.first)}, last {int(w.last)})"
    return describe


def layer_data(layer, x) -> LayerData:
    return LayerData(x.numpy(), layer.weight.numpy(), layer.bias.numpy(),
                     layer.mult.numpy(), layer.shift.numpy())


def check_decodes_to(data, last, passes, spec, cfg, ref) -> None:
    """The output words (``data``, ``last`` per word) cut at each emitting pass's last word,
    regrouped per output-channel group and decoded, equal ``ref`` [N, H, W] (the integer
    reference after pooling); padding channels decode to zero. A group holds ``cfg.lanes``
    channels: with ``macs_per_channel`` M > 1 the M MACs of a lane share one channel, so a
    group is ``macs / M`` channels, not ``macs``."""
    data, ref = np.asarray(data), ref & cfg.fxp.act_max
    pieces = np.split(np.arange(len(data)), (np.flatnonzero(last) + 1)[:-1])
    per_group = {}
    for p, idx in zip([p for p in passes if p.emit], pieces):
        per_group.setdefault(p.group, []).append(idx)
    ho, wo = spec.out_h // spec.pool, spec.out_w // spec.pool
    for g, idxs in per_group.items():
        got = decode(data[np.concatenate(idxs)], (cfg.lanes, ho, wo), cfg.sm_bits, cfg.lanes,
                     cfg.fxp.act_bits)
        want = ref[g * cfg.lanes:(g + 1) * cfg.lanes]
        assert (got[:len(want)] == want).all(), f"channel group {g} decodes to something else"
        assert not got[len(want):].any(), f"channel group {g}: padding channels are not zero"


def nullhop_case(cfg, layer, x, valid_p=1.0, ready_p=1.0, seed=0) -> Case:
    spec = layer.spec
    d = layer_data(layer, x)
    cmds, weights, words, expected, plan, passes = layer_beats(d, spec, cfg)
    check_decodes_to(expected.data, expected.last, passes, spec, cfg,
                     layer_forward(x, layer).numpy())
    outs, trace = StepModel(cfg).run(cmds, weights, words, len(expected), valid_p, ready_p, seed)
    assert [o[0] for o in outs] == expected.data.astype(np.int64).tolist(), "step model != encoder"
    if valid_p == ready_p == 1.0:
        assert trace["cycles"] == layer_cycles(d, spec, cfg), "step model != vectorised count"
    lay = nullhop_layouts(cfg)
    inputs = {"cmd": [pack(lay.command, c) for c in cmds],
              "weights": [pack(lay.weight_row, list(map(int, w))) for w in weights],
              "act_in": [pack(lay.word, w) for w in words]}
    out = [pack(lay.word, {"data": int(v), "first": int(f), "last": int(l)})
           for v, f, l in zip(expected.data, expected.first, expected.last)]
    return Case(inputs, {"act_out": out}, valid_p=valid_p, ready_p=ready_p, seed=seed,
                **step_prediction(trace, "act_out"))


def verify_layer(cfg, layer, x, build_dir) -> dict:
    """One layer's compressed output stream word for word, total and per-word cycles."""
    case = nullhop_case(cfg, layer, x)
    run_rtl(cfg, "tb.nullhop_tb", case, build_dir)
    spec = layer.spec
    return {"outputs": spec.out_ch * (spec.out_h // spec.pool) * (spec.out_w // spec.pool),
            "cycles": case.cycles}
