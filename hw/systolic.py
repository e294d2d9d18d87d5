"""Dense weight-stationary systolic array: the baseline every other block is compared against.

The block computes one *pass* of a tiled GEMM ``out[M, N] = act[M, K] @ W[K, N]``: a
``rows x cols`` tile of W stays in the array while up to ``acc_depth`` activation vectors
stream through it. Tiling is done by the host-side driver (``sim.systolic.plan_layer``):
for each chunk of ``acc_depth`` output pixels, for each tile of ``cols`` output channels,
for each tile of ``rows`` reduction terms, one pass; the partial sums of the K tiles of a
chunk accumulate in the block's partial-sum memory, and the last K tile of a chunk adds the
bias, requantises and emits the outputs. Ragged tiles are zero-padded by the driver.
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, Value
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from .arith import multiply_accumulate
from .config import SystolicConfig
from .layouts import acc_shape, act_shape, systolic_layouts, weight_shape
from .requantize import Requantizer, delay_stages


class ProcessingElement(wiring.Component):
    """One MAC cell: two weight banks, the selected weight, a registered activation and a
    registered partial sum.

    Ports: ``load[b]``/``w_in[b]`` shift a weight into bank ``b`` (``w_out[b]`` passes it on
    down the column; the other bank keeps its weight, so the next pass loads while this one
    computes); ``bank_in`` is the bank of the activation on ``a_in`` (it moves right with
    it, ``bank_out``). Every cycle ``a <= a_in`` and, on the same edge, ``weight <=
    w_out[bank_in]``, so the bank multiplexer sits before a register and the product path is
    that of a single-bank cell; then ``product <= a * weight`` (registered partial-product
    groups, ``hw.arith.multiply_accumulate``), ``psum_out <= psum_in + product``. The
    activation moves one cell right per cycle and the partial sum one cell down; every
    product reaches the partial sum one cycle later than the activation's arrival would
    allow, for every cell alike, so the array's schedule is shifted by one cycle, not
    skewed.
    """

    def __init__(self, cfg: SystolicConfig):
        fxp = cfg.fxp
        super().__init__({
            "load": In(2),
            "w_in": In(weight_shape(fxp)).array(2),
            "w_out": Out(weight_shape(fxp)).array(2),
            "a_in": In(act_shape(fxp)),
            "a_out": Out(act_shape(fxp)),
            "bank_in": In(1),
            "bank_out": Out(1),
            "psum_in": In(acc_shape(fxp)),
            "psum_out": Out(acc_shape(fxp)),
        })

    def elaborate(self, platform):
        m = Module()
        shift_banks(m, self)
        weight = Signal.like(self.w_out[0], name="weight")
        m.d.sync += weight.eq(Mux(self.bank_in, self.w_out[1], self.w_out[0]))
        multiply_accumulate(m, self.a_out, weight, self.psum_in, self.psum_out)
        return m


def shift_banks(m, cell) -> None:
    """A cell's weight banks shift on their own load enables; the activation and its bank bit
    move one cell right per cycle."""
    for b in range(2):
        with m.If(cell.load[b]):
            m.d.sync += cell.w_out[b].eq(cell.w_in[b])
    m.d.sync += [cell.a_out.eq(cell.a_in), cell.bank_out.eq(cell.bank_in)]


class SystolicArray(wiring.Component):
    """``rows x cols`` processing elements with input skew and output de-skew registers.

    Ports: ``a_in[r]`` activations (row ``r`` of a vector) and ``bank`` the weight bank of
    that vector; ``w_in[c]`` the weight row entering the top of bank ``b`` on ``load[b]``
    (each load shifts that bank's rows down by one, so after ``rows`` loads row ``r`` holds
    the ``rows-1-r``-th row sent; the other bank is untouched); ``psum_out[c]`` the column
    sums.

    Schedule: a vector presented on ``a_in`` in cycle t reaches cell (r, c) in cycle
    ``t + r + c`` (its bank bit beside it, skewed alike) and has all its column sums on
    ``psum_out`` in cycle ``t + rows + cols + 1``: row r is delayed r cycles by the skew,
    each PE adds one cycle (its product register one more, once), column c is delayed
    ``cols-1-c`` by the de-skew. Cell (r, c) copies its bank's weight on the clock edge that
    ends cycle ``t + r + c`` (a load on the same edge changes the bank only after it), so
    bank ``b`` may take new weights (``load[b]`` high) from cycle ``t + rows + cols - 2``
    after the last vector ``t`` that uses it.

    Variants (``hw.combined.CombinedArray``) replace the cell and the two input shapes.
    """

    def __init__(self, cfg: SystolicConfig):
        self._cfg = cfg
        super().__init__({
            "load": In(2),
            "w_in": In(self._weight_shape()).array(cfg.cols),
            "a_in": In(self._row_shape()).array(cfg.rows),
            "bank": In(1),
            "psum_out": Out(acc_shape(cfg.fxp)).array(cfg.cols),
        })

    def _cell(self):
        return ProcessingElement(self._cfg)

    def _weight_shape(self):
        """What one cell stores per bank (and what enters a column on ``load``)."""
        return weight_shape(self._cfg.fxp)

    def _row_shape(self):
        """What one row receives per vector."""
        return act_shape(self._cfg.fxp)

    def elaborate(self, platform):
        cfg = self._cfg
        m = Module()
        pes = [[self._cell() for _ in range(cfg.cols)] for _ in range(cfg.rows)]
        for r, row in enumerate(pes):
            for c, pe in enumerate(row):
                m.submodules[f"pe_{r}_{c}"] = pe
                m.d.comb += pe.load.eq(self.load)
                for b in range(2):
                    above = self.w_in[c] if r == 0 else pes[r - 1][c].w_out[b]
                    m.d.comb += pe.w_in[b].eq(above)
                m.d.comb += pe.psum_in.eq(0 if r == 0 else pes[r - 1][c].psum_out)
                if c > 0:
                    m.d.comb += [pe.a_in.eq(row[c - 1].a_out),
                                 pe.bank_in.eq(row[c - 1].bank_out)]
        for r in range(cfg.rows):  # input skew: row r waits r cycles, its bank bit with it
            m.d.comb += [pes[r][0].a_in.eq(self._delay(m, self.a_in[r], r, f"skew_{r}")),
                         pes[r][0].bank_in.eq(self._delay(m, self.bank, r, f"skew_bank_{r}"))]
        for c in range(cfg.cols):  # output de-skew: column c waits cols-1-c cycles
            m.d.comb += self.psum_out[c].eq(
                self._delay(m, pes[-1][c].psum_out, cfg.cols - 1 - c, f"deskew_{c}"))
        return m

    @staticmethod
    def _delay(m, value, cycles, name):
        for i in range(cycles):
            reg = Signal.like(value, name=f"{name}_{i}")
            m.d.sync += reg.eq(value)
            value = reg
        return value


class SystolicBlock(wiring.Component):
    """Dense weight-stationary systolic array block with a partial-sum memory and output stage.

    Ports (``amaranth.lib.stream``, payload layouts in ``hw.layouts.systolic_layouts``):
      ``cmd``     in:  one beat per pass: pixel ``count`` (1..acc_depth), ``accumulate``,
                       ``emit``, ``relu`` and the per-column bias / multiplier / shift.
      ``weights`` in:  ``rows`` beats per pass, each a row of ``cols`` int8 weights, sent
                       bottom row first (the rows shift down the array as they load).
      ``acts``    in:  ``count`` beats per pass, each ``rows`` activations (one output
                       pixel's slice of the im2col row).
      ``out``     out: ``count`` beats on emit passes, each ``cols`` output activations.

    Overlap: pass ``i`` uses *bank* ``i % 2``: a weight register in every cell and a command
    register. The next pass's weights shift into the other bank while a pass computes, and
    its activations follow the last vector of the current pass while that one drains. Each
    vector carries its bank bit through the skew, along the rows (the cells pick their
    weight by it) and down the valid pipeline (the partial-sum memory and the requantisers
    pick their pass's command by it), so two passes share the array and the pipeline.

    Cycle schedule (the contract ``SystolicConfig.pass_schedule`` / ``layer_cycles`` and
    ``sim.systolic`` mirror), cycle 0 the first command; ``L_i`` is the cycle of pass
    ``i``'s last activation beat:
      - command ``i`` is accepted in the first cycle it is offered and its bank is free
        (``cmd.ready`` is a register): passes 0 and 1 in cycles 0 and 1 when offered, pass
        ``i >= 2`` from cycle ``L_(i-2) + rows + cols + 3`` (``bank_free_delay``);
      - weight beats: ``rows`` per pass, in pass order, taken from the cycle after the
        pass's command is accepted and after the previous pass's last weight beat; each
        enters its bank one cycle after its beat;
      - activation beats of pass ``i``: ``count`` beats, the first at the earliest two
        cycles after its last weight beat (the last row has entered the bank) and
        ``max(1, 4 - count_(i-1))`` cycles after ``L_(i-1)`` (``pass_gap``: vector ``j`` of
        the pass before entered ``count_(i-1) - 1 - j`` or more cycles before ``L_(i-1)``, so
        vector ``j`` of this pass enters at least 3 cycles after it, also under stalls);
      - the vector accepted in cycle t reaches cell (r, c) in cycle t+r+c, the de-skewed
        array output in cycle t+rows+cols+1; its previous partial sums are read from memory
        in cycle t+rows+cols (address j for its pass's j-th vector), it is added and written
        back in cycle t+rows+cols+2 (stage B) and, on emit passes, enters the pipelined
        ``Requantizer`` there, then the output FIFO: its output beat is valid in cycle
        ``t + rows + cols + 2 + requant_latency + 1`` (``pipeline_latency``). Partial-sum
        hazard: the next K tile's vector j reads address j at ``t' + rows + cols >= t +
        rows + cols + 3``, at least one cycle after this pass's write at stage B (the read
        port is not transparent), by the gap rule above;
      - bank ``i % 2`` frees on the clock edge of cycle ``L_i + rows + cols + 2``, pass
        ``i``'s last partial-sum write: its cells copied their weight of that bank by
        cycle ``L_i + rows + cols - 2`` and its command is read last at that stage B. The
        command of pass ``i + 2`` is accepted from the next cycle. A layer ends with its
        last output beat in cycle ``L_last + pipeline_latency``.
    Flow control: nothing in the pipeline ever stalls. An activation vector of an emit pass
    is accepted only if, a cycle earlier, the output FIFO (``out_fifo_depth`` entries) had
    two or more places not yet promised to vectors in flight; backpressure on ``out`` fills
    the FIFO and then holds ``acts.ready`` low. With ``out`` always ready the FIFO never
    fills. A missing ``acts`` beat inserts a bubble. Neither changes results, only cycles.
    """

    def __init__(self, cfg: SystolicConfig):
        self._cfg = cfg
        lay = self._layouts()
        super().__init__({
            "cmd": In(stream.Signature(lay.command)),
            "weights": In(stream.Signature(lay.weight_row)),
            "acts": In(stream.Signature(lay.act_vector)),
            "out": Out(stream.Signature(lay.out_vector)),
        })

    @property
    def config(self) -> SystolicConfig:
        return self._cfg

    # Variants of the array (``hw.combined``) replace these two and keep everything else.
    def _layouts(self):
        return systolic_layouts(self._cfg)

    def _array(self):
        return SystolicArray(self._cfg)

    def elaborate(self, platform):
        cfg = self._cfg
        m = Module()
        m.submodules.array = array = self._array()
        lay = self._layouts()
        commands = [Signal(lay.command, name=f"command_{b}") for b in range(2)]

        def command_of(bank, name):
            """The command of the pass on ``bank`` (a multiplexer between the registers)."""
            sel = Signal(lay.command, name=name)
            m.d.comb += sel.eq(Mux(bank, commands[1], commands[0]))
            return sel

        inject_bank = Signal()  # the bank of the pass whose vectors enter next
        injected, inject_last = Signal(), Signal()
        m.d.comb += injected.eq(self.acts.valid & self.acts.ready)
        for r in range(cfg.rows):
            m.d.comb += array.a_in[r].eq(self.acts.payload[r])
        m.d.comb += array.bank.eq(inject_bank)
        # weight rows enter the array one cycle after their beat (the load enables drive
        # every weight register of a bank, so they come straight from registers)
        load_bank = Signal()  # the bank whose weights are loading or load next
        load = Signal(2)
        w_row = Signal.like(self.weights.payload)
        w_taken = Signal()
        m.d.comb += w_taken.eq(self.weights.valid & self.weights.ready)
        m.d.sync += [load.eq(Cat(w_taken & ~load_bank, w_taken & load_bank)),
                     w_row.eq(self.weights.payload)]
        m.d.comb += array.load.eq(load)
        for c in range(cfg.cols):
            m.d.comb += array.w_in[c].eq(w_row[c])

        # Valid, bank and last-of-pass bits travel beside the data: rows+cols+1 stages to the
        # array output (stage A), one more to the accumulate stage (stage B).
        stages = [{"valid": injected, "bank": inject_bank, "last": inject_last}]
        for i in range(cfg.rows + cfg.cols + 2):
            stages.append({k: self._register(m, v, f"{k}_{i}") for k, v in stages[-1].items()})
        cmd_bank = Signal()  # the bank the next command goes to
        start = Signal()
        m.d.comb += start.eq(self.cmd.valid & self.cmd.ready)
        sums, cmd_b, freed = self._accumulate(m, command_of, array, start, cmd_bank,
                                              *stages[-3:])
        cmd_inject = command_of(inject_bank, "command_inject")
        credit = self._requantize(m, cmd_b, sums, stages[-1]["valid"],
                                  injected & cmd_inject.emit)
        self._control(m, commands, cmd_inject, start, cmd_bank, w_taken, load_bank,
                      injected, inject_last, inject_bank, credit, freed)
        return m

    @staticmethod
    def _register(m, value, name):
        reg = Signal.like(value, name=name)
        m.d.sync += reg.eq(value)
        return reg

    def _accumulate(self, m, command_of, array, start, cmd_bank, pre_a, stage_a, stage_b):
        """The partial-sum memory. The previous K tile's sums of a vector are read when it is
        one stage before the array output (``pre_a``) and registered beside its column sums
        (stage A -> B); stage B adds them and writes the result back (on non-emit passes).
        Each bank has its own read and write address, cleared when the bank takes a
        command. Returns the sums, stage B's command and, per bank, whether this cycle
        writes that bank's last vector."""
        cfg, fxp = self._cfg, self._cfg.fxp
        row = data.ArrayLayout(acc_shape(fxp), cfg.cols)
        m.submodules.psums = psums = memory.Memory(shape=row, depth=cfg.acc_depth, init=[])
        rd, wr = psums.read_port(), psums.write_port()
        rd_addr = [Signal(cfg.addr_bits, name=f"rd_addr_{b}") for b in range(2)]
        wr_addr = [Signal(cfg.addr_bits, name=f"wr_addr_{b}") for b in range(2)]
        cmd_p = command_of(pre_a["bank"], "command_read")
        cmd_a = command_of(stage_a["bank"], "command_a")
        cmd_b = command_of(stage_b["bank"], "command_b")
        m.d.comb += [rd.addr.eq(Mux(pre_a["bank"], rd_addr[1], rd_addr[0])),
                     rd.en.eq(pre_a["valid"] & cmd_p.accumulate)]
        prev = Signal(row)
        row_b = Signal(row)
        m.d.sync += [prev.eq(Mux(cmd_a.accumulate, rd.data, 0)),
                     row_b.eq(Cat(*array.psum_out))]
        sums = []
        for c in range(cfg.cols):
            s = Signal(acc_shape(fxp), name=f"sum_{c}")
            m.d.comb += [s.eq(row_b[c] + prev[c]), wr.data[c].eq(s)]
            sums.append(s)
        m.d.comb += [wr.addr.eq(Mux(stage_b["bank"], wr_addr[1], wr_addr[0])),
                     wr.en.eq(stage_b["valid"] & ~cmd_b.emit)]
        freed = []
        for b in range(2):
            with m.If(pre_a["valid"] & (pre_a["bank"] == b)):
                m.d.sync += rd_addr[b].eq(rd_addr[b] + 1)
            with m.If(stage_b["valid"] & (stage_b["bank"] == b)):
                m.d.sync += wr_addr[b].eq(wr_addr[b] + 1)
            with m.If(start & (cmd_bank == b)):
                m.d.sync += [rd_addr[b].eq(0), wr_addr[b].eq(0)]
            f = Signal(name=f"last_write_{b}")
            m.d.comb += f.eq(stage_b["valid"] & stage_b["last"] & (stage_b["bank"] == b))
            freed.append(f)
        return sums, cmd_b, freed

    def _requantize(self, m, command, sums, stage_b, taken):
        """One pipelined ``Requantizer`` per column into the output FIFO, which feeds ``out``;
        each vector's constants come from its own pass's command (its bank at stage B).
        Returns whether an emitting vector may be accepted: one FIFO place is reserved per
        such vector until its output beat leaves, so the FIFO never overflows and nothing
        in the pipeline ever waits."""
        cfg, fxp = self._cfg, self._cfg.fxp
        m.submodules.out_fifo = fifo = SyncFIFO(width=len(Value.cast(self.out.payload)),
                                                depth=cfg.out_fifo_depth)
        row = Signal.like(self.out.payload)
        for c, acc in enumerate(sums):
            rq = m.submodules[f"requant_{c}"] = Requantizer(fxp)
            m.d.comb += [
                rq.en.eq(1), rq.acc.eq(acc), rq.relu.eq(command.relu),
                rq.bias.eq(command.requant.bias[c]), rq.mult.eq(command.requant.mult[c]),
                rq.shift.eq(command.requant.shift[c]), row[c].eq(rq.out),
            ]
        valid = delay_stages(m, {"valid": stage_b & command.emit},
                             fxp.requant_latency, "out_valid_{i}")[-1]["valid"]
        m.d.comb += [fifo.w_en.eq(valid), fifo.w_data.eq(row),
                     self.out.valid.eq(fifo.r_rdy), self.out.payload.eq(fifo.r_data),
                     fifo.r_en.eq(self.out.ready)]
        # free FIFO places not yet promised to a vector in flight. ``credit`` says there was
        # more than one a cycle ago, so there is at least one now (a cycle takes at most
        # one): acts.ready comes from registers, and no adder sits on its path
        free = Signal(range(cfg.out_fifo_depth + 1), init=cfg.out_fifo_depth)
        credit = Signal(init=1)
        left = self.out.valid & self.out.ready
        m.d.sync += [free.eq(free - taken + left), credit.eq(free >= 2)]
        return credit

    def _control(self, m, commands, cmd_inject, start, cmd_bank, w_taken, load_bank,
                 injected, inject_last, inject_bank, credit, freed):
        """Per bank: ``busy`` from its command to its pass's last partial-sum write,
        ``need_weights`` from its command to its last weight beat, ``loaded`` from the cycle
        after its last weight row entered the array to its last activation beat. The
        command, weight and activation streams each serve the banks in turn."""
        cfg = self._cfg
        busy = [Signal(name=f"busy_{b}") for b in range(2)]
        need_weights = [Signal(name=f"need_weights_{b}") for b in range(2)]
        loaded = [Signal(name=f"loaded_{b}") for b in range(2)]
        w_count = Signal(range(cfg.rows + 1))
        settle, settle_bank = Signal(), Signal()  # the last weight row enters the array
        accepted = Signal(cfg.count_bits)
        hold = Signal(2)  # cycles the next pass's first vector must still wait (pass_gap)

        m.d.comb += self.cmd.ready.eq(~Mux(cmd_bank, busy[1], busy[0]))
        with m.If(start):
            m.d.sync += cmd_bank.eq(~cmd_bank)
        m.d.comb += self.weights.ready.eq(Mux(load_bank, need_weights[1], need_weights[0]))
        w_done = Signal()
        m.d.comb += w_done.eq(w_taken & (w_count == cfg.rows - 1))
        with m.If(w_taken):
            m.d.sync += w_count.eq(w_count + 1)
        with m.If(w_done):
            m.d.sync += [w_count.eq(0), load_bank.eq(~load_bank), settle_bank.eq(load_bank)]
        m.d.sync += settle.eq(w_done)

        # acts.ready from registers: the bank's flag, the gap counter, the FIFO credit
        m.d.comb += self.acts.ready.eq(Mux(inject_bank, loaded[1], loaded[0]) & (hold == 0)
                                       & (credit | ~cmd_inject.emit))
        m.d.comb += inject_last.eq(injected & (accepted + 1 == cmd_inject.count))
        with m.If(injected):
            m.d.sync += accepted.eq(accepted + 1)
        with m.If(inject_last):
            m.d.sync += [accepted.eq(0), inject_bank.eq(~inject_bank),
                         hold.eq(Mux(accepted == 0, 2, Mux(accepted == 1, 1, 0)))]
        with m.Elif(hold != 0):
            m.d.sync += hold.eq(hold - 1)

        for b in range(2):
            with m.If(start & (cmd_bank == b)):
                m.d.sync += [commands[b].eq(self.cmd.payload), busy[b].eq(1),
                             need_weights[b].eq(1)]
            with m.If(freed[b]):
                m.d.sync += busy[b].eq(0)
            with m.If(w_done & (load_bank == b)):
                m.d.sync += need_weights[b].eq(0)
            with m.If(settle & (settle_bank == b)):
                m.d.sync += loaded[b].eq(1)
            with m.If(inject_last & (inject_bank == b)):
                m.d.sync += loaded[b].eq(0)
