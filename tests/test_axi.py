"""Unit tests of the AXI4-Stream wrapper pieces (Amaranth's simulator), the packing contract,
and the ``zeroskip synth`` figures and errors."""

from __future__ import annotations

import json
import random

import pytest
from amaranth import Module, unsigned
from amaranth.lib import wiring
from amaranth.sim import Simulator
from hypothesis import given, settings
from hypothesis import strategies as st

from zeroskip.hw.axi import (AxiStreamDeserializer, AxiStreamSerializer, SkidBuffer, axi_ports,
                             port_layout)
from zeroskip.hw.config import SystolicConfig
from zeroskip.cli import main
from zeroskip.commands.fpga import counts_from_cells, find_tool


def test_axi_port_widths_follow_the_documented_rule():
    p = port_layout(444, "cmd", "in", 64)
    assert (p.prefix, p.data_bytes, p.beats) == ("s_axis_cmd", 56, 1)  # 444 bits = 55.5 bytes
    p = port_layout(444, "cmd", "in", 8)
    assert (p.data_bytes, p.beats) == (8, 7)  # 7 * 64 = 448 >= 444 > 6 * 64
    p = port_layout(18, "act_out", "out", 2)
    assert (p.prefix, p.data_bytes, p.beats) == ("m_axis_act_out", 2, 2)


def test_axi_ports_of_the_dense_array_are_its_streams():
    ports = axi_ports(SystolicConfig(rows=4, cols=3, acc_depth=24), 64)
    assert [(p.prefix, p.payload_bits) for p in ports] == [
        ("s_axis_cmd", 5 + 3 + 3 * (32 + 16 + 6)), ("s_axis_weights", 3 * 8),
        ("s_axis_acts", 4 * 8), ("m_axis_out", 3 * 8)]


@settings(max_examples=50, deadline=None)
@given(bits=st.integers(1, 700), max_bytes=st.integers(1, 70), data=st.data())
def test_axi_payload_round_trips_through_beats(bits, max_bytes, data):
    p = port_layout(bits, "x", "in", max_bytes)
    value = data.draw(st.integers(0, (1 << bits) - 1))
    frame = p.to_beats(value)
    assert len(frame) == p.beats * p.data_bytes
    assert (p.beats - 1) * p.data_bytes * 8 < bits <= p.beats * p.data_bytes * 8
    assert frame[0] == value & 0xFF  # byte lane 0 of beat 0 carries the lowest bits
    assert p.from_beats(frame) == value


def test_axi_width_must_be_positive():
    with pytest.raises(ValueError, match="positive number of bytes, not 0"):
        port_layout(8, "x", "in", 0)


class _Loop(wiring.Component):
    """AXI slave -> deserializer -> skid buffer -> serializer -> AXI master."""

    def __init__(self, bits, data_bits, beats):
        self.args = (unsigned(bits), data_bits, beats)
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        m.submodules.des = self.des = AxiStreamDeserializer(*self.args)
        m.submodules.skid = skid = SkidBuffer(self.args[0])
        m.submodules.ser = self.ser = AxiStreamSerializer(*self.args)
        wiring.connect(m, self.des.o, skid.i)
        wiring.connect(m, skid.o, self.ser.i)
        return m


@pytest.mark.parametrize("bits,data_bits,beats", [(20, 8, 3), (16, 16, 1), (5, 8, 1)],
                         ids=["3-beats", "1-beat", "padded"])
