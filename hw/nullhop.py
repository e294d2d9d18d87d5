"""NullHop-style sparse-feature-map block (Aimar et al., "NullHop: A Flexible Convolutional
Neural Network Accelerator Based on Sparse Representations of Feature Maps", TNNLS 2018).

Feature maps enter and leave compressed (sparsity map + non-zero value list, the stream of
``sim.sparse_format``); the compute core spends MAC cycles only on non-zero input values.
The host-side driver (``sim.nullhop.plan_layer``) cuts a layer into *passes*: one group of
``lanes = macs / macs_per_channel`` output channels x one band of output rows x one tile of
input channels; a pass's input is the band's input rows of the tile's slices, its output
one slice of the band.

Every path between registers is short enough for 100 MHz on an ECP5 (``docs/fpga.md``): the
decoder works out a chunk's kernel offsets in the three cycles after its SM word, the MAC loop
walks its addresses by increments, the partial-sum update is a read-modify-write pipeline
with forwarding, and the output stage streams read-outs through the pipelined requantiser
into a double-buffered encoder.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
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


def _lowest_set(m: Module, value, width: int, name: str):
    """Index of the lowest set bit of ``value`` (0 when none)."""
    low = Signal(width, name=f"{name}_onehot")
    m.d.comb += low.eq(_lowest_onehot(value))
    return _encode(m, low, width, name)


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
    none). ``(a - lo) & smask`` only needs the low bits."""
    lb = len(smask)
    first = lo.as_signed() + ((a[:lb] - lo[:lb]) & smask)
    last = hi.as_signed() - ((a[:lb] - hi[:lb]) & smask)
    return first, last


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


