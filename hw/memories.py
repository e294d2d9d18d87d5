"""Block-RAM buffers shared by the blocks."""

from __future__ import annotations

from amaranth import Cat, Module, Shape, Signal, Value, unsigned
from amaranth.lib import data, memory

from .config import ceil_div, ceil_log2


def banked_memory(m: Module, name: str, shape, depth: int, bank_depth: int, *, waddr, wdata,
                  wen, raddr, ren=1):
    """``depth`` entries of ``shape`` as banks of at most ``bank_depth`` entries (entry ``a``
    in bank ``a // bank_depth``, a power of two), each a synchronous ``memory.Memory``
    (submodules ``<name>0``, ``<name>1``, ...) with one write and one read port, not
    transparent; a single-port RAM when ``waddr`` and ``raddr`` are the same signal.

    Returns ``(data, bank)``: one cycle after a read, ``data[b]`` is the entry read from
    bank b and ``bank`` the bank of the address read (both hold while ``ren`` is low). The
    reader registers both and then selects (``hw.arith.bank_select``), so no bank
    multiplexer sits between the RAMs' clock-to-out and a register: a memory deeper than one
    block-RAM configuration otherwise gets Yosys's depth-cascade multiplexer there.
    """
    per_bank = min(bank_depth, depth)
    lb, banks = ceil_log2(per_bank), ceil_div(depth, per_bank)
    data = []
    for b in range(banks):
        mem = m.submodules[f"{name}{b}"] = memory.Memory(
            shape=shape, depth=min(per_bank, depth - b * per_bank), init=[])
        wr, rd = mem.write_port(), mem.read_port()
        here = (waddr >> lb) == b if banks > 1 else 1
        m.d.comb += [wr.addr.eq(waddr[:lb]), wr.data.eq(wdata), wr.en.eq(wen & here),
                     rd.addr.eq(raddr[:lb]), rd.en.eq(ren)]
        data.append(rd.data)
    bank = Signal(range(max(2, banks)), name=f"{name}read")
    if banks > 1:
        with m.If(ren):
            m.d.sync += bank.eq(raddr >> lb)
    return data, bank


# widths of one ECP5 DP16KD (and Xilinx RAMB18) configuration by its depth: 18 Kbit
_BLOCK_RAM_WIDTH = {16384: 1, 8192: 2, 4096: 4, 2048: 9, 1024: 18, 512: 36}


def block_ram_width(depth: int) -> int:
    """Data width of one 18-Kbit block RAM (ECP5 DP16KD, Xilinx RAMB18) configured for
    ``depth`` entries (rounded up to a power of two; 36 below 512, 1 above 16384)."""
    d = 1 << ceil_log2(max(1, depth))
    return _BLOCK_RAM_WIDTH[min(max(d, 512), 16384)]


def sliced_memory(m: Module, name: str, layout: data.Layout, depth: int, *, waddr, wdata,
                  wen, raddr, ren=1):
    """``depth`` entries of ``layout`` as side-by-side synchronous ``memory.Memory``s
    (submodules ``<name>0``, ``<name>1``, ...), each as wide as one block RAM of that depth
    (``block_ram_width``), with one write and one read port, not transparent.

    Returns the read data (a view of ``layout``), valid one cycle after a read and held while
    ``ren`` is low. Left to itself, Yosys builds an entry wider than one block-RAM
    configuration by cascading shallower, wider RAMs in depth, with a multiplexer after
    their clock-to-out; sliced by width, the RAMs' read data goes straight to the reader.
    """
    bits = Shape.cast(layout).width
    step = block_ram_width(depth)
    wbits, rdata = Value.cast(wdata).as_unsigned(), []
    for i, lo in enumerate(range(0, bits, step)):
        width = min(step, bits - lo)
        mem = m.submodules[f"{name}{i}"] = memory.Memory(
            shape=unsigned(width), depth=depth, init=[])
        wr, rd = mem.write_port(), mem.read_port()
        m.d.comb += [wr.addr.eq(waddr), wr.data.eq(wbits[lo:lo + width]), wr.en.eq(wen),
                     rd.addr.eq(raddr), rd.en.eq(ren)]
        rdata.append(rd.data)
    return data.View(layout, Cat(*rdata))
