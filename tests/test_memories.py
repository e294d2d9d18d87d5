"""The block-RAM helpers (Amaranth's simulator): every entry written reads back the same, one
cycle after its read, whatever the split; and each RAM fits one block-RAM configuration."""

import numpy as np
import pytest
from amaranth import Fragment, Module, Signal, signed
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from zeroskip.hw.memories import block_ram_width, sliced_memory

LAYOUT = data.StructLayout({"value": signed(32), "dead": 1})


class SlicedRAM(wiring.Component):
    def __init__(self, depth):
        self._depth = depth
        super().__init__({"we": In(1), "waddr": In(range(depth)), "wdata": In(LAYOUT),
                          "raddr": In(range(depth)), "ren": In(1), "rdata": Out(LAYOUT)})

    def elaborate(self, platform):
        m = Module()
        rdata = sliced_memory(m, "ram_", LAYOUT, self._depth, waddr=self.waddr,
                              wdata=self.wdata, wen=self.we, raddr=self.raddr, ren=self.ren)
        m.d.comb += self.rdata.eq(rdata)
        return m


@pytest.mark.parametrize("depth, width", [(64, 36), (512, 36), (1024, 18), (1000, 18),
                                          (2048, 9), (16384, 1), (1 << 16, 1)])
def test_block_ram_width_is_an_18_kbit_configuration(depth, width):
    assert block_ram_width(depth) == width


@pytest.mark.parametrize("depth", [16, 1024, 2048])
def test_sliced_memory_is_rams_of_one_block_ram_width_side_by_side(depth):
    m, step = Module(), block_ram_width(depth)
    sliced_memory(m, "ram_", LAYOUT, depth, waddr=Signal(range(depth)), wdata=Signal(LAYOUT),
                  wen=Signal(), raddr=Signal(range(depth)))
    count = -(-LAYOUT.size // step)
    mems = [m.submodules[f"ram_{i}"] for i in range(count)]
    assert all(isinstance(mem, memory.Memory) and mem.depth == depth for mem in mems)
    assert [mem.shape.width for mem in mems] == [step] * (count - 1) + [LAYOUT.size
                                                                       - step * (count - 1)]
    with pytest.raises(AttributeError):
        m.submodules[f"ram_{count}"]
    Fragment.get(m, None)  # elaborates: the RAMs are used


@pytest.mark.parametrize("depth", [16, 1024, 2048])
def test_sliced_memory_reads_back_what_was_written(depth):
    dut = SlicedRAM(depth)
    rng = np.random.default_rng(3)
    addrs = rng.choice(depth, size=min(depth, 40), replace=False).tolist()
    want = {a: (int(rng.integers(-2**31, 2**31)), int(rng.integers(2))) for a in addrs}

    async def bench(ctx):
        for a, (value, dead) in want.items():
            ctx.set(dut.we, 1)
            ctx.set(dut.waddr, a)
            ctx.set(dut.wdata, {"value": value, "dead": dead})
            await ctx.tick()
        ctx.set(dut.we, 0)
        for a, (value, dead) in want.items():
            ctx.set(dut.raddr, a)
            ctx.set(dut.ren, 1)
            await ctx.tick()
            ctx.set(dut.ren, 0)
            ctx.set(dut.raddr, (a + 1) % depth)  # held while ren is low
            await ctx.tick()
            assert (ctx.get(dut.rdata.value), ctx.get(dut.rdata.dead)) == (value, dead), a

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
