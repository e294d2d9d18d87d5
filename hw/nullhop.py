"""NullHop-style sparse-feature-map block (Aimar et al., "NullHop: A Flexible Convolutional
Neural Network Accelerator Based on Sparse Representations of Feature Maps", TNNLS 2018).

Feature maps enter and leave compressed (sparsity map + non-zero value list, the stream of
``sim.sparse_format``); the compute core spends MAC cycles only on non-zero input values.
The host-side driver (``sim.nullhop.plan_layer``) cuts a layer into *passes*: one group of
``lanes = macs / macs_per_channel`` output channels x one band of output rows x one tile of
input channels; a pass's input is the band's input rows of the tile's slices, its output
one slice of the band.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .config import NullHopConfig, ceil_log2
from .layouts import acc_shape, act_shape, requant_layout, weight_shape


@dataclass(frozen=True)
class NullHopLayouts:
    command: data.StructLayout
    weight_row: data.ArrayLayout
    word: data.StructLayout


def _bits(n: int) -> int:
    return max(1, int(n).bit_length())


def nullhop_layouts(cfg: NullHopConfig) -> NullHopLayouts:
    """Payload layouts of the block's streams (the tb and the driver pack with these)."""
    fxp = cfg.fxp
    dim, kb = _bits(cfg.max_dim), _bits(cfg.max_k)
    command = data.StructLayout({
        "load": 1,  # load kernels (else reuse the previous pass's kernel memory)
        "emit": 1,  # last input-channel tile: run the output stage (else keep the psums)
        "relu": 1,
        "pool": 1,  # 2x2 max-pooling, stride 2 (needs relu and even out_h, out_w)
        "k": unsigned(kb),
        "stride_log2": 2,  # stride 1, 2, 4 or 8
        "pad_top": unsigned(kb),  # zero rows above the pass input (offset of output row 0)
        "pad_left": unsigned(kb),
        "in_h": unsigned(dim), "in_w": unsigned(dim),  # the pass's input rows / width
        "out_h": unsigned(dim), "out_w": unsigned(dim),  # its output (before pooling)
        "slices": unsigned(_bits(cfg.kernel_depth)),  # input slices in this pass
        "slice_log2": unsigned(_bits(ceil_log2(cfg.kernel_depth))),  # Cp = 1 << slice_log2
        "requant": requant_layout(fxp, cfg.lanes),
    })
    word = data.StructLayout({"data": unsigned(cfg.word_bits), "first": 1, "last": 1})
    return NullHopLayouts(command, data.ArrayLayout(weight_shape(fxp), cfg.lanes), word)


def _requantize_now(fxp, biased, mult, shift, relu):
    """``hw.fixedpoint.requantize`` in one cycle (combinational), for the output stage."""
    rounding = (Const(1, 1) << shift) >> 1
    shifted = (biased * mult + rounding) >> shift  # signed: a floor shift
    hi_u, hi_s, lo_s = fxp.act_max, (1 << (fxp.act_bits - 1)) - 1, -(1 << (fxp.act_bits - 1))
    clipped_u = Mux(shifted < 0, 0, Mux(shifted > hi_u, hi_u, shifted))
    clipped_s = Mux(shifted < lo_s, lo_s, Mux(shifted > hi_s, hi_s, shifted))
    return Mux(relu, clipped_u, clipped_s)


