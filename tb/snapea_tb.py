"""cocotb testbench of ``SnaPEABlock``: drives one layer's host-driver beats
(``sim.snapea.layer_commands``) through the top-level streams and checks every output against
the integer torch reference (SnaPEA cut-off rule included) and the cycle count against the
simulator (``tb.scoreboard``)."""

import cocotb

from zeroskip.hw.layouts import snapea_layouts
from tb.runner import load_case
from tb.streams import describe_lanes, run_stream_case


@cocotb.test()
async def snapea_layer(dut):
    cfg, case = load_case()
    await run_stream_case(dut, case, describe_lanes(snapea_layouts(cfg).out_vector))
