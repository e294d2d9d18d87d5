"""cocotb testbench of any block's AXI4-Stream top (``hw.axi.AxiTop``), with the standard
``cocotbext-axi`` models: one ``AxiStreamSource`` per slave port and one ``AxiStreamSink`` per
master port, each with a seeded random pause generator (idle ``tvalid`` cycles on the sources,
``tready`` backpressure on the sinks).

The case (built on the pytest side, ``tb/test_axi.py``) holds, per port, the payloads as hex
strings: ``in__<port>`` to send, ``out__<port>`` expected from the integer torch reference and
``mask__<port>`` the bits that carry data (padding lanes are not checked). Each payload is one
frame, so ``tlast`` closes every payload. ``cycles`` (when >= 0) is the simulator's prediction
from the first input beat to the last output beat, inclusive.
"""

import random

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge, with_timeout
from cocotbext.axi import AxiStreamBus, AxiStreamFrame, AxiStreamSink, AxiStreamSource

from zeroskip.hw.axi import axi_ports
from tb.runner import load_case
from tb.streams import start_clock_and_reset


def pauses(p: float, seed: int):
    """True (pause) with probability 1 - p per cycle, from a seeded generator."""
    rng = random.Random(seed)
    while True:
        yield rng.random() >= p


def _high(sig) -> bool:
    return str(sig.value) == "1"


@cocotb.test()
async def axi_layer(dut):
    cfg, case = load_case()
    ports = axi_ports(cfg, int(case["max_bytes"]))
    valid_p, ready_p, seed = float(case["valid_p"]), float(case["ready_p"]), int(case["seed"])

    sources, sinks = {}, {}
    for i, p in enumerate(ports):
        bus = AxiStreamBus.from_prefix(dut, p.prefix)
        if p.direction == "in":
            sources[p.port] = src = AxiStreamSource(bus, dut.clk, dut.rst)
            src.log.setLevel("WARNING")
            if valid_p < 1.0:
                src.set_pause_generator(pauses(valid_p, seed * 100 + i))
        else:
            sinks[p.port] = snk = AxiStreamSink(bus, dut.clk, dut.rst)
            snk.log.setLevel("WARNING")
            if ready_p < 1.0:
                snk.set_pause_generator(pauses(ready_p, seed * 100 + i))

    await start_clock_and_reset(dut)
    by_port = {p.port: p for p in ports}
    for name, src in sources.items():
        for h in case[f"in__{name}"]:
            src.send_nowait(AxiStreamFrame(by_port[name].to_beats(int(str(h), 16))))

    # transfer monitor: cycle of every beat on every port (cycle 0 = first after reset)
    expected_beats = {name: len(case[f"out__{name}"]) * by_port[name].beats for name in sinks}
    beats = {p.port: [] for p in ports}

    async def monitor():
        t = 0
        while any(len(beats[n]) < expected_beats[n] for n in sinks):
            await RisingEdge(dut.clk)
            await ReadOnly()
            for p in ports:
                if _high(getattr(dut, f"{p.prefix}_tvalid")) and \
                        _high(getattr(dut, f"{p.prefix}_tready")):
                    beats[p.port].append(t)
            t += 1

    budget = 200 * sum(len(case[f"in__{n}"]) * by_port[n].beats for n in sources) + 10_000
    await with_timeout(monitor(), budget * 10, "ns")

    for name, snk in sinks.items():
        p = by_port[name]
        exp = [int(str(h), 16) for h in case[f"out__{name}"]]
        mask = [int(str(h), 16) for h in case[f"mask__{name}"]]
        got = []
        for _ in exp:
            frame = await snk.recv()
            got.append(p.from_beats(frame.tdata))
        assert snk.empty(), f"{p.prefix}: more payloads than expected"
        for j, (g, e, mk) in enumerate(zip(got, exp, mask)):
            assert g & mk == e & mk, (f"{p.prefix}: payload {j} of {len(exp)} differs from the "
                                      f"integer reference: got {g & mk:#x}, expected {e & mk:#x}")
    for name, src in sources.items():
        assert src.empty(), f"{by_port[name].prefix}: the block did not take every beat"

    first = min(b[0] for b in beats.values() if b)
    last = max(beats[n][-1] for n in sinks)
    cycles = last - first + 1
    dut._log.info("AXI top took %d cycles (prediction %d)", cycles, int(case["cycles"]))
    if int(case["cycles"]) >= 0:
        assert cycles == int(case["cycles"]), (
            f"the AXI top took {cycles} cycles, the simulator predicted {int(case['cycles'])}")