def test_axi_adapters_never_drop_or_duplicate_a_beat(bits, data_bits, beats):
    """Random tvalid gaps and tready backpressure: the master sends exactly the payloads the
    slave received, in order, with tlast on the last beat of each."""
    rng = random.Random(bits * 31 + beats)
    payloads = [rng.randrange(1 << bits) for _ in range(40)]
    sent = [(p >> (k * data_bits)) & ((1 << data_bits) - 1) for p in payloads
            for k in range(beats)]
    dut = _Loop(bits, data_bits, beats)
    got, lasts = [], []

    async def bench(ctx):
        des, ser = dut.des, dut.ser
        i = 0
        for _ in range(2000):
            offer = i < len(sent) and rng.random() < 0.6
            ctx.set(des.tvalid, offer)
            if offer:
                ctx.set(des.tdata, sent[i])
            ctx.set(ser.tready, rng.random() < 0.5)
            took_in = offer and ctx.get(des.tready)
            if ctx.get(ser.tvalid) and ctx.get(ser.tready):
                got.append(ctx.get(ser.tdata))
                lasts.append(ctx.get(ser.tlast))
            await ctx.tick()
            i += bool(took_in)
            if len(got) == len(sent):
                break

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert got == sent
    assert lasts == [int(k == beats - 1) for _ in payloads for k in range(beats)]


def test_synth_counts_by_target():
    cells = {"LUT4": 10, "CCU2C": 3, "TRELLIS_FF": 7, "MULT18X18D": 2, "DP16KD": 1}
    assert counts_from_cells(cells, "ecp5") == {"luts": 16, "ffs": 7, "dsps": 2, "brams": 1}
    cells = {"LUT2": 1, "LUT6": 4, "FDRE": 5, "FDSE": 1, "DSP48E1": 3, "RAMB36E1": 1,
             "RAMB18E1": 1, "CARRY4": 9}
    assert counts_from_cells(cells, "xilinx7") == {"luts": 5, "ffs": 6, "dsps": 3,
                                                   "brams": 1.5}


def test_synth_cli_rejects_bad_options(capsys):
    assert main(["synth", "systolic", "--target", "ecp5", "--device", "12k"]) == 2
    assert "unknown ecp5 device '12k'" in capsys.readouterr().err
    assert main(["synth", "systolic", "--target", "ecp5", "--axis-bytes", "0"]) == 2
    assert "not 0" in capsys.readouterr().err
    assert main(["synth", "systolic", "--target", "xilinx7", "--package", "ffg900"]) == 2
    assert "--package is for place and route" in capsys.readouterr().err


def _have(tool):
    try:
        return bool(find_tool(tool))
    except RuntimeError:
        return False


@pytest.mark.skipif(not _have("yosys"), reason="Yosys is missing")
def test_synth_cli_reports_resources_of_a_tiny_array(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["synth", "systolic", "--target", "ecp5", "--no-pnr", "--rows", "1",
                 "--cols", "1", "--acc-depth", "4", "--work-dir", str(tmp_path),
                 "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    # every multiply (the MAC, the requantiser's) is a shift-add tree in logic (hw.arith)
    assert res["dsps"] == 0
    assert res["ffs"] > 0 and res["luts"] > 0 and res["fmax_mhz"] is None
    assert "luts" in capsys.readouterr().out


@pytest.mark.skipif(not (_have("yosys") and _have("nextpnr-ice40")),
                    reason="Yosys or nextpnr-ice40 is missing")
def test_synth_ice40_places_a_narrow_top_on_a_big_package_and_names_the_pins(tmp_path,
                                                                             capsys):
    tiny = ["synth", "systolic", "--target", "ice40", "--rows", "1", "--cols", "1",
            "--acc-depth", "4", "--axis-bytes", "1"]
    # up5k's sg48 has 39 pins: too few for the ports, so no Fmax: Yosys's figures, then one
    # line saying why, exit 2
    assert main([*tiny, "--work-dir", str(tmp_path / "up5k")]) == 2
    captured = capsys.readouterr()
    assert "fmax n/a" in captured.out
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "I/O pins and the up5k sg48 package has 39" in err[0]
    res_path = tmp_path / "hx8k.json"
    assert main([*tiny, "--device", "hx8k", "--work-dir", str(tmp_path / "hx8k"),
                 "--json", str(res_path)]) == 0
    res = json.loads(res_path.read_text())
    assert res["package"] == "ct256" and res["fmax_mhz"] > 0 and res["luts"] > 0
    assert "package pin" in res["source"]