def _lowest_set(m: Module, value, width: int, name: str):
    """Index of the lowest set bit of ``value`` (0 when none): a priority encoder."""
    idx = Signal(range(max(2, width)), name=name)
    for i in reversed(range(width)):
        with m.If(value[i]):
            m.d.comb += idx.eq(i)
    return idx


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

    Cycle schedule of one pass (``NullHopConfig.pass_cycles``; ``sim.nullhop`` mirrors it),
    every input valid and ``act_out`` ready:
      - IDLE, 1 cycle: the command is accepted;
      - LOAD, one cycle per weight beat (skipped when ``load`` is 0);
      - input phase: FETCH takes one word per cycle. A value word's kernel offsets that take
        it to an output of the pass form a box ``ky_first..ky_last`` x ``kx_first..kx_last``
        on the stride grid (computed when the word is taken); MAC walks that box, one
        offset per cycle, all ``lanes`` output channels in parallel, and its last cycle
        already takes the next word. So a non-zero costs ``ny * nx`` cycles (``k*k`` inside
        the map, fewer at borders, band edges and for strides > 1; ``k*k/stride^2`` on
        average), a non-zero whose box is empty ("dead") costs its fetch cycle only, every
        SM word one cycle unless it directly follows a value with a non-empty box, and one
        more FETCH cycle sees the end of the input. Zero activations cost no MAC cycle and
        every MAC cycle is a useful multiply-accumulate.
        The partial-sum memory is read in the MAC cycle and written (``psum + v * w``) in the
        next; its read port is transparent, so back-to-back updates of one pixel are exact;
      - with ``macs_per_channel`` M > 1, a value word starts a *group*: the next non-zeros
        of the same block of ``min(Cp, S)`` positions (the same pixel, other input channels)
        join it, up to M, one COLLECT cycle each; the MAC cycles then multiply all M values
        (empty slots hold 0) with their own kernel rows (M kernel-memory read ports) and add
        the M products into the one partial sum per output channel. A pass then computes
        ``lanes = macs / M`` output channels;
      - output phase (if ``emit``), for each output pixel after pooling in row-major order:
        ``1`` (or ``4`` with pooling) psum reads, 1 fold cycle (bias + requantise + ReLU,
        then max over the window; each psum is cleared as it is read, so
        the memory is all-zero for the next pass), then ``macs / min(macs, S)`` fill cycles
        moving ``min(macs, S)`` values into the S-value chunk register. A complete chunk
        (``S`` positions, or the end of a row) is sent as 1 SM word cycle + 1 cycle per
        non-zero value. The pass ends with its final output word; the next command is
        accepted in the following cycle (passes never overlap).
    A non-emitting pass ends after its end-of-input cycle and keeps its partial sums, so the
    next pass (the next input-channel tile) accumulates onto them.
    Stalls (``valid`` low, ``ready`` low) only add cycles: every state waits for its beat.
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
        cfg, fxp = self._cfg, self._cfg.fxp
        lay = nullhop_layouts(cfg)
        S, L, M = cfg.sm_bits, cfg.lanes, cfg.macs_per_channel
        G, parts = cfg.group, cfg.parts
        slots = S // G
        log2s = ceil_log2(S)
        dim = _bits(cfg.max_dim)
        p_bits = _bits(cfg.kernel_depth * cfg.max_dim + S)
        m = Module()

        m.submodules.kmem = kmem = memory.Memory(
            shape=lay.weight_row, depth=cfg.kernel_depth, init=[])
        m.submodules.pmem = pmem = memory.Memory(
            shape=data.ArrayLayout(acc_shape(fxp), L), depth=cfg.acc_depth, init=[])
        kwr = kmem.write_port()
        krds = [kmem.read_port() for _ in range(M)]  # one per MAC of a channel's group
        pwr = pmem.write_port()
        prd = pmem.read_port(transparent_for=(pwr,))

        cmd = Signal(lay.command)
        kk = Signal(range(cfg.max_k * cfg.max_k + 1))
        m.d.comb += kk.eq(cmd.k * cmd.k)
        cp_mask = Signal(p_bits)
        m.d.comb += cp_mask.eq((Const(1, p_bits) << cmd.slice_log2) - 1)
        weight_beats = Signal(_bits(cfg.kernel_depth * cfg.max_k * cfg.max_k))
        m.d.comb += weight_beats.eq((cmd.slices << cmd.slice_log2) * kk)
        row_words = Signal(p_bits)  # R = ceil(Cp * in_w / S)
        m.d.comb += row_words.eq(((cmd.in_w << cmd.slice_log2) + (S - 1)) >> log2s)

        # ---- kernel load -----------------------------------------------------------------
        wcount = Signal.like(weight_beats)
        m.d.comb += [kwr.addr.eq(wcount), kwr.data.eq(self.weights.payload)]

        # ---- input decoder ---------------------------------------------------------------
        mask = Signal(S)  # SM bits of the current chunk not yet matched with a value
        cur_w, nxt_w = Signal(p_bits), Signal(p_bits)
        cur_iy, nxt_iy = Signal(dim), Signal(dim)
        cur_slice, nxt_slice = Signal.like(cmd.slices), Signal.like(cmd.slices)
        sm_done = Signal()
        end = Signal()
        m.d.comb += end.eq((mask == 0) & sm_done)
        take = Signal()
        m.d.comb += take.eq(self.act_in.valid & self.act_in.ready)
        word = self.act_in.payload.data

        idx = _lowest_set(m, mask, S, "in_idx")
        pos = Signal(p_bits)
        m.d.comb += pos.eq((cur_w << log2s) | idx)
        x_new = Signal(p_bits)
        m.d.comb += x_new.eq(pos >> cmd.slice_log2)
        c_new = Signal(_bits(cfg.kernel_depth))
        m.d.comb += c_new.eq((cur_slice << cmd.slice_log2) | (pos & cp_mask))

        # ---- MAC loop state --------------------------------------------------------------
        vals = [Signal(act_shape(fxp), name=f"val_{j}") for j in range(M)]
        wbases = [Signal(_bits(cfg.kernel_depth * cfg.max_k * cfg.max_k), name=f"wbase_{j}")
                  for j in range(M)]
        gcount = Signal(range(M + 1))  # values in the group being collected
        reach_reg = Signal()
        x_reg = Signal(dim)
        iy_reg = Signal(dim)
        kb = _bits(cfg.max_k)
        ky, kx = Signal(kb), Signal(kb)
        kx_first, ky_last, kx_last = Signal(kb), Signal(kb), Signal(kb)
        mac_last = Signal()
        m.d.comb += mac_last.eq((ky == ky_last) & (kx == kx_last))
        stride = Signal(4)
        m.d.comb += stride.eq(Const(1, 4) << cmd.stride_log2)

        def kernel_range(coord, pad, out_n, name):
            """First and last kernel offsets that map input ``coord`` onto an output in
            ``0..out_n-1`` on the stride grid, and whether there is any."""
            sw = signed(dim + kb + 6)
            a = Signal(sw, name=f"{name}_a")
            lo, hi = Signal(sw, name=f"{name}_lo"), Signal(sw, name=f"{name}_hi")
            first, last = Signal(sw, name=f"{name}_first"), Signal(sw, name=f"{name}_last")
            reach = Signal(sw, name=f"{name}_reach")
            m.d.comb += [a.eq(coord + pad),
                         reach.eq(a - ((out_n - 1) << cmd.stride_log2)),
                         lo.eq(Mux(reach > 0, reach, 0)),
                         hi.eq(Mux(a < cmd.k - 1, a, cmd.k - 1)),
                         first.eq(lo + ((a - lo).as_unsigned() & (stride - 1))),
                         last.eq(hi - ((a - hi).as_unsigned() & (stride - 1)))]
            return first, last, first <= last

        ky_f, ky_l, y_any = kernel_range(cur_iy, cmd.pad_top, cmd.out_h, "ry")
        kx_f, kx_l, x_any = kernel_range(x_new, cmd.pad_left, cmd.out_w, "rx")
        reaches = Signal()
        m.d.comb += reaches.eq(y_any & x_any)
        # grouping (M > 1): the next non-zero joins the group if it lies in the same block of
        # min(Cp, S) positions (the same pixel) and the group is not full
        mask_next = Signal(S)
        m.d.comb += mask_next.eq(mask & (mask - 1))
        idx2 = _lowest_set(m, mask_next, S, "in_idx2")
        blk_log2 = Signal(range(max(2, log2s + 1)))
        m.d.comb += blk_log2.eq(Mux(cmd.slice_log2 < log2s, cmd.slice_log2, log2s))
        more = Signal()
        m.d.comb += more.eq(Const(int(M > 1), 1) & (mask_next != 0)
                            & ((idx >> blk_log2) == (idx2 >> blk_log2)))

        num_y, num_x = Signal(signed(dim + 3)), Signal(signed(dim + 3))
        m.d.comb += [num_y.eq(iy_reg + cmd.pad_top - ky), num_x.eq(x_reg + cmd.pad_left - kx)]
        smask = Signal(3)
        m.d.comb += smask.eq((Const(1, 4) << cmd.stride_log2) - 1)
        oy, ox = Signal(dim + 3), Signal(dim + 3)
        m.d.comb += [oy.eq(num_y.as_unsigned() >> cmd.stride_log2),
                     ox.eq(num_x.as_unsigned() >> cmd.stride_log2)]
        op_valid = Signal()
        m.d.comb += op_valid.eq((num_y >= 0) & (num_x >= 0)
                                & ((num_y.as_unsigned() & smask) == 0)
                                & ((num_x.as_unsigned() & smask) == 0)
                                & (oy < cmd.out_h) & (ox < cmd.out_w))
        op_addr = Signal(range(cfg.acc_depth))
        m.d.comb += op_addr.eq(oy * cmd.out_w + ox)

        s1_valid = Signal()
        s1_addr = Signal(range(cfg.acc_depth))
        s1_vals = [Signal(act_shape(fxp), name=f"s1_val_{j}") for j in range(M)]

        # ---- output stage state ----------------------------------------------------------
        Ho, Wo = Signal(dim), Signal(dim)
        m.d.comb += [Ho.eq(cmd.out_h >> cmd.pool), Wo.eq(cmd.out_w >> cmd.pool)]
        py, px = Signal(dim), Signal(dim)
        e = Signal(2)
        part = Signal(range(max(2, parts)))
        fpos = Signal(range(max(2, slots)))
        f_valid, f_first = Signal(), Signal()
        f_addr = Signal(range(cfg.acc_depth))
        rd_addr = Signal(range(cfg.acc_depth))
        dy, dx = Signal(), Signal()
        m.d.comb += [dy.eq(e[1] & cmd.pool), dx.eq(e[0] & cmd.pool)]
        m.d.comb += rd_addr.eq(((py << cmd.pool) + dy) * cmd.out_w + (px << cmd.pool) + dx)
        last_e = Signal()
        m.d.comb += last_e.eq(Mux(cmd.pool, e == 3, 1))
        pix = Signal(data.ArrayLayout(act_shape(fxp), L))
        chunk = Signal(data.ArrayLayout(act_shape(fxp), S))
        chunk_first, chunk_final = Signal(), Signal()
        rem = Signal(S)
        nzmask = Signal(S)
        m.d.comb += nzmask.eq(Cat(*(chunk[i] != 0 for i in range(S))))
        last_px = Signal()
        m.d.comb += last_px.eq((py == Ho - 1) & (px == Wo - 1))
        row_end = Signal()
        m.d.comb += row_end.eq((px == Wo - 1) & (part == parts - 1))
        complete = Signal()
        m.d.comb += complete.eq((fpos == slots - 1) | row_end)
        out_idx = _lowest_set(m, rem, S, "out_idx")
        rem_next = Signal(S)
        m.d.comb += rem_next.eq(rem & (rem - 1))

        # ---- memories: the MAC path and the output stage share the psum ports -------------
        for j in range(M):
            m.d.comb += [krds[j].addr.eq(wbases[j] + ky * cmd.k + kx), krds[j].en.eq(1)]
        m.d.comb += [prd.en.eq(1), prd.addr.eq(op_addr)]
        qs = []
        for n in range(L):
            q = Signal(act_shape(fxp), name=f"requant_{n}")
            m.d.comb += q.eq(_requantize_now(fxp, prd.data[n] + cmd.requant.bias[n],
                                             cmd.requant.mult[n], cmd.requant.shift[n],
                                             cmd.relu))
            qs.append(q)
        with m.If(s1_valid):
            m.d.comb += [pwr.en.eq(1), pwr.addr.eq(s1_addr)]
            for n in range(L):
                terms = [s1_vals[j] * krds[j].data[n] for j in range(M)]
                total = prd.data[n]
                for t in terms:
                    total = total + t
                m.d.comb += pwr.data[n].eq(total)
        with m.Elif(f_valid):  # clear-on-read of the output stage
            m.d.comb += [pwr.en.eq(1), pwr.addr.eq(f_addr)]
        with m.If(f_valid):
            for n in range(L):
                with m.If(f_first | (qs[n] > pix[n])):
                    m.d.sync += pix[n].eq(qs[n])

        m.d.sync += [s1_valid.eq(0), f_valid.eq(0)]

        def take_word():
            """A word accepted by FETCH or by MAC's last cycle: an SM word or a value."""
            with m.If(mask == 0):
                m.d.sync += [mask.eq(word[:S]), cur_w.eq(nxt_w), cur_iy.eq(nxt_iy),
                             cur_slice.eq(nxt_slice)]
                with m.If(nxt_w == row_words - 1):
                    m.d.sync += nxt_w.eq(0)
                    with m.If(nxt_iy == cmd.in_h - 1):
                        m.d.sync += nxt_iy.eq(0)
                        with m.If(nxt_slice == cmd.slices - 1):
                            m.d.sync += sm_done.eq(1)
                        with m.Else():
                            m.d.sync += nxt_slice.eq(nxt_slice + 1)
                    with m.Else():
                        m.d.sync += nxt_iy.eq(nxt_iy + 1)
                with m.Else():
                    m.d.sync += nxt_w.eq(nxt_w + 1)
            with m.Else():
                # a value here starts a group: slot 0, the other slots empty
                m.d.sync += [mask.eq(mask_next), vals[0].eq(word[:fxp.act_bits]),
                             *(v.eq(0) for v in vals[1:]), gcount.eq(1),
                             reach_reg.eq(reaches),
                             x_reg.eq(x_new), iy_reg.eq(cur_iy), wbases[0].eq(c_new * kk),
                             ky.eq(ky_f), kx.eq(kx_f), kx_first.eq(kx_f), ky_last.eq(ky_l),
                             kx_last.eq(kx_l)]

        def next_pixel():
            with m.If(px == Wo - 1):
                m.d.sync += [px.eq(0), py.eq(py + 1)]
            with m.Else():
                m.d.sync += px.eq(px + 1)
            m.d.sync += e.eq(0)

        def chunk_sent():
            with m.If(part != parts - 1):
                m.d.sync += part.eq(part + 1)
                m.next = "FILL"
            with m.Elif(chunk_final):
                m.next = "IDLE"
            with m.Else():
                m.d.sync += part.eq(0)
                next_pixel()
                m.next = "RD"

        def group_next():
            """After the first value of a group: collect more, or run / skip its MACs."""
            if M > 1:
                with m.If(more):
                    m.next = "COLLECT"
            with m.If(~more & reaches):
                m.next = "MAC"
            with m.Elif(~more):
                m.next = "FETCH"

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    m.d.sync += [cmd.eq(self.cmd.payload), wcount.eq(0), mask.eq(0),
                                 nxt_w.eq(0), nxt_iy.eq(0), nxt_slice.eq(0), sm_done.eq(0)]
                    with m.If(self.cmd.payload.load):
                        m.next = "LOAD"
                    with m.Else():
                        m.next = "FETCH"
            with m.State("LOAD"):
                m.d.comb += [self.weights.ready.eq(1), kwr.en.eq(self.weights.valid)]
                with m.If(self.weights.valid):
                    m.d.sync += wcount.eq(wcount + 1)
                    with m.If(wcount == weight_beats - 1):
                        m.next = "FETCH"
            with m.State("FETCH"):
                m.d.comb += self.act_in.ready.eq(~end)
                with m.If(end):
                    m.d.sync += [py.eq(0), px.eq(0), e.eq(0), part.eq(0), fpos.eq(0)]
                    with m.If(cmd.emit):
                        m.next = "RD"
                    with m.Else():
                        m.next = "IDLE"
                with m.Elif(take):
                    take_word()
                    with m.If(mask != 0):
                        group_next()
            with m.State("MAC"):
                m.d.sync += [s1_valid.eq(op_valid), s1_addr.eq(op_addr),
                             *(sv.eq(v) for sv, v in zip(s1_vals, vals))]
                m.d.comb += self.act_in.ready.eq(mac_last & ~end)
                with m.If(kx == kx_last):
                    m.d.sync += [kx.eq(kx_first), ky.eq(ky + stride)]
                with m.Else():
                    m.d.sync += kx.eq(kx + stride)
                with m.If(mac_last):
                    with m.If(take):
                        take_word()  # resets the kernel counters on a value
                        with m.If(mask == 0):
                            m.next = "FETCH"
                        with m.Else():
                            group_next()
                    with m.Else():
                        m.next = "FETCH"
            if M > 1:
                with m.State("COLLECT"):
                    m.d.comb += self.act_in.ready.eq(1)
                    with m.If(take):
                        m.d.sync += [mask.eq(mask_next), gcount.eq(gcount + 1)]
                        for j in range(1, M):
                            with m.If(gcount == j):
                                m.d.sync += [vals[j].eq(word[:fxp.act_bits]),
                                             wbases[j].eq(c_new * kk)]
                        with m.If(~more | (gcount == M - 1)):
                            with m.If(reach_reg):
                                m.next = "MAC"
                            with m.Else():
                                m.next = "FETCH"
            with m.State("RD"):
                m.d.comb += prd.addr.eq(rd_addr)
                m.d.sync += [f_valid.eq(1), f_first.eq(e == 0), f_addr.eq(rd_addr),
                             e.eq(e + 1)]
                with m.If(last_e):
                    m.next = "FOLD"
            with m.State("FOLD"):
                m.next = "FILL"
            with m.State("FILL"):
                for s in range(slots):
                    with m.If(fpos == s):
                        for i in range(G):
                            if parts == 1:
                                m.d.sync += chunk[s * G + i].eq(pix[i])
                            else:
                                for j in range(parts):
                                    with m.If(part == j):
                                        m.d.sync += chunk[i].eq(pix[j * G + i])
                        if s == 0:
                            for i in range(G, S):
                                m.d.sync += chunk[i].eq(0)
                            m.d.sync += chunk_first.eq((px == 0) & (part == 0))
                m.d.sync += chunk_final.eq(last_px & (part == parts - 1))
                with m.If(complete):
                    m.d.sync += fpos.eq(0)
                    m.next = "SM"
                with m.Else():
                    m.d.sync += fpos.eq(fpos + 1)
                    next_pixel()
                    m.next = "RD"
            with m.State("SM"):
                m.d.comb += [self.act_out.valid.eq(1), self.act_out.payload.data.eq(nzmask),
                             self.act_out.payload.first.eq(chunk_first),
                             self.act_out.payload.last.eq(chunk_final & (nzmask == 0))]
                with m.If(self.act_out.ready):
                    m.d.sync += rem.eq(nzmask)
                    with m.If(nzmask != 0):
                        m.next = "VAL"
                    with m.Else():
                        chunk_sent()
            with m.State("VAL"):
                values = [chunk[i] for i in range(S)]
                sel = Signal(act_shape(fxp))
                for i in range(S):
                    with m.If(out_idx == i):
                        m.d.comb += sel.eq(values[i])
                m.d.comb += [self.act_out.valid.eq(1), self.act_out.payload.data.eq(sel),
                             self.act_out.payload.last.eq(chunk_final & (rem_next == 0))]
                with m.If(self.act_out.ready):
                    m.d.sync += rem.eq(rem_next)
                    with m.If(rem_next == 0):
                        chunk_sent()
        return m
