"""cocotb drivers that follow ``sim.streams``: the same transfer rules and the same
deterministic valid/ready patterns the step models use, so cycle counts can be compared."""

from __future__ import annotations

from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from hw.layouts import pack
from sim.streams import Source


async def start_clock_and_reset(dut, cycles: int = 2) -> None:
    Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    for _ in range(cycles):
        await RisingEdge(dut.clk)
    dut.rst.value = 0


class StreamBench:
    """Drives ``amaranth.lib.stream`` input ports and collects output ports, one cycle at a time.

    ``sources``: port name -> (layout, beats, pattern); ``sinks``: port name -> pattern.
    ``run`` returns, per port, the list of (cycle, payload bits) transfers; cycle 0 is the
    first cycle after reset.
    """

    def __init__(self, dut, sources: dict, sinks: dict):
        self.dut = dut
        self.sources = {name: (layout, Source(beats, pattern))
                        for name, (layout, beats, pattern) in sources.items()}
        self.sinks = sinks
        self.transfers = {name: [] for name in [*sources, *sinks]}

    def _sig(self, port, field):
        return getattr(self.dut, f"{port}__{field}")

    async def run(self, until, max_cycles: int = 2_000_000) -> dict:
        """Run until ``until(transfers)`` is true (checked after every cycle)."""
        for name, (layout, src) in self.sources.items():
            self._sig(name, "valid").value = 0
        t = 0
        while True:
            for name, (layout, src) in self.sources.items():
                valid = src.valid(t)
                self._sig(name, "valid").value = int(valid)
                if valid:
                    self._sig(name, "payload").value = pack(layout, src.payload())
            for name, pattern in self.sinks.items():
                self._sig(name, "ready").value = int(pattern(t))
            await ReadOnly()
            fired = []
            for name, (layout, src) in self.sources.items():
                if self._sig(name, "valid").value and self._sig(name, "ready").value:
                    self.transfers[name].append((t, None))
                    fired.append(src)
            for name in self.sinks:
                if self._sig(name, "valid").value and self._sig(name, "ready").value:
                    self.transfers[name].append((t, int(self._sig(name, "payload").value)))
            await RisingEdge(self.dut.clk)
            for src in fired:
                src.advance()
            t += 1
            if until(self.transfers):
                return self.transfers
            if t >= max_cycles:
                raise TimeoutError(f"no completion after {max_cycles} cycles")
