"""cocotb testbench of ``CombinedBlock``: drives one packed layer's beats (weights with their
selects, ``alpha`` activation lanes per packed row) through the top-level streams and checks
every output against the integer torch reference on the pruned, conflict-free weights and the
cycle count (and the cycle of every output beat) against the step model (``tb.scoreboard``)."""

import cocotb

from zeroskip.hw.layouts import combined_layouts
from tb.runner import load_case
from tb.streams import describe_lanes, run_stream_case


@cocotb.test()
async def combined_layer(dut):
    cfg, case = load_case()
    await run_stream_case(dut, case, describe_lanes(combined_layouts(cfg).out_vector))
