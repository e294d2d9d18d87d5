"""Shift-add multiplication in logic, for FPGA timing.

The blocks' multipliers are written as sums of shifted partial products instead of ``*``:
Yosys would map ``*`` onto the FPGA's multiplier blocks, and on an ECP5 the routing from
fabric registers into those blocks and back costs about 3 ns each way once a MAC array
crowds the logic around them, more than a 100 MHz cycle leaves (measured with nextpnr,
``docs/fpga.md``). Adder trees in logic pipeline freely and place anywhere.
"""

from __future__ import annotations

from amaranth import Mux, Signal


def tree_sum(terms):
    """A balanced adder tree (combinational)."""
    terms = list(terms)
    while len(terms) > 1:
        terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i]
                 for i in range(0, len(terms), 2)]
    return terms[0]


def tree_or(terms):
    """A balanced OR tree (combinational)."""
    terms = list(terms)
    while len(terms) > 1:
        terms = [terms[i] | terms[i + 1] if i + 1 < len(terms) else terms[i]
                 for i in range(0, len(terms), 2)]
    return terms[0]


def bank_select(banks, bank):
    """Entry ``bank`` of ``banks`` (an AND-OR): the read data of a memory built as banks,
    registered per bank first, so no multiplexer follows a block RAM's clock-to-out."""
    if len(banks) == 1:
        return banks[0]
    return tree_or([Mux(bank == b, banks[b], 0) for b in range(len(banks))])


def partial_product_groups(multiplicand, multiplier, group: int):
    """``multiplicand * multiplier`` (``multiplier`` unsigned) as sums of ``group`` partial
    products each: returns ``[g_0, g_1, ...]`` with the product equal to
    ``sum(g_j << (group * j))``; each ``g_j`` is ``log2(group)`` adder levels deep."""
    bits = len(multiplier)
    return [tree_sum(Mux(multiplier[i], multiplicand << (i - g0), 0)
                     for i in range(g0, min(bits, g0 + group)))
            for g0 in range(0, bits, group)]


MAC_GROUP = 4  # activation bits per registered partial-product group of a MAC cell


def multiply_accumulate(m, activation, weight, psum_in, psum_out) -> None:
    """``psum_out <= psum_in + activation * weight`` as a two-stage pipeline: the
    partial-product groups of ``activation`` (unsigned) times ``weight`` are registered, then
    added to ``psum_in``. ``activation`` and ``weight`` should be registers."""
    groups = partial_product_groups(weight, activation, MAC_GROUP)
    regs = [Signal.like(g, name=f"product_{j}") for j, g in enumerate(groups)]
    m.d.sync += [r.eq(g) for r, g in zip(regs, groups)]
    m.d.sync += psum_out.eq(tree_sum([psum_in, *(r << (MAC_GROUP * j)
                                                 for j, r in enumerate(regs))]))


def product(a, b):
    """``a * b`` (``b`` unsigned) as one combinational shift-add tree, for small operands
    where an FPGA multiplier block would cost more routing than it saves (see above)."""
    return tree_sum(Mux(b[i], a << i, 0) for i in range(len(b)))
