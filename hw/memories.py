"""Block-RAM buffers shared by the blocks."""

from __future__ import annotations

from amaranth import Module, Signal
from amaranth.lib import memory

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