class NullHopBlock(wiring.Component):
    """Sparse convolution block: compressed input stream -> zero-skipping MACs -> bias,
    requantisation, ReLU, optional 2x2 max-pool -> re-encoded compressed output stream.

    Ports (``amaranth.lib.stream``, payloads from ``nullhop_layouts``):
      ``cmd``     in:  one beat per pass (geometry, flags, per-channel bias/mult/shift).
      ``weights`` in:  if ``load``: ``slices * Cp * k * k`` beats of ``lanes`` weights, the
                       entry of input channel c, kernel row ky, column kx at position
                       ``(c * k + ky) * k + kx`` (c counted over the pass's padded slices).
      ``act_in``  in:  the pass's input: its slices, each ``in_h`` rows of SM + NZVL words
                       (``sim.sparse_format``; the flags are not checked, the block counts).
      ``act_out`` out: if ``emit``: the pass's output as one slice of ``lanes`` channels and
                       ``out_h/2^pool`` rows, with ``first`` on each row's first SM word and
                       ``last`` on the pass's final word.

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
        cmd = Signal(nullhop_layouts(self._cfg).command)
        self._memories(m)
        k = self._pass_constants(m, cmd)
        dec = self._decoder(m, cmd, k)
        self._mac_loop(m, cmd, k)
        self._output_stage(m, cmd, k)
        self._control(m, cmd, k, dec)
        return m

    # ---- memories -------------------------------------------------------------------------
    def _memories(self, m):
        cfg, fxp = self._cfg, self._cfg.fxp
        lay = nullhop_layouts(cfg)
        m.submodules.kmem = kmem = memory.Memory(
            shape=lay.weight_row, depth=cfg.kernel_depth, init=[])
        # not transparent: the update pipeline forwards its own recent sums, so the RAM's
        # output goes straight into a register (no bypass multiplexer after it)
        m.submodules.psum = self._psum = PartialSumMemory(cfg)
        self._kwr = kmem.write_port()
        self._krds = [kmem.read_port() for _ in range(cfg.macs_per_channel)]

    # ---- per-pass constants: registered from the command, ready from the pass's 3rd cycle --
    def _pass_constants(self, m, cmd):
        cfg = self._cfg
        S = cfg.sm_bits
        dim, kb = cfg.dim_bits, cfg.k_bits
        kdb = cfg.kernel_addr_bits
        p_bits = cfg.position_bits
        values = {
            "kk": (product(cmd.k, cmd.k), 2 * kb),
            "stride": (Const(1, 4) << cmd.stride_log2, 4),
            "smask": ((Const(1, 4) << cmd.stride_log2) - 1, 3),
            "xtop": ((cmd.out_w - 1) << cmd.stride_log2, dim + 3),
            "ytop": ((cmd.out_h - 1) << cmd.stride_log2, dim + 3),
            "sk": (cmd.k << cmd.stride_log2, kb + 3),
            "cp_mask": ((Const(1, p_bits) << cmd.slice_log2) - 1, p_bits),
            "slices_cp": (cmd.slices << cmd.slice_log2, kdb),
            "row_words": (((cmd.in_w << cmd.slice_log2) + (S - 1)) >> ceil_log2(S), p_bits),
            "wpool": (cmd.out_w << cmd.pool, dim + 1),
            "ho": (cmd.out_h >> cmd.pool, dim),
            "wo": (cmd.out_w >> cmd.pool, dim),
            "blk_log2": (Mux(cmd.slice_log2 < ceil_log2(S), cmd.slice_log2, ceil_log2(S)),
                         max(1, ceil_log2(S + 1))),
        }
        k = {}
        for name, (value, width) in values.items():
            k[name] = Signal(width, name=f"k_{name}")
            m.d.sync += k[name].eq(value)
        # pad - top and pad - (k - 1) of the rows, and i >> slice_log2 of the positions: the
        # kernel-box comparisons become additions done beside each other
        sw = dim + kb + 4
        k["top_off"] = Signal(signed(sw), name="k_top_off")
        k["k_off"] = Signal(signed(sw), name="k_k_off")
        m.d.sync += [k["top_off"].eq(cmd.pad_top - ((cmd.out_h - 1) << cmd.stride_log2)),
                     k["k_off"].eq(cmd.pad_top - (cmd.k - 1))]
        k["pos_x"] = [Signal(range(S), name=f"k_pos_x_{i}") for i in range(S)]
        m.d.sync += [r.eq(Const(i, ceil_log2(S) or 1) >> cmd.slice_log2)
                     for i, r in enumerate(k["pos_x"])]
        # multiples of k*k: kernel-memory offsets of a chunk's channels and of a slice
        k["jkk"] = [Signal(kdb, name=f"k_jkk_{j}") for j in range(min(cfg.lanes, S))]
        m.d.sync += [r.eq(tree_sum([k["kk"] << b for b in range(j.bit_length()) if j >> b & 1]
                               or [Const(0)])) for j, r in enumerate(k["jkk"])]
        # position i's channel offset within its chunk: jkk[i mod min(Cp, S)]
        k["pos_jkk"] = [Signal(kdb, name=f"k_pos_jkk_{i}") for i in range(S)]
        cpm = Signal(range(S), name="k_cp_low_mask")
        m.d.comb += cpm.eq(((Const(1, ceil_log2(S) + 1) << cmd.slice_log2) - 1)[:max(1, ceil_log2(S))])
        for i, r in enumerate(k["pos_jkk"]):
            with m.Switch(Const(i, max(1, ceil_log2(S))) & cpm):
                for j, jkk in enumerate(k["jkk"]):
                    with m.Case(j):
                        m.d.sync += r.eq(jkk)
        k["cpkk"] = Signal(kdb, name="k_cpkk")
        m.d.sync += k["cpkk"].eq(k["kk"] << cmd.slice_log2)
        return k

    # ---- input decoder ---------------------------------------------------------------------
    def _decoder(self, m, cmd, k):
        """SM words, the per-position kernel boxes of each chunk (``NullHopConfig.decode_cycles`` DECODE cycles), the
        kernel rows of each input row (in the background) and the value take."""
        cfg = self._cfg
        S, M = cfg.sm_bits, cfg.macs_per_channel
        log2s = ceil_log2(S)
        dim, kb = cfg.dim_bits, cfg.k_bits
        kdb = cfg.kernel_addr_bits
        p_bits = cfg.position_bits
        abits = cfg.psum_count_bits
        sw = dim + kb + 4  # coordinate + padding arithmetic

        d = {}  # registers, and what the rest of the block reads
        d["mask"] = mask = Signal(S)
        d["idx"] = idx = Signal(range(max(2, S)))
        cur_w, nxt_w = Signal(p_bits), Signal(p_bits)
        cur_iy, nxt_iy = Signal(dim), Signal(dim)
        cur_slice, nxt_slice = Signal.like(cmd.slices), Signal.like(cmd.slices)
        cur_sbase, nxt_sbase = Signal(kdb), Signal(kdb)  # kernel offset of the slice
        d.update(cur_w=cur_w, nxt_w=nxt_w, cur_iy=cur_iy, nxt_iy=nxt_iy, cur_slice=cur_slice,
                 nxt_slice=nxt_slice, cur_sbase=cur_sbase, nxt_sbase=nxt_sbase)
        d["sm_done"] = Signal()
        d["end"] = end = Signal()
        m.d.comb += end.eq((mask == 0) & d["sm_done"])

        # kernel rows of input row nxt_iy, four stages (R1..R4), read at the third DECODE
        # cycle of the row's chunks: SM words are >= 4 cycles apart, so by then nxt_iy has
        # been the chunk's row for at least 4 cycles (and, for a pass's first row, since the
        # command: 1 + prime_cycles + 3 cycles)
        ay, dy, hy = Signal(sw), Signal(signed(sw + 1)), Signal(signed(sw + 1))
        m.d.comb += [ay.eq(nxt_iy + cmd.pad_top), dy.eq(nxt_iy + k["top_off"]),
                     hy.eq(nxt_iy + k["k_off"])]
        r1 = {n: Signal(sw, name=f"row1_{n}") for n in ("a", "lo", "am", "hi")}
        m.d.sync += [r1["a"].eq(ay), *(r1[n].eq(v) for n, v in
                                        _range_start(ay, dy, hy, k["ytop"], cmd.k).items())]
        ky_f, ky_l = _range_end(r1["a"], r1["lo"], r1["hi"], k["smask"])
        r2 = {n: Signal(sw, name=f"row2_{n}") for n in ("ky_f", "ky_l", "oy_f")}
        m.d.sync += [r2["ky_f"].eq(ky_f), r2["ky_l"].eq(ky_l),
                     r2["oy_f"].eq(r1["am"] >> cmd.stride_log2)]
        groups = partial_product_groups(cmd.out_w, r2["oy_f"][:dim], MAC_GROUP)
        r3 = {"g": [Signal(abits + 4, name=f"row3_g{j}") for j in range(len(groups))],
              "ky_f": Signal(kb + 1, name="row3_ky_f"), "ky_l": Signal(kb + 1, name="row3_ky_l"),
              "any": Signal(name="row3_any"), "krow": Signal(kdb, name="row3_krow")}
        m.d.sync += [*(r.eq(g) for r, g in zip(r3["g"], groups)),
                     r3["ky_f"].eq(r2["ky_f"]), r3["ky_l"].eq(r2["ky_l"]),
                     r3["any"].eq(r2["ky_f"].as_signed() <= r2["ky_l"].as_signed()),
                     r3["krow"].eq(product(cmd.k, r2["ky_f"][:kb + 1]))]
        row = {n: Signal.like(v, name=f"row4_{n}") for n, v in r3.items() if n != "g"}
        row["rowbase"] = Signal(abits + 4, name="row4_rowbase")
        m.d.sync += [*(row[n].eq(r3[n]) for n in row if n != "rowbase"),
                     row["rowbase"].eq(tree_sum(g << (MAC_GROUP * j)
                                                for j, g in enumerate(r3["g"])))]

        # the chunk's kernel-memory base: the slice's, plus (pixels wider than S) the
        # channels of the pixel before the chunk
        d["chunk_base"] = chunk_base = Signal(kdb)
        if cfg.lanes > S:
            hm = Signal(p_bits)
            m.d.comb += hm.eq(k["cp_mask"] >> log2s)
            cb1 = Signal(p_bits)
            m.d.sync += cb1.eq(cur_w & hm)
            m.d.sync += chunk_base.eq(cur_sbase + (product(k["kk"], cb1) << log2s))
        else:  # Cp <= lanes <= S: a chunk starts at a pixel
            cb1 = Signal(kdb)
            m.d.sync += [cb1.eq(cur_sbase), chunk_base.eq(cb1)]

        # DECODE 1 and 2: the kernel box of every position of the chunk
        d1_en, d2_en, d3_en = Signal(), Signal(), Signal()
        d.update(d1_en=d1_en, d2_en=d2_en, d3_en=d3_en)
        pos_lay = data.StructLayout({"a": sw, "lo": sw, "am": sw, "hi": sw})
        end_lay = data.StructLayout({"first": signed(kb + 2), "last": signed(kb + 2),
                                     "ox": sw})
        box_lay = data.StructLayout({"kx_f": kb + 1, "kx_l": kb + 1, "any": 1, "one": 1,
                                     "op_first": abits + 4, "xk": kdb})
        d1 = Signal(data.ArrayLayout(pos_lay, S))
        d2 = Signal(data.ArrayLayout(end_lay, S))
        box = Signal(data.ArrayLayout(box_lay, S))
        d["box"] = box
        # x + pad of the chunk's position 0, from nxt_w in the background, taken with the SM
        # word; position i adds i >> slice_log2 (x = (w * S + i) >> slice_log2)
        # (and its x + pad - top, x + pad - (k - 1)) two cycles after nxt_w moved
        xpad_next = Signal(sw)
        m.d.sync += xpad_next.eq((Cat(Const(0, log2s), nxt_w) >> cmd.slice_log2)
                                 + cmd.pad_left)
        xd_next, xh_next = Signal(signed(sw + 1)), Signal(signed(sw + 1))
        m.d.sync += [xd_next.eq(xpad_next - k["xtop"]), xh_next.eq(xpad_next - (cmd.k - 1))]
        cur_xpad, cur_xd, cur_xh = Signal(sw), Signal.like(xd_next), Signal.like(xh_next)
        d["take_x"] = [cur_xpad.eq(xpad_next), cur_xd.eq(xd_next), cur_xh.eq(xh_next)]
        # DECODE 1: the clipped range ends; 2: the first and last offset on the stride grid;
        # 3: whether there is any, the first partial-sum and kernel offsets
        for i in range(S):
            a = Signal(sw, name=f"dec_a_{i}")
            ad, ah = Signal.like(xd_next, name=f"dec_d_{i}"), Signal.like(xh_next, name=f"dec_h_{i}")
            m.d.comb += [a.eq(cur_xpad + k["pos_x"][i]), ad.eq(cur_xd + k["pos_x"][i]),
                         ah.eq(cur_xh + k["pos_x"][i])]
            with m.If(d1_en):
                m.d.sync += [d1[i].a.eq(a), *(getattr(d1[i], n).eq(v) for n, v in
                                               _range_start(a, ad, ah, k["xtop"], cmd.k).items())]
            first, last = _range_end(d1[i].a, d1[i].lo, d1[i].hi, k["smask"])
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
        d["chunk_row"] = chunk_row
        with m.If(d3_en):
            m.d.sync += [*(chunk_row[n].eq(row[n]) for n in ("ky_f", "ky_l", "any")),
                         chunk_row["one"].eq(row["ky_f"] == row["ky_l"])]

        # the next non-zero after the one at idx, and whether it joins the group (M > 1)
        d["low"] = low = Signal(S)  # the value's position, one-hot (beside idx)
        mask_next = Signal(S)
        m.d.comb += mask_next.eq(mask & ~low)
        d["mask_next"] = mask_next
        d["low_next"] = low_next = Signal(S)
        m.d.comb += low_next.eq(_lowest_onehot(mask_next))
        d["idx_next"] = idx_next = _encode(m, low_next, S, "in_idx_next")
        d["more"] = more = Signal()
        if M > 1:
            m.d.comb += more.eq((mask_next != 0)
                                & ((idx >> k["blk_log2"]) == (idx_next >> k["blk_log2"])))
        # the value's box and kernel-channel offset, selected by its one-hot position (an
        # AND-OR: dynamic indexing would multiply the index by the entry width)
        d["sel"] = sel = {n: Signal.like(getattr(box[0], n), name=f"in_sel_{n}")
                          for n in ("kx_f", "kx_l", "any", "one", "op_first", "xk")}
        m.d.comb += [sel[n].eq(_onehot_select(low, [getattr(box[i], n) for i in range(S)]))
                     for n in sel]
        d["chan"] = chan = Signal(kdb)  # kernel offset of the value's channel
        m.d.comb += chan.eq(chunk_base + _onehot_select(low, k["pos_jkk"]))
        d["reaches"] = reaches = Signal()
        m.d.comb += reaches.eq(chunk_row["any"] & sel["any"])
        return d

    # ---- MAC loop and partial-sum read-modify-write ---------------------------------------
    def _mac_loop(self, m, cmd, k):
        cfg, fxp = self._cfg, self._cfg.fxp
        M, L = cfg.macs_per_channel, cfg.lanes
        kb = cfg.k_bits
        kdb = cfg.kernel_addr_bits
        abits = cfg.psum_count_bits
        r = {}
        r["vals"] = vals = [Signal(act_shape(fxp), name=f"val_{j}") for j in range(M)]
        r["chans"] = chans = [Signal(kdb, name=f"chan_{j}") for j in range(M)]
        r["gcount"] = Signal(range(M + 1))
        r["reach"] = Signal()
        ky, kx = Signal(kb + 1), Signal(kb + 1)
        kx_first, ky_last, kx_last = Signal(kb + 1), Signal(kb + 1), Signal(kb + 1)
        op_addr, op_row = Signal(abits + 4), Signal(abits + 4)
        k_off, k_row = Signal(kdb), Signal(kdb)
        r.update(ky=ky, kx=kx, kx_first=kx_first, ky_last=ky_last, kx_last=kx_last,
                 op_addr=op_addr, op_row=op_row, k_off=k_off, k_row=k_row)
        # the MAC cycle is the box's last: registered, worked out a cycle ahead
        r["mac_last"] = mac_last = Signal()
        r["one_x"] = one_x = Signal()  # the box is one offset wide

        r["issue"] = issue = Signal()  # a MAC cycle: read, and start an update
        self._mac = r
        with m.If(issue):
            m.d.sync += mac_last.eq(Mux(kx == kx_last, (ky + k["stride"] == ky_last) & one_x,
                                        (ky == ky_last) & (kx + k["stride"] == kx_last)))

        # walk the box by increments: kx += stride -> one output pixel left; ky += stride ->
        # one output row up; kernel offset +stride / +stride*k
        with m.If(issue):
            with m.If(kx == kx_last):
                m.d.sync += [kx.eq(kx_first), ky.eq(ky + k["stride"]),
                             op_row.eq(op_row - cmd.out_w), op_addr.eq(op_row - cmd.out_w),
                             k_row.eq(k_row + k["sk"]), k_off.eq(k_row + k["sk"])]
            with m.Else():
                m.d.sync += [kx.eq(kx + k["stride"]), op_addr.eq(op_addr - 1),
                             k_off.eq(k_off + k["stride"])]

        psum = self._psum
        for j in range(M):
            m.d.comb += [self._krds[j].addr.eq(chans[j] + k_off), self._krds[j].en.eq(1)]
        # P1: the reads are under way; P2: their data registered; P2b: partial products;
        # P3: the products, added and written
        p1 = {"valid": Signal(name="p1_valid"), "addr": Signal(abits, name="p1_addr"),
              "vals": [Signal.like(v, name=f"p1_val_{j}") for j, v in enumerate(vals)]}
        m.d.sync += [p1["valid"].eq(issue), p1["addr"].eq(op_addr),
                     *(a.eq(b) for a, b in zip(p1["vals"], vals))]
        row_shape = data.ArrayLayout(acc_shape(fxp), L)
        # P2 holds the row read from every bank and the bank; "psum" selects (comb)
        p2_banks = Signal.like(psum.banks, name="p2_psum_banks")
        p2_bank = Signal.like(psum.bank, name="p2_psum_bank")
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
                     p2_banks.eq(psum.banks), p2_bank.eq(psum.bank),
                     *(w.eq(self._krds[j].data) for j, w in enumerate(p2["w"])),
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
        self._p3 = p3
        self._sums = sums
        r["busy"] = p1["valid"] | p2["valid"] | p3["valid"]

    # ---- output stage: walker -> requantiser -> max-pool -> fill buffer -> send buffer ------
    def _output_stage(self, m, cmd, k):
        cfg, fxp = self._cfg, self._cfg.fxp
        S, L, G, parts = cfg.sm_bits, cfg.lanes, cfg.group, cfg.parts
        slots = S // G
        dim = cfg.dim_bits
        abits = cfg.psum_count_bits
        A = fxp.act_bits
        o = {}
        self._out = o
        o["go"] = go = Signal()  # the walker starts the next chunk this cycle
        o["active"] = Signal()  # in the output phase
        # walker position: pooled pixel (wy, wx), its part (pixels wider than S), read e
        wy, wx = Signal(dim), Signal(dim)
        part = Signal(range(max(2, parts)))
        slot = Signal(range(max(2, slots)))
        e = Signal(2)
        prow, pbase = Signal(abits + 4), Signal(abits + 4)  # psum address of (wy, 0), (wy, wx)
        reading = Signal()
        o.update(wy=wy, wx=wx, part=part, slot=slot, e=e, prow=prow, pbase=pbase,
                 reading=reading)
        last_e = Signal()
        m.d.comb += last_e.eq(Mux(cmd.pool, e == 3, 1))
        row_end = Signal()
        m.d.comb += row_end.eq(wx == k["wo"] - 1)
        last_px = Signal()
        m.d.comb += last_px.eq((wy == k["ho"] - 1) & row_end)
        chunk_end = Signal()  # this pixel closes the chunk (slots full or the row ends)
        m.d.comb += chunk_end.eq((slot == slots - 1) | row_end)
        rd_now = Signal()  # a read this cycle
        part_job = Signal()  # a further chunk of a wide pixel: no read, fill from pix
        if parts > 1:
            m.d.comb += part_job.eq(go & (part != 0))
        m.d.comb += rd_now.eq(reading | (go & ~part_job))
        rd_addr = Signal(abits + 4)
        m.d.comb += rd_addr.eq(pbase + e[0] + Mux(e[1], cmd.out_w, 0))
        # the read itself happens a cycle later, from registers
        o["rd_now"], o["rd_addr"] = Signal(), Signal(abits, name="walker_rd_addr")
        m.d.sync += [o["rd_now"].eq(rd_now), o["rd_addr"].eq(rd_addr)]

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
        rd_banks = Signal.like(self._psum.banks, name="out_psum_banks")
        rd_bank = Signal.like(self._psum.bank, name="out_psum_bank")
        m.d.sync += [rd_banks.eq(self._psum.banks), rd_bank.eq(self._psum.bank)]
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
        o.update(b_vals=b_vals, b_nz=b_nz, b_full=b_full, b_first=b_first, b_final=b_final)
        swap = Signal()
        o["swap"] = swap

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

        # the send buffer (A): SM word, then the non-zero values in position order
        a_vals = Signal(data.ArrayLayout(act_shape(fxp), S))
        a_mask, a_rem = Signal(S, name="send_mask"), Signal(S, name="send_rem")
        a_low = Signal(S, name="send_low")  # the next value's position, one-hot
        a_one, a_first, a_final = (Signal(name=f"send_{n}") for n in ("one", "first", "final"))
        a_sm, a_val = Signal(), Signal()  # offering the SM word / a value
        nz = Signal(S)
        m.d.comb += nz.eq(b_nz)
        nz_low = Signal(S)
        m.d.comb += nz_low.eq(_lowest_onehot(nz))
        rem_next, rem_low = Signal(S), Signal(S)
        m.d.comb += [rem_next.eq(a_rem & ~a_low), rem_low.eq(_lowest_onehot(rem_next))]
        take = Signal()
        m.d.comb += take.eq(self.act_out.valid & self.act_out.ready)
        a_done = Signal()  # the send buffer's last word leaves this cycle
        m.d.comb += a_done.eq(take & ((a_sm & (a_mask == 0)) | (a_val & a_one)))
        a_free = Signal()
        m.d.comb += a_free.eq(~(a_sm | a_val) | a_done)
        m.d.comb += swap.eq(o["active"] & b_full & a_free)
        m.d.comb += [self.act_out.valid.eq(a_sm | a_val)]
        with m.If(a_sm):
            m.d.comb += [self.act_out.payload.data.eq(a_mask),
                         self.act_out.payload.first.eq(a_first),
                         self.act_out.payload.last.eq(a_final & (a_mask == 0))]
        with m.Else():
            m.d.comb += [self.act_out.payload.data.eq(
                             _onehot_select(a_low, [a_vals[i] for i in range(S)])),
                         self.act_out.payload.last.eq(a_final & a_one)]
        with m.If(take & a_sm & (a_mask != 0)):
            m.d.sync += [a_sm.eq(0), a_val.eq(1)]
        with m.If(take & a_val):
            m.d.sync += [a_rem.eq(rem_next), a_low.eq(rem_low),
                         a_one.eq((rem_next & ~rem_low) == 0)]
        with m.If(a_done):
            m.d.sync += [a_sm.eq(0), a_val.eq(0)]
        with m.If(swap):
            m.d.sync += [a_vals.eq(b_vals), a_mask.eq(nz), a_rem.eq(nz), a_low.eq(nz_low),
                         a_one.eq((nz & ~nz_low) == 0), a_first.eq(b_first), a_final.eq(b_final),
                         a_sm.eq(1), a_val.eq(0)]
        o["pass_done"] = a_done & a_final
        m.d.sync += go.eq(swap & ~b_final)
        o["reset"] = Signal()  # entering the output phase: the first chunk starts
        with m.If(o["reset"]):
            m.d.sync += [wy.eq(0), wx.eq(0), part.eq(0), slot.eq(0), e.eq(0), prow.eq(0),
                         pbase.eq(0), reading.eq(0), go.eq(1), b_full.eq(0), b_vals.eq(0),
                         b_nz.eq(0), a_sm.eq(0), a_val.eq(0)]

    # ---- the pass FSM ----------------------------------------------------------------------
    def _control(self, m, cmd, k, dec):
        cfg, fxp = self._cfg, self._cfg.fxp
        S, M = cfg.sm_bits, cfg.macs_per_channel
        mac, o = self._mac, self._out
        psum, kwr = self._psum, self._kwr
        word = self.act_in.payload.data
        take = Signal()
        m.d.comb += take.eq(self.act_in.valid & self.act_in.ready)
        kdb = cfg.kernel_addr_bits

        # memories: the MAC path and the output stage share the psum ports
        clr_valid, clr_addr = Signal(), Signal.like(psum.raddr)
        m.d.sync += [clr_valid.eq(o["rd_now"]), clr_addr.eq(o["rd_addr"])]
        m.d.comb += [psum.ren.eq(1),
                     psum.raddr.eq(Mux(o["active"], o["rd_addr"], mac["op_addr"]))]
        with m.If(self._p3["valid"]):
            m.d.comb += [psum.wen.eq(1), psum.waddr.eq(self._p3["addr"]),
                         psum.wdata.eq(self._sums)]
        with m.Elif(clr_valid):
            m.d.comb += [psum.wen.eq(1), psum.waddr.eq(clr_addr)]

        # kernel load: one beat per cycle, entry (c * k + ky) * k + kx
        wcount = Signal(kdb)
        wk = Signal(range(cfg.max_k * cfg.max_k + 1))
        wc = Signal(kdb)
        m.d.comb += [kwr.addr.eq(wcount), kwr.data.eq(self.weights.payload)]

        def take_word():
            """A word accepted by FETCH or by MAC's last cycle: an SM word or a value."""
            d = dec
            with m.If(d["mask"] == 0):
                m.d.sync += [d["mask"].eq(word[:S]), d["idx"].eq(sm_idx), d["low"].eq(sm_low),
                             d["cur_w"].eq(d["nxt_w"]), d["cur_iy"].eq(d["nxt_iy"]),
                             d["cur_slice"].eq(d["nxt_slice"]),
                             d["cur_sbase"].eq(d["nxt_sbase"]), *d["take_x"]]
                with m.If(w_last):
                    m.d.sync += d["nxt_w"].eq(0)
                    with m.If(iy_last):
                        m.d.sync += d["nxt_iy"].eq(0)
                        with m.If(slice_last):
                            m.d.sync += d["sm_done"].eq(1)
                        with m.Else():
                            m.d.sync += [d["nxt_slice"].eq(d["nxt_slice"] + 1),
                                         d["nxt_sbase"].eq(d["nxt_sbase"] + k["cpkk"])]
                    with m.Else():
                        m.d.sync += d["nxt_iy"].eq(d["nxt_iy"] + 1)
                with m.Else():
                    m.d.sync += d["nxt_w"].eq(d["nxt_w"] + 1)
                m.next = "DECODE"
            with m.Else():
                sel = d["sel"]
                cr = d["chunk_row"]
                m.d.sync += [d["mask"].eq(d["mask_next"]), d["idx"].eq(d["idx_next"]),
                             d["low"].eq(d["low_next"]),
                             mac["vals"][0].eq(word[:fxp.act_bits]),
                             *(v.eq(0) for v in mac["vals"][1:]),
                             mac["chans"][0].eq(d["chan"]), mac["gcount"].eq(1),
                             mac["reach"].eq(d["reaches"]),
                             mac["ky"].eq(cr["ky_f"]), mac["ky_last"].eq(cr["ky_l"]),
                             mac["kx"].eq(sel["kx_f"]), mac["kx_first"].eq(sel["kx_f"]),
                             mac["kx_last"].eq(sel["kx_l"]), mac["one_x"].eq(sel["one"]),
                             mac["mac_last"].eq(sel["one"] & cr["one"]),
                             mac["op_addr"].eq(sel["op_first"]), mac["op_row"].eq(sel["op_first"]),
                             mac["k_off"].eq(sel["xk"]), mac["k_row"].eq(sel["xk"])]
                if M > 1:
                    with m.If(d["more"]):
                        m.next = "COLLECT"
                with m.If(~d["more"] & d["reaches"]):
                    m.next = "MAC"
                with m.Elif(~d["more"]):
                    m.next = "FETCH"

        # where the next SM word falls, registered (the counters only move at SM words, which
        # are at least four cycles apart)
        w_last, iy_last, slice_last = Signal(), Signal(), Signal()
        m.d.sync += [w_last.eq(dec["nxt_w"] == k["row_words"] - 1),
                     iy_last.eq(dec["nxt_iy"] == cmd.in_h - 1),
                     slice_last.eq(dec["nxt_slice"] == cmd.slices - 1)]
        sm_low = Signal(S)
        m.d.comb += sm_low.eq(_lowest_onehot(word[:S]))
        sm_idx = _encode(m, sm_low, S, "sm_idx")
        prime = Signal(range(max(cfg.prime_cycles, cfg.drain_cycles)))  # PRIME, DRAIN
        dcnt = Signal(range(cfg.decode_cycles))
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    m.d.sync += [cmd.eq(self.cmd.payload), wcount.eq(0), wk.eq(0), wc.eq(0),
                                 dec["mask"].eq(0), dec["nxt_w"].eq(0), dec["nxt_iy"].eq(0),
                                 dec["nxt_slice"].eq(0), dec["nxt_sbase"].eq(0),
                                 dec["sm_done"].eq(0), prime.eq(0)]
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
                    with m.If(wk == k["kk"] - 1):
                        m.d.sync += [wk.eq(0), wc.eq(wc + 1)]
                        with m.If(wc == k["slices_cp"] - 1):
                            m.next = "FETCH"
            with m.State("FETCH"):
                m.d.comb += self.act_in.ready.eq(~dec["end"])
                with m.If(dec["end"]):
                    m.d.sync += prime.eq(0)
                    with m.If(cmd.emit):
                        m.next = "DRAIN"
                    with m.Else():
                        m.next = "IDLE"
                with m.Elif(take):
                    take_word()
            with m.State("DECODE"):
                m.d.sync += dcnt.eq(dcnt + 1)
                m.d.comb += [dec[f"d{i + 1}_en"].eq(dcnt == i) for i in range(3)]
                with m.If(dcnt == cfg.decode_cycles - 1):
                    m.d.sync += dcnt.eq(0)
                    m.next = "FETCH"
            with m.State("MAC"):
                m.d.comb += [mac["issue"].eq(1),
                             self.act_in.ready.eq(mac["mac_last"] & ~dec["end"])]
                with m.If(mac["mac_last"]):
                    with m.If(take):
                        take_word()
                    with m.Else():
                        m.next = "FETCH"
            if M > 1:
                with m.State("COLLECT"):
                    m.d.comb += self.act_in.ready.eq(1)
                    with m.If(take):
                        g = mac["gcount"]
                        m.d.sync += [dec["mask"].eq(dec["mask_next"]),
                                     dec["idx"].eq(dec["idx_next"]),
                                     dec["low"].eq(dec["low_next"]), g.eq(g + 1)]
                        for j in range(1, M):
                            with m.If(g == j):
                                m.d.sync += [mac["vals"][j].eq(word[:fxp.act_bits]),
                                             mac["chans"][j].eq(dec["chan"])]
                        with m.If(~dec["more"] | (g == M - 1)):
                            with m.If(mac["reach"]):
                                m.next = "MAC"
                            with m.Else():
                                m.next = "FETCH"
            with m.State("DRAIN"):  # the last update reaches the memory
                m.d.sync += prime.eq(prime + 1)
                with m.If(prime == cfg.drain_cycles - 1):
                    m.d.comb += o["reset"].eq(1)
                    m.next = "OUT"
            with m.State("OUT"):
                m.d.comb += o["active"].eq(1)
                with m.If(o["pass_done"]):
                    m.next = "IDLE"

