"""cocotb testbench of any block's AXI4-Stream top (``hw.axi.AxiTop``), with the standard
``cocotbext-axi`` models: one ``AxiStreamSource`` per slave port and one ``AxiStreamSink`` per
master port, each with a seeded random pause generator (idle ``tvalid`` cycles on the sources,
``tready`` backpressure on the sinks).

The case is the block's own ``tb.scoreboard.Case`` (built on the pytest side,
``tb/test_axi.py``) with ``extra["max_bytes"]`` the bus width. Each payload is one frame, so
``tlast`` closes every payload; the ``Scoreboard`` sees one transfer per frame, at its last
beat, and counts cycles from the first beat on any port.
"""

import random

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge, with_timeout
from cocotbext.axi import AxiStreamBus, AxiStreamFrame, AxiStreamSink, AxiStreamSource

from zeroskip.hw.axi import axi_ports
from tb.runner import load_case
from tb.scoreboard import LINGER_CYCLES, Scoreboard
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
    ports = axi_ports(cfg, int(case.extra["max_bytes"]))
    by_port = {p.port: p for p in ports}

    sources, sinks = {}, {}
    for i, p in enumerate(ports):
        bus = AxiStreamBus.from_prefix(dut, p.prefix)
        if p.direction == "in":
            sources[p.port] = src = AxiStreamSource(bus, dut.clk, dut.rst)
            src.log.setLevel("WARNING")
            if case.valid_p < 1.0:
                src.set_pause_generator(pauses(case.valid_p, case.seed * 100 + i))
        else:
            sinks[p.port] = snk = AxiStreamSink(bus, dut.clk, dut.rst)
            snk.log.setLevel("WARNING")
            if case.ready_p < 1.0:
                snk.set_pause_generator(pauses(case.ready_p, case.seed * 100 + i))

    await start_clock_and_reset(dut)
    for name, src in sources.items():
        for payload in case.inputs[name]:
            src.send_nowait(AxiStreamFrame(by_port[name].to_beats(payload)))

    # transfer monitor: cycle of every beat on every port (cycle 0 = first after reset),
    # until every expected output beat and LINGER_CYCLES more with every tready high
    want = {name: len(case.outputs[name]) * by_port[name].beats for name in sinks}
    beats = {p.port: [] for p in ports}

    async def monitor():
        t, linger = 0, None
        while linger is None or linger > 0:
            await RisingEdge(dut.clk)
            await ReadOnly()
            for p in ports:
                if _high(getattr(dut, f"{p.prefix}_tvalid")) and \
                        _high(getattr(dut, f"{p.prefix}_tready")):
                    beats[p.port].append(t)
            t += 1
            if linger is None and all(len(beats[n]) >= want[n] for n in sinks):
                linger = LINGER_CYCLES
                for snk in sinks.values():
                    snk.clear_pause_generator()
            elif linger is not None:
                linger -= 1

    budget = 200 * sum(len(case.inputs[n]) * by_port[n].beats for n in sources) + 10_000
    await with_timeout(monitor(), budget * 10, "ns")

    transfers = {}
    for name, src in sources.items():
        nb = by_port[name].beats
        transfers[name] = [(beats[name][j * nb + nb - 1], None)
                           for j in range(len(beats[name]) // nb)]
    for name, snk in sinks.items():
        p = by_port[name]
        frames = []
        while not snk.empty():
            frames.append(p.from_beats(snk.recv_nowait().tdata))
        transfers[name] = [(beats[name][j * p.beats + p.beats - 1], payload)
                           for j, payload in enumerate(frames)]
        if len(beats[name]) > len(frames) * p.beats:  # a frame begun but not closed
            transfers[name].append((beats[name][len(frames) * p.beats], 0))
    origin = min(b[0] for b in beats.values() if b)
    Scoreboard(case).check(transfers, origin, log=dut._log)
