"""NullHop-style sparse-feature-map block (Aimar et al., "NullHop: A Flexible Convolutional
Neural Network Accelerator Based on Sparse Representations of Feature Maps", TNNLS 2018).

Feature maps enter and leave compressed (sparsity map + non-zero value list, the stream of
``sim.sparse_format``); the compute core spends MAC cycles only on non-zero input values.
The host-side driver (``sim.nullhop.plan_layer``) cuts a layer into *passes*: one group of
``lanes = macs / macs_per_channel`` output channels x one band of output rows x one tile of
input channels; a pass's input is the band's input rows of the tile's slices, its output
one slice of the band.

``NullHopBlock`` is made of ``PassControl`` (the pass FSM and the kernel load),
``PassGeometry`` (the per-pass constants), ``SparsityMapDecoder`` (SM words, the kernel boxes
of their positions, the value take), ``MacPipeline`` (the box walk and the partial-sum
read-modify-write), ``OutputStage`` (requantisation, max-pool, re-encoding, values packed
``values_per_word`` to a word) and the two memories. Every path between registers is short
enough for 100 MHz on an ECP5 (``docs/fpga.md``): the decoder works out a chunk's kernel
offsets in the three cycles after its SM word, the MAC loop walks its addresses by
increments, the partial-sum update is a read-modify-write pipeline with forwarding, and the
output stage streams read-outs through the pipelined requantiser into a double-buffered
encoder.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .arith import MAC_GROUP, bank_select, partial_product_groups, product, tree_or, tree_sum
from .config import NullHopConfig, ceil_log2
from .layouts import acc_shape, act_shape, nullhop_layouts
from .memories import banked_memory
from .requantize import Requantizer, delay_stages


def _lowest_onehot(value):
    """The lowest set bit of ``value`` alone (``value & -value``): one carry chain."""
    return value & (~value + 1)


def _encode(m: Module, onehot, width: int, name: str):
    """Index of the (single) set bit of ``onehot``: an OR per index bit, no priority."""
    idx = Signal(range(max(2, width)), name=name)
    m.d.comb += idx.eq(Cat(*(Cat(*(onehot[i] for i in range(width) if i >> b & 1)).any()
                             for b in range(max(1, ceil_log2(width))))))
    return idx


def _onehot_select(onehot, values):
    """``values[i]`` for the set bit ``i`` of ``onehot`` (an AND-OR, no priority)."""
    return tree_or([Mux(onehot[i], v, 0) for i, v in enumerate(values)])


def _range_start(a, d, h, top, k):
    """First half of ``sim.nullhop.kernel_range`` for ``a = coord + pad``, given
    ``d = a - top`` and ``h = a - (k - 1)`` (signed, computed beside ``a``), with
    ``top = (out_n - 1) * stride``: ``lo = max(0, a - top)``, ``am = min(a, top)``,
    ``hi = min(a, k - 1)``. Both choices agree at ``d == 0`` (``a == top``), so ``d >= 0``
    (its sign bit, straight from the adder's carry chain) selects."""
    over = ~d[-1]
    return {"lo": Mux(over, d, 0), "am": Mux(over, top, a), "hi": Mux(h[-1], a, k - 1)}


def _range_end(a, lo, hi, smask):
    """Second half: the first and last kernel offset on the stride grid (first > last:
    none): the offsets ``o`` with ``o = a (mod stride)``, ``lo + ((a - lo) mod stride)`` and
    ``hi - ((hi - a) mod stride)``; a modulo a power of two only needs the low bits."""
    lb = len(smask)
    first = lo.as_signed() + ((a[:lb] - lo[:lb]) & smask)
    last = hi.as_signed() - ((hi[:lb] - a[:lb]) & smask)
    return first, last


# ---- what the units exchange --------------------------------------------------------------
def pass_geometry_layout(cfg: NullHopConfig) -> data.StructLayout:
    """``PassGeometry``'s output: the pass's constants, each a function of the command only."""
    S, kdb, p_bits = cfg.sm_bits, cfg.kernel_addr_bits, cfg.position_bits
    return data.StructLayout({
        "kk": cfg.kernel_area_bits,  # k * k
        "stride": cfg.stride_bits,  # 1 << stride_log2
        "smask": cfg.stride_mask_bits,  # stride - 1
        "xtop": cfg.top_bits, "ytop": cfg.top_bits,  # (out_w - 1), (out_h - 1) << stride_log2
        "sk": cfg.kernel_row_step_bits,  # k << stride_log2
        "cp_mask": p_bits,  # Cp - 1
        "slices_cp": kdb,  # slices * Cp: kernel-memory entries per k * k
        "row_words": p_bits,  # SM words per input row: ceil(in_w * Cp / S)
        "ho": cfg.dim_bits, "wo": cfg.dim_bits,  # output rows, columns after pooling
        "blk_log2": cfg.block_log2_bits,  # log2 of a group's block, min(Cp, S)
        "top_off": signed(cfg.coord_bits),  # pad_top - ytop
        "k_off": signed(cfg.coord_bits),  # pad_top - (k - 1)
        "pos_x": data.ArrayLayout(cfg.sm_log2, S),  # i >> slice_log2, position i of a word
        "pos_jkk": data.ArrayLayout(kdb, S),  # (i mod min(Cp, S)) * k * k
        "cpkk": kdb,  # Cp * k * k: kernel-memory entries of a slice
    })


def value_box_layout(cfg: NullHopConfig) -> data.StructLayout:
    """The decoder's current value as the MAC loop starts it: its ``act_bits`` (its slot of
    the value word), its kernel box (kernel offsets ``ky_first..ky_last`` x
    ``kx_first..kx_last``, each one wide or not), the box's first partial-sum address and
    kernel offset, the value's kernel channel offset, and whether the box is non-empty."""
    kob = cfg.kernel_offset_bits
    return data.StructLayout({
        "act": cfg.fxp.act_bits,
        "ky_first": kob, "ky_last": kob, "one_y": 1,
        "kx_first": kob, "kx_last": kob, "one_x": 1,
        "op_first": cfg.psum_step_bits, "k_first": cfg.kernel_addr_bits,
        "chan": cfg.kernel_addr_bits, "reaches": 1,
    })


# The FSM's strobes (Out from PassControl) and what it reads back (In).
DECODER_CONTROL = wiring.Signature({
    "start": Out(1),  # the command is accepted: the input counters restart
    "take_sm": Out(1),  # act_in's word is an SM word, taken this cycle
    "take_value": Out(1),  # the current value (a slot of act_in's word) is taken this cycle
    "decode_en": Out(3),  # DECODE cycle 1, 2, 3 (one-hot)
    "expect_sm": In(1),  # the next word is an SM word (the current one has no values left)
    "word_done": In(1),  # taking the current word's SM bits or value uses it up (ready)
    "more": In(1),  # the next non-zero joins the current value's group (M > 1)
    "reaches": In(1),  # the current value's box is non-empty
    "end": In(1),  # the pass's input is over
})
MAC_CONTROL = wiring.Signature({
    "group_start": Out(1),  # the decoder's current value starts a group (its box loads)
    "group_join": Out(1),  # the decoder's current value joins the group (COLLECT)
    "issue": Out(1),  # a MAC cycle
    "last": In(1),  # this MAC cycle is the box's last
    "reach": In(1),  # the group's box is non-empty
    "group_last": In(1),  # the group holds M - 1 values
})
OUTPUT_CONTROL = wiring.Signature({
    "reset": Out(1),  # the output phase starts next cycle: the walker starts the first chunk
    "active": Out(1),  # in the output phase (the walker owns the partial-sum read port)
    "pass_done": In(1),  # the pass's final output word leaves this cycle
})


class PartialSumMemory(wiring.Component):
    """The partial-sum memory: ``acc_depth`` rows of ``lanes`` accumulators in
    ``psum_banks`` banks of ``psum_bank_depth`` rows (row ``a`` in bank
    ``a // psum_bank_depth``), one write and one read port.

    Ports: ``waddr``/``wdata``/``wen`` write a row in the cycle ``wen`` is high; ``raddr``
    and ``ren`` start a read, and one cycle later ``banks[b]`` is the row read from every
    bank b and ``bank`` the bank of the address read (both hold while ``ren`` is low). The
    reader registers ``banks`` and ``bank``, then selects (``hw.arith.bank_select``): no
    bank multiplexer sits between the RAMs' clock-to-out and a register. Not transparent.
    """

    def __init__(self, cfg: NullHopConfig):
        self._cfg = cfg
        row = data.ArrayLayout(acc_shape(cfg.fxp), cfg.lanes)
        abits = cfg.psum_addr_bits
        super().__init__({
            "waddr": In(abits), "wdata": In(row), "wen": In(1),
            "raddr": In(abits), "ren": In(1),
            "banks": Out(data.ArrayLayout(row, cfg.psum_banks)),
            "bank": Out(range(max(2, cfg.psum_banks))),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._cfg
        data_, bank = banked_memory(
            m, "bank", data.ArrayLayout(acc_shape(cfg.fxp), cfg.lanes), cfg.acc_depth,
            cfg.psum_bank_depth, waddr=self.waddr, wdata=self.wdata, wen=self.wen,
            raddr=self.raddr, ren=self.ren)
        assert len(data_) == cfg.psum_banks
        m.d.comb += [*(self.banks[b].eq(d) for b, d in enumerate(data_)), self.bank.eq(bank)]
        return m


class PassGeometry(wiring.Component):
    """The per-pass constants (``pass_geometry_layout``), registered from the command.

    Ports: ``cmd`` in: the pass's command (``PassControl.command``); ``geometry`` out: the
    constants. Every field is registered from ``cmd`` alone (``pos_jkk`` through one more
    register stage), so they are valid from the pass's third cycle (PRIME, ``prime_cycles``
    in the ``NullHopConfig`` schedule) and hold until the next command.
    """

    def __init__(self, cfg: NullHopConfig):
        self._cfg = cfg
        super().__init__({
            "cmd": In(nullhop_layouts(cfg).command),
            "geometry": Out(pass_geometry_layout(cfg)),
        })

    def elaborate(self, platform):
        m = Module()
        cfg, cmd = self._cfg, self.cmd
        S, log2s = cfg.sm_bits, cfg.sm_log2
        dim = cfg.dim_bits
        kdb = cfg.kernel_addr_bits
        p_bits = cfg.position_bits
        values = {
            "kk": (product(cmd.k, cmd.k), cfg.kernel_area_bits),
            "stride": (Const(1, cfg.stride_bits) << cmd.stride_log2, cfg.stride_bits),
            "smask": ((Const(1, cfg.stride_bits) << cmd.stride_log2) - 1,
                      cfg.stride_mask_bits),
            "xtop": ((cmd.out_w - 1) << cmd.stride_log2, cfg.top_bits),
            "ytop": ((cmd.out_h - 1) << cmd.stride_log2, cfg.top_bits),
            "sk": (cmd.k << cmd.stride_log2, cfg.kernel_row_step_bits),
            "cp_mask": ((Const(1, p_bits) << cmd.slice_log2) - 1, p_bits),
            "slices_cp": (cmd.slices << cmd.slice_log2, kdb),
            "row_words": (((cmd.in_w << cmd.slice_log2) + (S - 1)) >> log2s, p_bits),
            "ho": (cmd.out_h >> cmd.pool, dim),
            "wo": (cmd.out_w >> cmd.pool, dim),
            "blk_log2": (Mux(cmd.slice_log2 < log2s, cmd.slice_log2, log2s),
                         cfg.block_log2_bits),
        }
        k = {}
        for name, (value, width) in values.items():
            k[name] = Signal(width, name=f"k_{name}")
            m.d.sync += k[name].eq(value)
        # pad - top and pad - (k - 1) of the rows, and i >> slice_log2 of the positions: the
        # kernel-box comparisons become additions done beside each other
        sw = cfg.coord_bits
        k["top_off"] = Signal(signed(sw), name="k_top_off")
        k["k_off"] = Signal(signed(sw), name="k_k_off")
        m.d.sync += [k["top_off"].eq(cmd.pad_top - ((cmd.out_h - 1) << cmd.stride_log2)),
                     k["k_off"].eq(cmd.pad_top - (cmd.k - 1))]
        k["pos_x"] = [Signal(log2s, name=f"k_pos_x_{i}") for i in range(S)]
        m.d.sync += [r.eq(Const(i, log2s) >> cmd.slice_log2) for i, r in enumerate(k["pos_x"])]
        # multiples of k*k: kernel-memory offsets of a chunk's channels and of a slice
        jkks = [Signal(kdb, name=f"k_jkk_{j}") for j in range(min(cfg.lanes, S))]
        m.d.sync += [r.eq(tree_sum([k["kk"] << b for b in range(j.bit_length()) if j >> b & 1]
                               or [Const(0)])) for j, r in enumerate(jkks)]
        # position i's channel offset within its chunk: jkk[i mod min(Cp, S)]
        k["pos_jkk"] = [Signal(kdb, name=f"k_pos_jkk_{i}") for i in range(S)]
        cpm = Signal(log2s, name="k_cp_low_mask")
        m.d.comb += cpm.eq(((Const(1, log2s + 1) << cmd.slice_log2) - 1)[:log2s])
        for i, r in enumerate(k["pos_jkk"]):
            with m.Switch(Const(i, log2s) & cpm):
                for j, jkk in enumerate(jkks):
                    with m.Case(j):
                        m.d.sync += r.eq(jkk)
        k["cpkk"] = Signal(kdb, name="k_cpkk")
        m.d.sync += k["cpkk"].eq(k["kk"] << cmd.slice_log2)
        geo = self.geometry
        for name, value in k.items():
            if isinstance(value, list):
                m.d.comb += [getattr(geo, name)[i].eq(v) for i, v in enumerate(value)]
            else:
                m.d.comb += getattr(geo, name).eq(value)
        return m


class SparsityMapDecoder(wiring.Component):
    """The input side: SM words, the kernel boxes of their positions, the values.

    Ports: ``cmd``, ``geometry`` in: the pass (``PassGeometry``); ``word`` in: ``act_in``'s
    data; ``control`` (``DECODER_CONTROL``): the FSM's strobes in, ``expect_sm``/``more``/
    ``reaches``/``end`` out; ``value`` out (``value_box_layout``): the current value's box,
    addresses and kernel channel.

    Cycle behaviour (the schedule: ``NullHopConfig``'s docstring): ``start`` restarts the
    input position (slice, row, word of the row); ``take_sm`` takes an SM word (its set bits
    become the values to come, the lowest the current one) and moves the position on;
    ``decode_en`` bit i, in the i-th DECODE cycle after it, runs stage i + 1 of the kernel
    boxes of the chunk's S positions: the clipped range ends, the first and last offset on
    the stride grid, then the box itself with its first partial-sum and kernel addresses.
    ``value`` is then the lowest remaining non-zero's box (an AND-OR over the positions),
    combinational, with its ``act_bits`` from slot ``vslot`` of the value word (values are
    packed ``values_per_word`` to a word); ``take_value`` moves on to the next non-zero and
    the next slot. ``word_done`` says the word is used up by this take (an SM word, a value
    word's last slot or the chunk's last value): only then is ``act_in`` ready. The kernel
    rows of an input row are worked out in four stages in the background, from the position
    of the next SM word.
    """

    def __init__(self, cfg: NullHopConfig):
        self._cfg = cfg
        super().__init__({
            "cmd": In(nullhop_layouts(cfg).command),
            "geometry": In(pass_geometry_layout(cfg)),
            "word": In(cfg.word_bits),
            "control": In(DECODER_CONTROL),
            "value": Out(value_box_layout(cfg)),
        })

    def elaborate(self, platform):
        m = Module()
        cfg, cmd, k, ctl = self._cfg, self.cmd, self.geometry, self.control
        S, M = cfg.sm_bits, cfg.macs_per_channel
        log2s = cfg.sm_log2
        dim = cfg.dim_bits
        kdb = cfg.kernel_addr_bits
        p_bits = cfg.position_bits
        kob, krb, psb = cfg.kernel_offset_bits, cfg.kernel_range_bits, cfg.psum_step_bits
        sw = cfg.coord_bits  # coordinate + padding arithmetic
        word = self.word

        mask = Signal(S)
        idx = Signal(range(max(2, S)))
        cur_w, nxt_w = Signal(p_bits), Signal(p_bits)
        cur_iy, nxt_iy = Signal(dim), Signal(dim)
        cur_slice, nxt_slice = Signal.like(cmd.slices), Signal.like(cmd.slices)
        cur_sbase, nxt_sbase = Signal(kdb), Signal(kdb)  # kernel offset of the slice
        sm_done = Signal()
        end = Signal()
        m.d.comb += end.eq((mask == 0) & sm_done)

        # kernel rows of input row nxt_iy, four stages (R1..R4), read at the third DECODE
        # cycle of the row's chunks: SM words are >= 4 cycles apart, so by then nxt_iy has
        # been the chunk's row for at least 4 cycles (and, for a pass's first row, since the
        # command: 1 + prime_cycles + 3 cycles)
        ay, dy, hy = Signal(sw), Signal(signed(sw + 1)), Signal(signed(sw + 1))
        m.d.comb += [ay.eq(nxt_iy + cmd.pad_top), dy.eq(nxt_iy + k.top_off),
                     hy.eq(nxt_iy + k.k_off)]
        r1 = {n: Signal(sw, name=f"row1_{n}") for n in ("a", "lo", "am", "hi")}
        m.d.sync += [r1["a"].eq(ay), *(r1[n].eq(v) for n, v in
                                        _range_start(ay, dy, hy, k.ytop, cmd.k).items())]
        ky_f, ky_l = _range_end(r1["a"], r1["lo"], r1["hi"], k.smask)
        r2 = {n: Signal(sw, name=f"row2_{n}") for n in ("ky_f", "ky_l", "oy_f")}
        m.d.sync += [r2["ky_f"].eq(ky_f), r2["ky_l"].eq(ky_l),
                     r2["oy_f"].eq(r1["am"] >> cmd.stride_log2)]
        groups = partial_product_groups(cmd.out_w, r2["oy_f"][:dim], MAC_GROUP)
        r3 = {"g": [Signal(psb, name=f"row3_g{j}") for j in range(len(groups))],
              "ky_f": Signal(kob, name="row3_ky_f"), "ky_l": Signal(kob, name="row3_ky_l"),
              "any": Signal(name="row3_any"), "krow": Signal(kdb, name="row3_krow")}
        m.d.sync += [*(r.eq(g) for r, g in zip(r3["g"], groups)),
                     r3["ky_f"].eq(r2["ky_f"]), r3["ky_l"].eq(r2["ky_l"]),
                     r3["any"].eq(r2["ky_f"].as_signed() <= r2["ky_l"].as_signed()),
                     r3["krow"].eq(product(cmd.k, r2["ky_f"][:kob]))]
        row = {n: Signal.like(v, name=f"row4_{n}") for n, v in r3.items() if n != "g"}
        row["rowbase"] = Signal(psb, name="row4_rowbase")
        m.d.sync += [*(row[n].eq(r3[n]) for n in row if n != "rowbase"),
                     row["rowbase"].eq(tree_sum(g << (MAC_GROUP * j)
                                                for j, g in enumerate(r3["g"])))]

        # the chunk's kernel-memory base: the slice's, plus (pixels wider than S) the
        # channels of the pixel before the chunk
        chunk_base = Signal(kdb)
        if cfg.lanes > S:
            hm = Signal(p_bits)
            m.d.comb += hm.eq(k.cp_mask >> log2s)
            cb1 = Signal(p_bits)
            m.d.sync += cb1.eq(cur_w & hm)
            m.d.sync += chunk_base.eq(cur_sbase + (product(k.kk, cb1) << log2s))
        else:  # Cp <= lanes <= S: a chunk starts at a pixel
            cb1 = Signal(kdb)
            m.d.sync += [cb1.eq(cur_sbase), chunk_base.eq(cb1)]

        # DECODE 1 and 2: the kernel box of every position of the chunk
        d1_en, d2_en, d3_en = Signal(), Signal(), Signal()
        m.d.comb += [d1_en.eq(ctl.decode_en[0]), d2_en.eq(ctl.decode_en[1]),
                     d3_en.eq(ctl.decode_en[2])]
        pos_lay = data.StructLayout({"a": sw, "lo": sw, "am": sw, "hi": sw})
        end_lay = data.StructLayout({"first": signed(krb), "last": signed(krb), "ox": sw})
        box_lay = data.StructLayout({"kx_f": kob, "kx_l": kob, "any": 1, "one": 1,
                                     "op_first": psb, "xk": kdb})
        d1 = Signal(data.ArrayLayout(pos_lay, S))
        d2 = Signal(data.ArrayLayout(end_lay, S))
        box = Signal(data.ArrayLayout(box_lay, S))
        # x + pad of the chunk's position 0, from nxt_w in the background, taken with the SM
        # word; position i adds i >> slice_log2 (x = (w * S + i) >> slice_log2)
        # (and its x + pad - top, x + pad - (k - 1)) two cycles after nxt_w moved
        xpad_next = Signal(sw)
        m.d.sync += xpad_next.eq((Cat(Const(0, log2s), nxt_w) >> cmd.slice_log2)
                                 + cmd.pad_left)
        xd_next, xh_next = Signal(signed(sw + 1)), Signal(signed(sw + 1))
        m.d.sync += [xd_next.eq(xpad_next - k.xtop), xh_next.eq(xpad_next - (cmd.k - 1))]
        cur_xpad, cur_xd, cur_xh = Signal(sw), Signal.like(xd_next), Signal.like(xh_next)
        # DECODE 1: the clipped range ends; 2: the first and last offset on the stride grid;
        # 3: whether there is any, the first partial-sum and kernel offsets
        for i in range(S):
            a = Signal(sw, name=f"dec_a_{i}")
            ad = Signal.like(xd_next, name=f"dec_d_{i}")
            ah = Signal.like(xh_next, name=f"dec_h_{i}")
            m.d.comb += [a.eq(cur_xpad + k.pos_x[i]), ad.eq(cur_xd + k.pos_x[i]),
                         ah.eq(cur_xh + k.pos_x[i])]
            with m.If(d1_en):
                m.d.sync += [d1[i].a.eq(a), *(getattr(d1[i], n).eq(v) for n, v in
                                               _range_start(a, ad, ah, k.xtop, cmd.k).items())]
            first, last = _range_end(d1[i].a, d1[i].lo, d1[i].hi, k.smask)
            with m.If(d2_en):
                m.d.sync += [d2[i].first.eq(first), d2[i].last.eq(last),
                             d2[i].ox.eq(d1[i].am >> cmd.stride_log2)]
            with m.If(d3_en):
                m.d.sync += [box[i].kx_f.eq(d2[i].first), box[i].kx_l.eq(d2[i].last),
                             box[i].any.eq(d2[i].first <= d2[i].last),
                             box[i].one.eq(d2[i].first == d2[i].last),
                             box[i].op_first.eq(row["rowbase"] + d2[i].ox),
                             box[i].xk.eq(row["krow"] + d2[i].first)]
        chunk_row = {n: Signal.like(row[n], name=f"chunk_{n}") for n in ("ky_f", "ky_l", "any")}
        chunk_row["one"] = Signal(name="chunk_one")
        with m.If(d3_en):
            m.d.sync += [*(chunk_row[n].eq(row[n]) for n in ("ky_f", "ky_l", "any")),
                         chunk_row["one"].eq(row["ky_f"] == row["ky_l"])]

        # the next non-zero after the one at idx, and whether it joins the group (M > 1)
        low = Signal(S)  # the value's position, one-hot (beside idx)
        mask_next = Signal(S)
        m.d.comb += mask_next.eq(mask & ~low)
        low_next = Signal(S)
        m.d.comb += low_next.eq(_lowest_onehot(mask_next))
        idx_next = _encode(m, low_next, S, "in_idx_next")
        more = Signal()
        if M > 1:
            m.d.comb += more.eq((mask_next != 0)
                                & ((idx >> k.blk_log2) == (idx_next >> k.blk_log2)))
        # the value's box and kernel-channel offset, selected by its one-hot position (an
        # AND-OR: dynamic indexing would multiply the index by the entry width)
        sel = {n: Signal.like(getattr(box[0], n), name=f"in_sel_{n}")
               for n in ("kx_f", "kx_l", "any", "one", "op_first", "xk")}
        m.d.comb += [sel[n].eq(_onehot_select(low, [getattr(box[i], n) for i in range(S)]))
                     for n in sel]
        chan = Signal(kdb)  # kernel offset of the value's channel
        m.d.comb += chan.eq(chunk_base + _onehot_select(low, [k.pos_jkk[i] for i in range(S)]))
        reaches = Signal()
        m.d.comb += reaches.eq(chunk_row["any"] & sel["any"])

        # where the next SM word falls, registered (the counters only move at SM words, which
        # are at least four cycles apart)
        w_last, iy_last, slice_last = Signal(), Signal(), Signal()
        m.d.sync += [w_last.eq(nxt_w == k.row_words - 1),
                     iy_last.eq(nxt_iy == cmd.in_h - 1),
                     slice_last.eq(nxt_slice == cmd.slices - 1)]
        sm_low = Signal(S)
        m.d.comb += sm_low.eq(_lowest_onehot(word[:S]))
        sm_idx = _encode(m, sm_low, S, "sm_idx")
        with m.If(ctl.start):
            m.d.sync += [mask.eq(0), nxt_w.eq(0), nxt_iy.eq(0), nxt_slice.eq(0),
                         nxt_sbase.eq(0), sm_done.eq(0)]
        with m.If(ctl.take_sm):
            m.d.sync += [mask.eq(word[:S]), idx.eq(sm_idx), low.eq(sm_low),
                         cur_w.eq(nxt_w), cur_iy.eq(nxt_iy), cur_slice.eq(nxt_slice),
                         cur_sbase.eq(nxt_sbase),
                         cur_xpad.eq(xpad_next), cur_xd.eq(xd_next), cur_xh.eq(xh_next)]
            with m.If(w_last):
                m.d.sync += nxt_w.eq(0)
                with m.If(iy_last):
                    m.d.sync += nxt_iy.eq(0)
                    with m.If(slice_last):
                        m.d.sync += sm_done.eq(1)
                    with m.Else():
                        m.d.sync += [nxt_slice.eq(nxt_slice + 1),
                                     nxt_sbase.eq(nxt_sbase + k.cpkk)]
                with m.Else():
                    m.d.sync += nxt_iy.eq(nxt_iy + 1)
            with m.Else():
                m.d.sync += nxt_w.eq(nxt_w + 1)
        with m.If(ctl.take_value):
            m.d.sync += [mask.eq(mask_next), idx.eq(idx_next), low.eq(low_next)]

        # the current value's slot of its value word: the word is used up (act_in.ready) by
        # its last slot or the chunk's last value
        A, V = cfg.fxp.act_bits, cfg.values_per_word
        act = Signal(A, name="in_act")
        word_done = Signal()
        if V > 1:
            vslot = Signal(range(V), name="in_vslot")
            with m.If(ctl.take_sm):
                m.d.sync += vslot.eq(0)
            with m.If(ctl.take_value):
                m.d.sync += vslot.eq(Mux(vslot == V - 1, 0, vslot + 1))
            with m.Switch(vslot):
                for j in range(V):
                    with m.Case(j):
                        m.d.comb += act.eq(word[j * A:(j + 1) * A])
            m.d.comb += word_done.eq((mask == 0) | (vslot == V - 1) | (mask_next == 0))
        else:
            m.d.comb += [act.eq(word[:A]), word_done.eq(1)]

        m.d.comb += [ctl.expect_sm.eq(mask == 0), ctl.more.eq(more), ctl.reaches.eq(reaches),
                     ctl.end.eq(end), ctl.word_done.eq(word_done)]
        v = self.value
        m.d.comb += [v.act.eq(act),
                     v.ky_first.eq(chunk_row["ky_f"]), v.ky_last.eq(chunk_row["ky_l"]),
                     v.one_y.eq(chunk_row["one"]),
                     v.kx_first.eq(sel["kx_f"]), v.kx_last.eq(sel["kx_l"]),
                     v.one_x.eq(sel["one"]), v.op_first.eq(sel["op_first"]),
                     v.k_first.eq(sel["xk"]), v.chan.eq(chan), v.reaches.eq(reaches)]
        return m


class MacPipeline(wiring.Component):
    """The MAC loop and the partial-sum read-modify-write.

    Ports: ``cmd``, ``geometry`` in: the pass; ``value`` in: the decoder's current value
    (``value_box_layout``: its bits and box); ``control``
    (``MAC_CONTROL``): ``group_start``/``group_join``/``issue`` in, ``last``/``reach``/
    ``group_last`` out; ``kernel_reads`` (M kernel-memory read ports): the kernel rows of the
    group's values; ``psum_banks``/``psum_bank`` in: ``PartialSumMemory``'s read data;
    ``psum_raddr`` out: the partial-sum row to read (the MAC side of the read port);
    ``write_valid``/``write_addr``/``write_data`` out: the updated row to write.

    Cycle behaviour (the schedule: ``NullHopConfig``'s docstring): ``group_start`` loads the
    value and its box, ``group_join`` adds a value to the group (slot ``gcount``). Each
    ``issue`` cycle reads the partial sums at the box's current output pixel and the kernel
    rows at its current offset, and steps to the next offset (``last`` is registered: the
    cycle is the box's last). The update then runs P1 (reads under way), P2 (data
    registered), P2b (partial products), P3 (the products added, ``write_valid``); the sums
    of the four updates before it, not yet in the memory when it read, are forwarded.
    """

    def __init__(self, cfg: NullHopConfig):
        self._cfg = cfg
        lay = nullhop_layouts(cfg)
        row = data.ArrayLayout(acc_shape(cfg.fxp), cfg.lanes)
        kread = memory.ReadPort.Signature(addr_width=cfg.kernel_mem_addr_bits,
                                          shape=lay.weight_row)
        super().__init__({
            "cmd": In(lay.command),
            "geometry": In(pass_geometry_layout(cfg)),
            "value": In(value_box_layout(cfg)),
            "control": In(MAC_CONTROL),
            "kernel_reads": In(kread).array(cfg.macs_per_channel),
            "psum_banks": In(data.ArrayLayout(row, cfg.psum_banks)),
            "psum_bank": In(range(max(2, cfg.psum_banks))),
            "psum_raddr": Out(cfg.psum_step_bits),
            "write_valid": Out(1), "write_addr": Out(cfg.psum_count_bits), "write_data": Out(row),
        })

    def elaborate(self, platform):
        m = Module()
        cfg, fxp = self._cfg, self._cfg.fxp
        cmd, k, ctl, value = self.cmd, self.geometry, self.control, self.value
        M, L = cfg.macs_per_channel, cfg.lanes
        kob = cfg.kernel_offset_bits
        kdb = cfg.kernel_addr_bits
        abits, psb = cfg.psum_count_bits, cfg.psum_step_bits
        vals = [Signal(act_shape(fxp), name=f"val_{j}") for j in range(M)]
        chans = [Signal(kdb, name=f"chan_{j}") for j in range(M)]
        gcount = Signal(range(M + 1))
        reach = Signal()
        ky, kx = Signal(kob), Signal(kob)
        kx_first, ky_last, kx_last = Signal(kob), Signal(kob), Signal(kob)
        op_addr, op_row = Signal(psb), Signal(psb)
        k_off, k_row = Signal(kdb), Signal(kdb)
        # the MAC cycle is the box's last: registered, worked out a cycle ahead
        mac_last = Signal()
        one_x = Signal()  # the box is one offset wide

        issue = Signal()  # a MAC cycle: read, and start an update
        m.d.comb += issue.eq(ctl.issue)
        with m.If(issue):
            m.d.sync += mac_last.eq(Mux(kx == kx_last, (ky + k.stride == ky_last) & one_x,
                                        (ky == ky_last) & (kx + k.stride == kx_last)))

        # walk the box by increments: kx += stride -> one output pixel left; ky += stride ->
        # one output row up; kernel offset +stride / +stride*k
        with m.If(issue):
            with m.If(kx == kx_last):
                m.d.sync += [kx.eq(kx_first), ky.eq(ky + k.stride),
                             op_row.eq(op_row - cmd.out_w), op_addr.eq(op_row - cmd.out_w),
                             k_row.eq(k_row + k.sk), k_off.eq(k_row + k.sk)]
            with m.Else():
                m.d.sync += [kx.eq(kx + k.stride), op_addr.eq(op_addr - 1),
                             k_off.eq(k_off + k.stride)]

        # a value word starts a group (its box loads) or joins it (COLLECT)
        with m.If(ctl.group_start):
            m.d.sync += [vals[0].eq(value.act), *(v.eq(0) for v in vals[1:]),
                         chans[0].eq(value.chan), gcount.eq(1), reach.eq(value.reaches),
                         ky.eq(value.ky_first), ky_last.eq(value.ky_last),
                         kx.eq(value.kx_first), kx_first.eq(value.kx_first),
                         kx_last.eq(value.kx_last), one_x.eq(value.one_x),
                         mac_last.eq(value.one_x & value.one_y),
                         op_addr.eq(value.op_first), op_row.eq(value.op_first),
                         k_off.eq(value.k_first), k_row.eq(value.k_first)]
        with m.If(ctl.group_join):
            m.d.sync += gcount.eq(gcount + 1)
            for j in range(1, M):
                with m.If(gcount == j):
                    m.d.sync += [vals[j].eq(value.act), chans[j].eq(value.chan)]
        m.d.comb += [ctl.last.eq(mac_last), ctl.reach.eq(reach),
                     ctl.group_last.eq(gcount == M - 1), self.psum_raddr.eq(op_addr)]

        krds = self.kernel_reads
        for j in range(M):
            m.d.comb += [krds[j].addr.eq(chans[j] + k_off), krds[j].en.eq(1)]
        # P1: the reads are under way; P2: their data registered; P2b: partial products;
        # P3: the products, added and written
        p1 = {"valid": Signal(name="p1_valid"), "addr": Signal(abits, name="p1_addr"),
              "vals": [Signal.like(v, name=f"p1_val_{j}") for j, v in enumerate(vals)]}
        m.d.sync += [p1["valid"].eq(issue), p1["addr"].eq(op_addr),
                     *(a.eq(b) for a, b in zip(p1["vals"], vals))]
        row_shape = data.ArrayLayout(acc_shape(fxp), L)
        # P2 holds the row read from every bank and the bank; "psum" selects (comb)
        p2_banks = Signal.like(self.psum_banks, name="p2_psum_banks")
        p2_bank = Signal.like(self.psum_bank, name="p2_psum_bank")
        p2 = {"valid": Signal(name="p2_valid"), "addr": Signal(abits, name="p2_addr"),
              "psum": Signal(row_shape, name="p2_psum"),
              "w": [Signal(nullhop_layouts(cfg).weight_row, name=f"p2_w_{j}") for j in range(M)],
              "vals": [Signal.like(v, name=f"p2_val_{j}") for j, v in enumerate(vals)],
              **{f"hz{i}": Signal(name=f"p2_hz{i}") for i in range(1, 5)}}
        p3 = {"valid": Signal(name="p3_valid"), "addr": Signal(abits, name="p3_addr"),
              "psum": Signal(row_shape, name="p3_psum"), "hz1": Signal(name="p3_hz1")}
        p2b = {n: Signal.like(p2[n], name=f"p2b_{n}")
               for n in ("valid", "addr", "psum", "hz1", "hz2", "hz3", "hz4")}
        h1_valid, h1_addr = Signal(name="h1_valid"), Signal(abits, name="h1_addr")
        m.d.sync += [h1_valid.eq(p3["valid"]), h1_addr.eq(p3["addr"])]
        m.d.comb += p2["psum"].eq(bank_select(p2_banks, p2_bank))
        m.d.sync += [p2["valid"].eq(p1["valid"]), p2["addr"].eq(p1["addr"]),
                     p2_banks.eq(self.psum_banks), p2_bank.eq(self.psum_bank),
                     *(w.eq(krds[j].data) for j, w in enumerate(p2["w"])),
                     *(a.eq(b) for a, b in zip(p2["vals"], p1["vals"])),
                     # the updates one to four cycles ahead had not been written when this
                     # read happened: take their sums from the pipeline
                     *(p2[f"hz{i}"].eq(st["valid"] & (st["addr"] == p1["addr"]))
                       for i, st in enumerate([p2, p2b, p3,
                                               {"valid": h1_valid, "addr": h1_addr}], 1))]
        # P2 -> P2b: partial-product groups; P2b -> P3: the product (of the M values) per lane
        groups = [[partial_product_groups(p2["w"][j][n], p2["vals"][j], MAC_GROUP)
                   for j in range(M)] for n in range(L)]
        gregs = [[[Signal.like(g, name=f"p2b_pp_{n}_{j}_{q}") for q, g in enumerate(gs)]
                  for j, gs in enumerate(lane)] for n, lane in enumerate(groups)]
        for n in range(L):
            for j in range(M):
                m.d.sync += [a.eq(b) for a, b in zip(gregs[n][j], groups[n][j])]
        m.d.sync += [p2b[n].eq(p2[n]) for n in p2b]
        products = Signal(data.ArrayLayout(acc_shape(fxp), L), name="p3_products")
        for n in range(L):
            m.d.sync += products[n].eq(tree_sum(g << (MAC_GROUP * q) for j in range(M)
                                                for q, g in enumerate(gregs[n][j])))
        hist = [Signal(row_shape, name=f"sum_{i}ago") for i in range(1, 5)]
        # forwarding: the sums of the updates two to four ahead already exist when this one
        # moves from P2b to P3 (they are one to three cycles old), so they are chosen then;
        # only the update one ahead, being added in that cycle, is chosen in P3
        fwd = p2b["psum"]
        for i in reversed(range(1, 4)):  # the newest matching sum wins
            fwd = Mux(p2b[f"hz{i + 1}"], hist[i - 1], fwd)
        m.d.sync += [p3["valid"].eq(p2b["valid"]), p3["addr"].eq(p2b["addr"]),
                     p3["psum"].eq(fwd), p3["hz1"].eq(p2b["hz1"])]
        sums = Signal(row_shape, name="psum_sum")
        for n in range(L):
            m.d.comb += sums[n].eq(Mux(p3["hz1"], hist[0][n], p3["psum"][n]) + products[n])
        m.d.sync += [hist[0].eq(sums), *(hist[i].eq(hist[i - 1]) for i in range(1, 4))]
        m.d.comb += [self.write_valid.eq(p3["valid"]), self.write_addr.eq(p3["addr"]),
                     self.write_data.eq(sums)]
        return m


class OutputStage(wiring.Component):
    """The output side: walker -> requantisers -> max-pool -> fill buffer -> send buffer.

    Ports: ``cmd``, ``geometry`` in: the pass (``relu``, ``pool``, the per-channel
    requantisation, the output size); ``control`` (``OUTPUT_CONTROL``): ``reset``/``active``
    in, ``pass_done`` out; ``psum_banks``/``psum_bank`` in: ``PartialSumMemory``'s read data;
    ``psum_raddr`` out: the walker's read address (registered); ``clear_valid``/``clear_addr``
    out: the row read the cycle before, to be written 0; ``act_out`` out: the output stream.

    Cycle behaviour (the schedule: ``NullHopConfig``'s docstring): ``reset`` (the last DRAIN
    cycle) starts the walker at the first chunk. The walker reads (and clears) the partial
    sums of a chunk's pooled pixels, one read per cycle (four per pixel with pooling); each
    read passes the requantisers and the max-pool into the fill buffer (``fill_latency``
    cycles after the chunk's last read). While ``active``, the fill buffer moves to the send
    buffer when the send buffer's last word leaves (or it is empty) and the walker starts the
    next chunk a cycle after; the send buffer offers the chunk's SM word, then its non-zero
    values in position order, ``values_per_word`` V to a word (slot j the j-th lowest
    remaining position; a count of the values left says which word is the chunk's last).
    ``pass_done``: the final word leaves.
    """

    def __init__(self, cfg: NullHopConfig):
        self._cfg = cfg
        lay = nullhop_layouts(cfg)
        row = data.ArrayLayout(acc_shape(cfg.fxp), cfg.lanes)
        super().__init__({
            "cmd": In(lay.command),
            "geometry": In(pass_geometry_layout(cfg)),
            "control": In(OUTPUT_CONTROL),
            "psum_banks": In(data.ArrayLayout(row, cfg.psum_banks)),
            "psum_bank": In(range(max(2, cfg.psum_banks))),
            "psum_raddr": Out(cfg.psum_count_bits),
            "clear_valid": Out(1), "clear_addr": Out(cfg.psum_addr_bits),
            "act_out": Out(stream.Signature(lay.word)),
        })

    def elaborate(self, platform):
        m = Module()
        cfg, fxp = self._cfg, self._cfg.fxp
        cmd, k, ctl = self.cmd, self.geometry, self.control
        S, L, G, parts = cfg.sm_bits, cfg.lanes, cfg.group, cfg.parts
        slots = S // G
        dim = cfg.dim_bits
        abits, psb = cfg.psum_count_bits, cfg.psum_step_bits
        go = Signal()  # the walker starts the next chunk this cycle
        # walker position: pooled pixel (wy, wx), its part (pixels wider than S), read e
        wy, wx = Signal(dim), Signal(dim)
        part = Signal(range(max(2, parts)))
        slot = Signal(range(max(2, slots)))
        e = Signal(2)
        prow, pbase = Signal(psb), Signal(psb)  # psum address of (wy, 0), (wy, wx)
        reading = Signal()
        last_e = Signal()
        m.d.comb += last_e.eq(Mux(cmd.pool, e == 3, 1))
        row_end = Signal()
        m.d.comb += row_end.eq(wx == k.wo - 1)
        last_px = Signal()
        m.d.comb += last_px.eq((wy == k.ho - 1) & row_end)
        chunk_end = Signal()  # this pixel closes the chunk (slots full or the row ends)
        m.d.comb += chunk_end.eq((slot == slots - 1) | row_end)
        rd_now = Signal()  # a read this cycle
        part_job = Signal()  # a further chunk of a wide pixel: no read, fill from pix
        if parts > 1:
            m.d.comb += part_job.eq(go & (part != 0))
        m.d.comb += rd_now.eq(reading | (go & ~part_job))
        rd_addr = Signal(psb)
        m.d.comb += rd_addr.eq(pbase + e[0] + Mux(e[1], cmd.out_w, 0))
        # the read itself happens a cycle later, from registers; the row read is cleared the
        # cycle after
        walker_rd_now, walker_rd_addr = Signal(), Signal(abits, name="walker_rd_addr")
        m.d.sync += [walker_rd_now.eq(rd_now), walker_rd_addr.eq(rd_addr)]
        clr_valid, clr_addr = Signal(), Signal(cfg.psum_addr_bits)
        m.d.sync += [clr_valid.eq(walker_rd_now), clr_addr.eq(walker_rd_addr)]
        m.d.comb += [self.psum_raddr.eq(walker_rd_addr), self.clear_valid.eq(clr_valid),
                     self.clear_addr.eq(clr_addr)]

        def next_pixel():
            with m.If(row_end):
                m.d.sync += [wx.eq(0), wy.eq(wy + 1), prow.eq(prow + (cmd.out_w << cmd.pool)),
                             pbase.eq(prow + (cmd.out_w << cmd.pool))]
            with m.Else():
                m.d.sync += [wx.eq(wx + 1), pbase.eq(pbase + (Const(1, 2) << cmd.pool))]

        meta_first = Signal()  # the chunk is its row's first (chunks start at slot 0)
        meta_final = Signal()  # the chunk is the pass's last
        m.d.comb += [meta_first.eq((wx == slot) & (part == 0)),
                     meta_final.eq(last_px & (part == parts - 1))]
        # one read per cycle while reading; the job ends with the chunk's last read
        job_last = Signal()
        m.d.comb += job_last.eq(last_e & (chunk_end if parts == 1 else 1))
        with m.If(rd_now):
            m.d.sync += e.eq(e + 1)
            with m.If(last_e):
                m.d.sync += e.eq(0)
                if parts == 1:
                    m.d.sync += slot.eq(Mux(chunk_end, 0, slot + 1))
                    next_pixel()
                else:
                    m.d.sync += part.eq(1)
            m.d.sync += reading.eq(~job_last)
        if parts > 1:
            with m.If(part_job):
                with m.If(part == parts - 1):
                    m.d.sync += part.eq(0)
                    next_pixel()
                with m.Else():
                    m.d.sync += part.eq(part + 1)

        # the reads' flags, delayed to the requantiser's output (read -> data -> register ->
        # requantiser): first/last read of the pixel, its slot, the chunk's end and flags
        flags = {"valid": rd_now, "first": e == 0, "last": last_e, "slot": slot,
                 "job_last": job_last, "meta_first": meta_first, "meta_final": meta_final}
        # walker -> read (a register) -> data -> register -> requantiser output
        delay = 3 + fxp.requant_latency
        assert delay + 2 == cfg.fill_latency  # + the max-pool and the fill registers
        flags = delay_stages(m, flags, delay, "outflag{i}_{k}")[-1]
        rd_banks = Signal.like(self.psum_banks, name="out_psum_banks")
        rd_bank = Signal.like(self.psum_bank, name="out_psum_bank")
        m.d.sync += [rd_banks.eq(self.psum_banks), rd_bank.eq(self.psum_bank)]
        prd_r = Signal(data.ArrayLayout(acc_shape(fxp), L), name="out_psum")
        m.d.comb += prd_r.eq(bank_select(rd_banks, rd_bank))
        qs = []
        for n in range(L):
            rq = m.submodules[f"requant_{n}"] = Requantizer(fxp)
            m.d.comb += [rq.en.eq(1), rq.acc.eq(prd_r[n]), rq.relu.eq(cmd.relu),
                         rq.bias.eq(cmd.requant.bias[n]), rq.mult.eq(cmd.requant.mult[n]),
                         rq.shift.eq(cmd.requant.shift[n])]
            qs.append(rq.out)
        pix = Signal(data.ArrayLayout(act_shape(fxp), L))
        with m.If(flags["valid"]):
            for n in range(L):
                with m.If(flags["first"] | (qs[n] > pix[n])):
                    m.d.sync += pix[n].eq(qs[n])
        # the fill one cycle after the pixel's last read came out
        fill = {n: Signal.like(flags[n], name=f"fill_{n}")
                for n in ("slot", "job_last", "meta_first", "meta_final")}
        fill_valid = Signal()
        m.d.sync += [fill_valid.eq(flags["valid"] & flags["last"]),
                     *(fill[n].eq(flags[n]) for n in fill)]
        b_vals = Signal(data.ArrayLayout(act_shape(fxp), S))
        b_nz = Signal(S, name="fill_nonzero")  # which of b_vals are non-zero, filled beside
        b_full, b_first, b_final = Signal(), Signal(), Signal()
        swap = Signal()

        def fill_values(pos, values):
            return [s for p, v in zip(pos, values) for s in (b_vals[p].eq(v), b_nz[p].eq(v != 0))]

        with m.If(swap):
            m.d.sync += [b_vals.eq(0), b_nz.eq(0), b_full.eq(0)]
        with m.If(fill_valid):
            if parts == 1:
                for s in range(slots):
                    with m.If(fill["slot"] == s):
                        m.d.sync += fill_values(range(s * G, s * G + G),
                                                [pix[n] for n in range(G)])
            else:
                m.d.sync += fill_values(range(S), [pix[n] for n in range(S)])
            with m.If(fill["job_last"]):
                m.d.sync += [b_full.eq(1), b_first.eq(fill["meta_first"]),
                             b_final.eq(fill["meta_final"])]
        if parts > 1:
            with m.If(part_job):
                with m.Switch(part):
                    for p in range(1, parts):
                        with m.Case(p):
                            m.d.sync += fill_values(range(S),
                                                    [pix[p * S + n] for n in range(S)])
                m.d.sync += [b_full.eq(1), b_first.eq(0), b_final.eq(meta_final)]

        # the send buffer (A): SM word, then the non-zero values in position order, V to a
        # value word (slot j: the j-th lowest remaining position)
        A, V = fxp.act_bits, cfg.values_per_word
        a_vals = Signal(data.ArrayLayout(act_shape(fxp), S))
        a_mask, a_rem = Signal(S, name="send_mask"), Signal(S, name="send_rem")
        a_low = Signal(S, name="send_low")  # the next value's position, one-hot
        a_first, a_final = Signal(name="send_first"), Signal(name="send_final")
        a_sm, a_val = Signal(), Signal()  # offering the SM word / a value word
        nz = Signal(S)
        m.d.comb += nz.eq(b_nz)
        nz_low = Signal(S)
        m.d.comb += nz_low.eq(_lowest_onehot(nz))
        lows = [a_low]  # the positions of this value word's slots, one-hot each
        rest = a_rem & ~a_low
        for j in range(1, V):
            low_j = Signal(S, name=f"send_low_{j}")
            m.d.comb += low_j.eq(_lowest_onehot(rest))
            lows.append(low_j)
            rest = rest & ~low_j
        rem_next, rem_low = Signal(S), Signal(S)
        m.d.comb += [rem_next.eq(rest), rem_low.eq(_lowest_onehot(rem_next))]
        a_one = Signal(name="send_one")  # the value word is the chunk's last
        if V > 1:  # values left from this word on, counted down
            a_left = Signal(range(S + 1), name="send_left")
            m.d.comb += a_one.eq(a_left <= V)
        else:
            a_one_r = Signal(name="send_one_r")
            m.d.comb += a_one.eq(a_one_r)
        out = self.act_out
        take = Signal()
        m.d.comb += take.eq(out.valid & out.ready)
        a_done = Signal()  # the send buffer's last word leaves this cycle
        m.d.comb += a_done.eq(take & ((a_sm & (a_mask == 0)) | (a_val & a_one)))
        a_free = Signal()
        m.d.comb += a_free.eq(~(a_sm | a_val) | a_done)
        m.d.comb += swap.eq(ctl.active & b_full & a_free)
        m.d.comb += [out.valid.eq(a_sm | a_val)]
        with m.If(a_sm):
            m.d.comb += [out.payload.data.eq(a_mask), out.payload.first.eq(a_first),
                         out.payload.last.eq(a_final & (a_mask == 0))]
        with m.Else():
            m.d.comb += [out.payload.data.eq(Cat(*(
                             _onehot_select(lw, [a_vals[i] for i in range(S)]).as_unsigned()[:A]
                             for lw in lows))),
                         out.payload.last.eq(a_final & a_one)]
        with m.If(take & a_sm & (a_mask != 0)):
            m.d.sync += [a_sm.eq(0), a_val.eq(1)]
        with m.If(take & a_val):
            m.d.sync += [a_rem.eq(rem_next), a_low.eq(rem_low)]
            if V > 1:
                m.d.sync += a_left.eq(a_left - V)
            else:
                m.d.sync += a_one_r.eq((rem_next & ~rem_low) == 0)
        with m.If(a_done):
            m.d.sync += [a_sm.eq(0), a_val.eq(0)]
        with m.If(swap):
            m.d.sync += [a_vals.eq(b_vals), a_mask.eq(nz), a_rem.eq(nz), a_low.eq(nz_low),
                         a_first.eq(b_first), a_final.eq(b_final), a_sm.eq(1), a_val.eq(0)]
            if V > 1:
                m.d.sync += a_left.eq(tree_sum([nz[i] for i in range(S)]))
            else:
                m.d.sync += a_one_r.eq((nz & ~nz_low) == 0)
        m.d.comb += ctl.pass_done.eq(a_done & a_final)
        m.d.sync += go.eq(swap & ~b_final)
        with m.If(ctl.reset):  # entering the output phase: the first chunk starts
            m.d.sync += [wy.eq(0), wx.eq(0), part.eq(0), slot.eq(0), e.eq(0), prow.eq(0),
                         pbase.eq(0), reading.eq(0), go.eq(1), b_full.eq(0), b_vals.eq(0),
                         b_nz.eq(0), a_sm.eq(0), a_val.eq(0)]
        return m


class PassControl(wiring.Component):
    """The pass FSM (IDLE, PRIME, LOAD, FETCH, DECODE, MAC, COLLECT, DRAIN, OUT) and the
    kernel load.

    Ports: ``cmd``, ``weights``, ``act_in`` in: ``NullHopBlock``'s streams (``act_in``'s data
    goes to the decoder and the MAC loop beside this, which only takes its beats);
    ``command`` out: the accepted command, held for the pass; ``geometry`` in: the pass's
    constants (``kk``, ``slices_cp`` for the kernel load); ``kernel_write``: the kernel
    memory's write port; ``decoder`` (``DECODER_CONTROL``), ``mac`` (``MAC_CONTROL``),
    ``output`` (``OUTPUT_CONTROL``): the strobes to the units and their state.

    Cycle behaviour: the states and their lengths are ``NullHopConfig``'s cycle schedule.
    FETCH, COLLECT and MAC's last cycle *use* ``act_in``'s word when it is valid, and accept
    it (``ready``) only when the decoder's ``word_done`` says the use takes its last value
    (a value word of V values is used V times, then accepted). IDLE accepts a command
    (``decoder.start``); PRIME waits ``prime_cycles``; LOAD writes one weight beat per cycle
    to entry ``wcount``; FETCH takes a word (an SM word goes on to DECODE's
    ``decode_cycles`` cycles, a value starts a group: COLLECT while the next non-zero joins
    it, then MAC if its box is non-empty) or sees the end of the input; MAC issues one box
    offset per cycle and its last cycle already takes the next word; DRAIN waits
    ``drain_cycles`` for the last update, then OUT until the final output word.
    """

    def __init__(self, cfg: NullHopConfig):
        self._cfg = cfg
        lay = nullhop_layouts(cfg)
        kwrite = memory.WritePort.Signature(addr_width=cfg.kernel_mem_addr_bits,
                                            shape=lay.weight_row)
        super().__init__({
            "cmd": In(stream.Signature(lay.command)),
            "weights": In(stream.Signature(lay.weight_row)),
            "act_in": In(stream.Signature(lay.word)),
            "command": Out(lay.command),
            "geometry": In(pass_geometry_layout(cfg)),
            "kernel_write": Out(kwrite).flip(),
            "decoder": Out(DECODER_CONTROL),
            "mac": Out(MAC_CONTROL),
            "output": Out(OUTPUT_CONTROL),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._cfg
        M = cfg.macs_per_channel
        k, dec, mac, out = self.geometry, self.decoder, self.mac, self.output
        kwr = self.kernel_write
        cmd = Signal(nullhop_layouts(cfg).command, name="cmd")
        m.d.comb += self.command.eq(cmd)
        # want: the state uses act_in's word this cycle if it is valid (use); a value word of
        # several values is only accepted (ready) with its last one
        want, use = Signal(), Signal()
        m.d.comb += [use.eq(self.act_in.valid & want),
                     self.act_in.ready.eq(want & dec.word_done)]
        kdb = cfg.kernel_addr_bits

        # kernel load: one beat per cycle, entry (c * k + ky) * k + kx
        wcount = Signal(kdb)
        wk = Signal(range(cfg.max_k * cfg.max_k + 1))
        wc = Signal(kdb)
        m.d.comb += [kwr.addr.eq(wcount), kwr.data.eq(self.weights.payload)]

        def take_word():
            """A word accepted by FETCH or by MAC's last cycle: an SM word or a value."""
            with m.If(dec.expect_sm):
                m.d.comb += dec.take_sm.eq(1)
                m.next = "DECODE"
            with m.Else():
                m.d.comb += [dec.take_value.eq(1), mac.group_start.eq(1)]
                if M > 1:
                    with m.If(dec.more):
                        m.next = "COLLECT"
                with m.If(~dec.more & dec.reaches):
                    m.next = "MAC"
                with m.Elif(~dec.more):
                    m.next = "FETCH"

        prime = Signal(range(max(cfg.prime_cycles, cfg.drain_cycles)))  # PRIME, DRAIN
        dcnt = Signal(range(cfg.decode_cycles))
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    m.d.comb += dec.start.eq(1)
                    m.d.sync += [cmd.eq(self.cmd.payload), wcount.eq(0), wk.eq(0), wc.eq(0),
                                 prime.eq(0)]
                    m.next = "PRIME"
            with m.State("PRIME"):
                m.d.sync += prime.eq(prime + 1)
                with m.If(prime == cfg.prime_cycles - 1):
                    with m.If(cmd.load):
                        m.next = "LOAD"
                    with m.Else():
                        m.next = "FETCH"
            with m.State("LOAD"):
                m.d.comb += [self.weights.ready.eq(1), kwr.en.eq(self.weights.valid)]
                with m.If(self.weights.valid):
                    m.d.sync += [wcount.eq(wcount + 1), wk.eq(wk + 1)]
                    with m.If(wk == k.kk - 1):
                        m.d.sync += [wk.eq(0), wc.eq(wc + 1)]
                        with m.If(wc == k.slices_cp - 1):
                            m.next = "FETCH"
            with m.State("FETCH"):
                m.d.comb += want.eq(~dec.end)
                with m.If(dec.end):
                    m.d.sync += prime.eq(0)
                    with m.If(cmd.emit):
                        m.next = "DRAIN"
                    with m.Else():
                        m.next = "IDLE"
                with m.Elif(use):
                    take_word()
            with m.State("DECODE"):
                m.d.sync += dcnt.eq(dcnt + 1)
                m.d.comb += [dec.decode_en[i].eq(dcnt == i) for i in range(3)]
                with m.If(dcnt == cfg.decode_cycles - 1):
                    m.d.sync += dcnt.eq(0)
                    m.next = "FETCH"
            with m.State("MAC"):
                m.d.comb += [mac.issue.eq(1), want.eq(mac.last & ~dec.end)]
                with m.If(mac.last):
                    with m.If(use):
                        take_word()
                    with m.Else():
                        m.next = "FETCH"
            if M > 1:
                with m.State("COLLECT"):
                    m.d.comb += want.eq(1)
                    with m.If(use):
                        m.d.comb += [dec.take_value.eq(1), mac.group_join.eq(1)]
                        with m.If(~dec.more | mac.group_last):
                            with m.If(mac.reach):
                                m.next = "MAC"
                            with m.Else():
                                m.next = "FETCH"
            with m.State("DRAIN"):  # the last update reaches the memory
                m.d.sync += prime.eq(prime + 1)
                with m.If(prime == cfg.drain_cycles - 1):
                    m.d.comb += out.reset.eq(1)
                    m.next = "OUT"
            with m.State("OUT"):
                m.d.comb += out.active.eq(1)
                with m.If(out.pass_done):
                    m.next = "IDLE"
        return m


class NullHopBlock(wiring.Component):
    """Sparse convolution block: compressed input stream -> zero-skipping MACs -> bias,
    requantisation, ReLU, optional 2x2 max-pool -> re-encoded compressed output stream.

    Ports (``amaranth.lib.stream``, payloads from ``nullhop_layouts``):
      ``cmd``     in:  one beat per pass (geometry, flags, per-channel bias/mult/shift).
      ``weights`` in:  if ``load``: ``slices * Cp * k * k`` beats of ``lanes`` weights, the
                       entry of input channel c, kernel row ky, column kx at position
                       ``(c * k + ky) * k + kx`` (c counted over the pass's padded slices).
      ``act_in``  in:  the pass's input: its slices, each ``in_h`` rows of SM + NZVL words
                       (``sim.sparse_format``, values packed ``values_per_word`` to a word;
                       the flags are not checked, the block counts).
      ``act_out`` out: if ``emit``: the pass's output as one slice of ``lanes`` channels and
                       ``out_h/2^pool`` rows, with ``first`` on each row's first SM word and
                       ``last`` on the pass's final word.

    Sub-modules: ``control`` (``PassControl``), ``geometry`` (``PassGeometry``), ``decoder``
    (``SparsityMapDecoder``), ``mac`` (``MacPipeline``), ``output`` (``OutputStage``), the
    kernel memory ``kmem`` and the partial-sum memory ``psum`` (``PartialSumMemory``), whose
    one read port belongs to the output stage in the output phase and to the MAC loop
    otherwise, and whose write port to the MAC loop's updates before the output stage's
    clears.

    Cycle schedule: stated once, in the ``NullHopConfig`` docstring (hw/config.py), beside
    the formulas (``pass_cycles``, ``output_cycles``, ``chunk_fills``) that ``sim.nullhop``
    and the RTL tests share.
    """

    def __init__(self, cfg: NullHopConfig):
        self._cfg = cfg
        lay = nullhop_layouts(cfg)
        super().__init__({
            "cmd": In(stream.Signature(lay.command)),
            "weights": In(stream.Signature(lay.weight_row)),
            "act_in": In(stream.Signature(lay.word)),
            "act_out": Out(stream.Signature(lay.word)),
        })

    @property
    def config(self) -> NullHopConfig:
        return self._cfg

    def elaborate(self, platform):
        m = Module()
        cfg = self._cfg
        m.submodules.control = control = PassControl(cfg)
        m.submodules.pass_geometry = geometry = PassGeometry(cfg)
        m.submodules.decoder = decoder = SparsityMapDecoder(cfg)
        m.submodules.mac = mac = MacPipeline(cfg)
        m.submodules.output = output = OutputStage(cfg)
        m.submodules.kmem = kmem = memory.Memory(
            shape=nullhop_layouts(cfg).weight_row, depth=cfg.kernel_depth, init=[])
        # not transparent: the update pipeline forwards its own recent sums, so the RAM's
        # output goes straight into a register (no bypass multiplexer after it)
        m.submodules.psum = psum = PartialSumMemory(cfg)

        for name in ("cmd", "weights", "act_in"):
            wiring.connect(m, wiring.flipped(getattr(self, name)), getattr(control, name))
        wiring.connect(m, output.act_out, wiring.flipped(self.act_out))
        wiring.connect(m, control.decoder, decoder.control)
        wiring.connect(m, control.mac, mac.control)
        wiring.connect(m, control.output, output.control)
        wiring.connect(m, control.kernel_write, kmem.write_port())
        for port in mac.kernel_reads:
            wiring.connect(m, port, kmem.read_port())
        m.d.comb += [*(unit.cmd.eq(control.command) for unit in (geometry, decoder, mac, output)),
                     *(unit.geometry.eq(geometry.geometry)
                       for unit in (control, decoder, mac, output)),
                     decoder.word.eq(self.act_in.payload.data), mac.value.eq(decoder.value),
                     *(unit.psum_banks.eq(psum.banks) for unit in (mac, output)),
                     *(unit.psum_bank.eq(psum.bank) for unit in (mac, output))]
        # the partial-sum ports: the walker reads in the output phase, the MAC loop otherwise;
        # an update's write goes before a clear (clears only start after DRAIN, once the last
        # update is written)
        m.d.comb += [psum.ren.eq(1), psum.raddr.eq(Mux(control.output.active, output.psum_raddr,
                                                       mac.psum_raddr))]
        with m.If(mac.write_valid):
            m.d.comb += [psum.wen.eq(1), psum.waddr.eq(mac.write_addr),
                         psum.wdata.eq(mac.write_data)]
        with m.Elif(output.clear_valid):
            m.d.comb += [psum.wen.eq(1), psum.waddr.eq(output.clear_addr)]
        return m
