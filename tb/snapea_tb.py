"""cocotb testbench of ``SnaPEABlock``: drives one layer through the top-level streams with
the host driver's beats (``sim.snapea.layer_commands``), checks every output against the
integer torch reference (SnaPEA cut-off rule included) and the cycle count against the
simulator."""

import cocotb
import numpy as np

from zeroskip.hw.layouts import snapea_layouts, unpack_array
from zeroskip.models.snapea import LayerParams
from zeroskip.models.workloads import ConvLayer
from zeroskip.sim.snapea import layer_commands
from zeroskip.sim.streams import handshake_patterns
from tb.runner import load_case
from tb.streams import StreamBench, start_clock_and_reset


def case_layer(case):
    spec = ConvLayer("rtl", *[int(v) for v in case["geometry"][:7]], relu=bool(case["relu"]))
    params = None
    if case["spec_n"].size:
        params = LayerParams(case["spec_n"], case["threshold"])
    return spec, params


@cocotb.test()
async def snapea_layer(dut):
    cfg, case = load_case()
    lay = snapea_layouts(cfg)
    spec, params = case_layer(case)
    cmds = layer_commands(case["x"], spec, case["w"], case["bias"], case["mult"], case["shift"],
                          cfg, params, bool(case["terminate"]))
    reads = [c for c in cmds if c.cmd["readout"]]
    n_out = sum(c.windows for c in reads)
    pat = handshake_patterns(1.0, float(case["ready_p"]), int(case["seed"]))

    await start_clock_and_reset(dut)
    bench = StreamBench(dut, sources={
        "cmd": (lay.command, [c.cmd for c in cmds], pat["cmd"]),
        "acts": (lay.act, [[v] for c in cmds for v in c.acts], pat["acts"]),
        "weights": (lay.weight_row, [r for c in cmds for r in c.weights], pat["weights"]),
    }, sinks={"out": pat["out"]})
    tr = await bench.run(lambda tr: len(tr["out"]) == n_out)

    m, n = spec.out_h * spec.out_w, spec.out_ch
    got = np.zeros((m, n), np.int64)
    beat = iter(tr["out"])
    for c in reads:
        for w in range(c.windows):
            _, bits = next(beat)
            got[c.pixels[w], c.channel0:c.channel0 + c.lanes_used] = unpack_array(
                lay.out_vector, bits)[:c.lanes_used]
    expected = case["expected"] & cfg.fxp.act_max
    bad = np.argwhere(got != expected)
    assert bad.size == 0, (f"{len(bad)} of {got.size} outputs differ from the integer reference;"
                           f" first at (pixel, channel) {tuple(bad[0])}: RTL "
                           f"{got[tuple(bad[0])]}, reference {expected[tuple(bad[0])]}")
    cycles = tr["out"][-1][0] - tr["cmd"][0][0] + 1
    dut._log.info("RTL took %d cycles; simulator predicted %d", cycles, int(case["cycles"]))
    if float(case["ready_p"]) == 1.0:
        assert cycles == int(case["cycles"]), (
            f"RTL took {cycles} cycles, the simulator predicted {int(case['cycles'])}")
