"""cocotb testbench of ``NullHopBlock``: drives one layer's passes (commands, kernels,
compressed input words) through the top-level streams and checks that the output stream
equals the Python encoder's stream of the integer torch reference word for word (and, decoded,
the reference itself), and that the cycle count and every output word's cycle equal the
simulator's step model."""

import cocotb
import numpy as np

from zeroskip.hw.nullhop import nullhop_layouts
from zeroskip.hw.layouts import unpack
from zeroskip.sim.streams import handshake_patterns
from tb.runner import load_case
from tb.streams import StreamBench, start_clock_and_reset


def _rows(a):
    return [list(map(int, r)) for r in np.asarray(a).reshape(len(a), -1)]


@cocotb.test()
async def nullhop_layer(dut):
    cfg, case = load_case()
    lay = nullhop_layouts(cfg)
    cmds = [eval_cmd(c) for c in case["cmds"]]  # JSON strings of the command dicts
    weights = _rows(case["weights"]) if case["weights"].size else []
    words = [{"data": int(d), "first": int(f), "last": int(l)}
             for d, f, l in case["words"].reshape(-1, 3)]
    expected = case["expected"].reshape(-1, 3)
    pat = handshake_patterns(float(case["valid_p"]), float(case["ready_p"]), int(case["seed"]),
                             sources=("cmd", "weights", "act_in"), sinks=("act_out",))

    await start_clock_and_reset(dut)
    bench = StreamBench(dut, sources={
        "cmd": (lay.command, cmds, pat["cmd"]),
        "weights": (lay.weight_row, weights, pat["weights"]),
        "act_in": (lay.word, words, pat["act_in"]),
    }, sinks={"act_out": pat["act_out"]})
    n_out = len(expected)
    tr = await bench.run(lambda tr: len(tr["act_out"]) == n_out)

    got = []
    for _, bits in tr["act_out"]:
        w = unpack(lay.word, bits)
        got.append((int(w.data), int(w.first), int(w.last)))
    got = np.array(got, np.int64)
    bad = np.argwhere((got != expected).any(axis=1))
    assert bad.size == 0, (f"{len(bad)} of {n_out} output words differ from the encoder's "
                           f"stream of the reference; first at word {bad[0][0]}: RTL "
                           f"{tuple(got[bad[0][0]])}, expected {tuple(expected[bad[0][0]])}")
    first = tr["cmd"][0][0]
    cycles = tr["act_out"][-1][0] - first + 1
    dut._log.info("RTL took %d cycles; simulator predicted %d", cycles, int(case["cycles"]))
    assert cycles == int(case["cycles"]), (
        f"RTL took {cycles} cycles, the simulator predicted {int(case['cycles'])}")
    out_cycles = [c - first for c, _ in tr["act_out"]]
    assert out_cycles == case["out_cycles"].tolist(), \
        "output words left at other cycles than the step model's"


def eval_cmd(s):
    import json
    return json.loads(str(s))
