"""cocotb testbench of ``SystolicBlock``: drives one tiled layer's beats through the top-level
streams and checks every output against the integer torch reference and the cycle count (and
the cycle of every output beat) against the simulator's step model (``tb.scoreboard``)."""

import cocotb

from zeroskip.hw.layouts import systolic_layouts
from tb.runner import load_case
from tb.streams import describe_lanes, run_stream_case


@cocotb.test()
async def systolic_layer(dut):
    cfg, case = load_case()
    await run_stream_case(dut, case, describe_lanes(systolic_layouts(cfg).out_vector))
