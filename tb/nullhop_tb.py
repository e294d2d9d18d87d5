"""cocotb testbench of ``NullHopBlock``: drives one layer's passes (commands, kernels,
compressed input words) through the top-level streams and checks that the output stream
equals the Python encoder's stream of the integer torch reference word for word, and that the
cycle count and every output word's cycle equal the simulator's step model
(``tb.scoreboard``)."""

import cocotb

from tb.nullhop_cases import describe_word
from tb.runner import load_case
from tb.streams import run_stream_case


@cocotb.test()
async def nullhop_layer(dut):
    cfg, case = load_case()
    await run_stream_case(dut, case, describe_word(cfg))
