"""Verilog generation: memories' zero initialisation is one loop, not a line per word."""

from zeroskip.hw.gen import compact_memory_init, generate
from zeroskip.hw.config import SNAPEA_PRESETS


def test_zero_initialisation_becomes_one_loop_per_memory():
    text = "\n".join(["  initial begin", *(f"    mem[{i}] = 12'h000;" for i in range(4)),
                      "  end", "  initial begin", "    other[0] = 8'h01;", "  end"])
    out = compact_memory_init(text).split("\n")
    assert out[:5] == ["  integer mem__init;", "  initial begin",
                       "    for (mem__init = 0; mem__init < 4; mem__init = mem__init + 1)",
                       "      mem[mem__init] = 12'h0;", "  end"]
    assert out[5:] == ["  initial begin", "    other[0] = 8'h01;", "  end"]  # not all zero


def test_generated_verilog_has_no_element_by_element_zero_init(tmp_path):
    v = generate(SNAPEA_PRESETS["tiny"], tmp_path).read_text()
    assert "copy_0_bank_0[0] = " not in v and "for (copy_0_bank_0__init = 0;" in v
