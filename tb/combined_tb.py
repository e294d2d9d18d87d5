"""cocotb testbench of ``CombinedBlock``: drives one packed layer through the top-level
streams (weights with their selects, ``alpha`` activation lanes per packed row), checks every
output against the integer torch reference on the pruned, conflict-free weights and the cycle
count (and the cycle of every output beat) against the simulator's step model."""

import cocotb
import numpy as np

from zeroskip.hw.layouts import combined_layouts, unpack_array
from zeroskip.sim.combined import PackedGemm, packing_from_arrays, pass_beats, plan_packed
from zeroskip.sim.streams import handshake_patterns
from tb.runner import load_case
from tb.streams import StreamBench, start_clock_and_reset


@cocotb.test()
async def combined_layer(dut):
    cfg, case = load_case()
    lay = combined_layouts(cfg)
    g = PackedGemm(case["a"], packing_from_arrays(case), case["bias"], case["mult"],
                   case["shift"], bool(case["relu"]))
    m, k, n = g.shape
    passes = plan_packed(m, g.packing, cfg)
    beats = [pass_beats(g, p, cfg) for p in passes]
    n_out = sum(p.count for p in passes if p.emit)
    pat = handshake_patterns(float(case["valid_p"]), float(case["ready_p"]), int(case["seed"]))

    await start_clock_and_reset(dut)
    bench = StreamBench(dut, sources={
        "cmd": (lay.command, [b[0] for b in beats], pat["cmd"]),
        "weights": (lay.weight_row, [r for b in beats for r in b[1]], pat["weights"]),
        "acts": (lay.act_vector, [v for b in beats for v in b[2]], pat["acts"]),
    }, sinks={"out": pat["out"]})
    tr = await bench.run(lambda tr: len(tr["out"]) == n_out)

    got = np.zeros((m, n), np.int64)
    beat = iter(tr["out"])
    for p in passes:
        if p.emit:
            for j in range(p.count):
                _, bits = next(beat)
                got[p.m0 + j, p.n0:p.n0 + p.width] = unpack_array(lay.out_vector, bits)[:p.width]
    expected = case["expected"] & cfg.fxp.act_max
    bad = np.argwhere(got != expected)
    assert bad.size == 0, (f"{len(bad)} of {got.size} outputs differ from the integer reference;"
                           f" first at (pixel, channel) {tuple(bad[0])}: RTL "
                           f"{got[tuple(bad[0])]}, reference {expected[tuple(bad[0])]}")

    first = tr["cmd"][0][0]
    cycles = tr["out"][-1][0] - first + 1
    dut._log.info("RTL took %d cycles; simulator predicted %d", cycles, int(case["cycles"]))
    assert cycles == int(case["cycles"]), (
        f"RTL took {cycles} cycles, the simulator predicted {int(case['cycles'])}")
    out_cycles = [c - first for c, _ in tr["out"]]
    assert out_cycles == case["out_cycles"].tolist(), \
        "output beats left at other cycles than the step model's"
