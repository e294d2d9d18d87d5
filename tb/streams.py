"""cocotb drivers that follow ``sim.streams``: the same transfer rules and the same
deterministic valid/ready patterns the step models use, so cycle counts can be compared."""

from __future__ import annotations

import json
import time
from pathlib import Path

from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from zeroskip.sim.streams import Source, handshake_patterns
from tb.scoreboard import LINGER_CYCLES, Case, Scoreboard


async def start_clock_and_reset(dut, cycles: int = 2) -> None:
    Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    for _ in range(cycles):
        await RisingEdge(dut.clk)
    dut.rst.value = 0


class StreamBench:
    """Drives ``amaranth.lib.stream`` input ports and collects output ports, one cycle at a time.

    ``sources``: port name -> (beats as packed integers, pattern); ``sinks``: port name ->
    pattern. ``run`` returns, per port, the list of (cycle, payload bits) transfers; cycle 0
    is the first cycle after reset.
    """

    def __init__(self, dut, sources: dict, sinks: dict):
        self.dut = dut
        self.sources = {name: Source(beats, pattern)
                        for name, (beats, pattern) in sources.items()}
        self.sinks = sinks
        self.transfers = {name: [] for name in [*sources, *sinks]}

    def _sig(self, port, field):
        return getattr(self.dut, f"{port}__{field}")

    async def run(self, until, linger: int = 0, max_cycles: int = 2_000_000) -> dict:
        """Run until ``until(transfers)`` is true (checked after every cycle), then ``linger``
        more cycles with every sink ready, so a beat too many is seen."""
        # handles resolved once; a payload is written only when a new beat is offered
        # (Icarus + cocotb spend most of a cycle on signal writes)
        srcs = [(name, src, self._sig(name, "valid"), self._sig(name, "ready"),
                 self._sig(name, "payload")) for name, src in self.sources.items()]
        sinks = [(name, pattern, self._sig(name, "valid"), self._sig(name, "ready"),
                  self._sig(name, "payload")) for name, pattern in self.sinks.items()]
        shown = {name: None for name, *_ in srcs}  # beat index on each payload port
        driven = {}  # last value written to each valid/ready port
        clk = self.dut.clk
        for name, _, valid_sig, _, _ in srcs:
            valid_sig.value = 0
            driven[name] = 0
        t, stop = 0, None
        while True:
            offered = []
            for name, src, valid_sig, ready_sig, payload_sig in srcs:
                valid = int(src.valid(t))
                if valid != driven[name]:
                    valid_sig.value = driven[name] = valid
                if valid:
                    if shown[name] != src.pos:
                        payload_sig.value = src.payload()
                        shown[name] = src.pos
                    offered.append((name, src, ready_sig))
            for name, pattern, _, ready_sig, _ in sinks:
                ready = 1 if stop is not None else int(pattern(t))
                if ready != driven.get(name):
                    ready_sig.value = driven[name] = ready
            await ReadOnly()
            fired = []
            for name, src, ready_sig in offered:
                if ready_sig.value:
                    self.transfers[name].append((t, None))
                    fired.append(src)
            for name, _, valid_sig, ready_sig, payload_sig in sinks:
                if driven[name] and valid_sig.value:
                    self.transfers[name].append((t, int(payload_sig.value)))
            await RisingEdge(clk)
            for src in fired:
                src.advance()
            t += 1
            if stop is None and until(self.transfers):
                stop = t + linger
            if stop is not None and t >= stop:
                return self.transfers
            if t >= max_cycles:
                raise TimeoutError(f"no completion after {max_cycles} cycles")


async def run_stream_case(dut, case: Case, describe=None) -> dict:
    """The whole bench of a block with ``amaranth.lib.stream`` ports: reset, drive
    ``case.inputs`` and collect ``case.outputs`` with the step model's handshake patterns,
    then check with the ``Scoreboard``. Returns the transfers."""
    clock = RunClock()
    pat = handshake_patterns(case.valid_p, case.ready_p, case.seed,
                             sources=tuple(case.inputs), sinks=tuple(case.outputs))
    await start_clock_and_reset(dut)
    bench = StreamBench(dut, sources={p: (b, pat[p]) for p, b in case.inputs.items()},
                        sinks={p: pat[p] for p in case.outputs})
    want = {p: len(b) for p, b in case.outputs.items()}
    tr = await bench.run(lambda tr: all(len(tr[p]) >= n for p, n in want.items()),
                         linger=LINGER_CYCLES)
    Scoreboard(case, describe).check(tr, log=dut._log)
    clock.write()
    return tr


class RunClock:
    """Wall and CPU seconds of a run, from its creation to ``write`` (into ``timing.json`` in
    the simulation's folder, for scripts/bench_rtl.py: CPU time holds on a busy machine)."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def write(self, **extra) -> None:
        Path("timing.json").write_text(json.dumps(
            {"wall": time.perf_counter() - self.wall, "cpu": time.process_time() - self.cpu,
             **extra}))


def describe_lanes(layout):
    """A payload of lane vector ``layout`` as its lanes, for the Scoreboard's messages."""
    from zeroskip.hw.layouts import unpack_array

    return lambda port, bits: str(unpack_array(layout, bits))
