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
    """One MAC cell: a stationary weight, a registered activation and a registered partial sum.

    Ports: ``load``/``w_in`` shift a weight in (``w_out`` passes it on down the column);
    every cycle ``a <= a_in``, ``product <= a * w`` (registered partial-product groups,
    ``hw.arith.multiply_accumulate``), ``psum_out <= psum_in + product``. The activation moves one cell right per cycle and the
    partial sum one cell down; every product reaches the partial sum one cycle later than
    the activation's arrival would allow, for every cell alike, so the array's schedule is
    shifted by one cycle, not skewed.
    """

    def __init__(self, cfg: SystolicConfig):
        fxp = cfg.fxp
        super().__init__({
            "load": In(1),
            "w_in": In(weight_shape(fxp)),
            "w_out": Out(weight_shape(fxp)),
            "a_in": In(act_shape(fxp)),
            "a_out": Out(act_shape(fxp)),
            "psum_in": In(acc_shape(fxp)),
            "psum_out": Out(acc_shape(fxp)),
        })

    def elaborate(self, platform):
        m = Module()
        with m.If(self.load):
            m.d.sync += self.w_out.eq(self.w_in)
        m.d.sync += self.a_out.eq(self.a_in)
        multiply_accumulate(m, self.a_out, self.w_out, self.psum_in, self.psum_out)
        return m


class SystolicArray(wiring.Component):
    """``rows x cols`` processing elements with input skew and output de-skew registers.

    Ports: ``a_in[r]`` activations (row ``r`` of a vector), ``w_in[c]`` the weight row
    entering the top on ``load`` (each load shifts every row down by one, so after ``rows``
    loads row ``r`` holds the ``rows-1-r``-th row sent), ``psum_out[c]`` the column sums.

    Schedule: a vector presented on ``a_in`` in cycle t has all
    its column sums on ``psum_out`` in cycle ``t + rows + cols + 1``: row r is delayed r
    cycles by the skew, each PE adds one cycle (its product register one more, once),
    column c is delayed ``cols-1-c`` by the de-skew.

    Variants (``hw.combined.CombinedArray``) replace the cell and the two input shapes.
    """

    def __init__(self, cfg: SystolicConfig):
        self._cfg = cfg
        super().__init__({
            "load": In(1),
            "w_in": In(self._weight_shape()).array(cfg.cols),
            "a_in": In(self._row_shape()).array(cfg.rows),
            "psum_out": Out(acc_shape(cfg.fxp)).array(cfg.cols),
        })

    def _cell(self):
        return ProcessingElement(self._cfg)

    def _weight_shape(self):
        """What one cell stores (and what enters a column on ``load``)."""
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
                m.d.comb += pe.w_in.eq(self.w_in[c] if r == 0 else pes[r - 1][c].w_out)
                m.d.comb += pe.psum_in.eq(0 if r == 0 else pes[r - 1][c].psum_out)
                if c > 0:
                    m.d.comb += pe.a_in.eq(row[c - 1].a_out)
        for r in range(cfg.rows):  # input skew: row r waits r cycles
            m.d.comb += pes[r][0].a_in.eq(self._delay(m, self.a_in[r], r, f"skew_{r}"))
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

    Cycle schedule of one pass (the contract ``SystolicConfig.pass_cycles`` and
    ``sim.systolic`` mirror), with every input valid and ``out.ready`` high:
      - cycle 0: the command is accepted (state IDLE);
      - cycles 1..rows: one weight row per cycle (LOAD), each entering the array a cycle
        later; cycle rows+1 lets the last one in (SETTLE);
      - cycles rows+2 .. rows+count+1: one activation vector per cycle (COMPUTE); the vector
        accepted in cycle t reaches the de-skewed array output in cycle t+rows+cols+1 (its
        previous partial sums were read from memory one cycle earlier), is added and written
        back in cycle t+rows+cols+2 (stage B) and, on emit passes, enters the pipelined
        ``Requantizer`` there, then the output FIFO: its output beat is valid in cycle
        ``t + rows + cols + 2 + requant_latency + 1`` (``pipeline_latency``);
      - the block is back in IDLE the cycle after the last partial-sum write, i.e. a pass
        takes ``1 + rows + 1 + count + rows + cols + 2`` cycles, and the next command is
        accepted in that cycle, while the last outputs may still be in the requantiser
        (they carry their own constants). Passes never overlap in the array; a layer ends
        ``requant_latency + 1`` cycles after its last pass.
    Flow control: nothing in the pipeline ever stalls. An activation vector of an emit pass
    is accepted only if, a cycle earlier, the output FIFO (``out_fifo_depth`` entries) had
    two or more places not yet promised to vectors in flight; backpressure on ``out`` fills
    the FIFO and then holds ``acts.ready`` low. With ``out`` always ready the FIFO never fills. A missing ``acts``
    beat inserts a bubble. Neither changes results, only cycles.
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
        command = Signal(self._layouts().command)

        injected = Signal()
        m.d.comb += injected.eq(self.acts.valid & self.acts.ready)
        for r in range(cfg.rows):
            m.d.comb += array.a_in[r].eq(self.acts.payload[r])
        # weight rows enter the array one cycle after their beat (the load enable drives
        # every weight register of the array, so it comes straight from a register)
        load = Signal()
        w_row = Signal.like(self.weights.payload)
        m.d.sync += [load.eq(self.weights.valid & self.weights.ready),
                     w_row.eq(self.weights.payload)]
        m.d.comb += array.load.eq(load)
        for c in range(cfg.cols):
            m.d.comb += array.w_in[c].eq(w_row[c])

        # Valid bits travel beside the data: rows+cols+1 stages to the array output (stage A),
        # one more to the accumulate stage (stage B).
        valid = [injected]
        for i in range(cfg.rows + cfg.cols + 2):
            valid.append(self._register(m, valid[-1], f"valid_{i}"))
        stage_b = valid[-1]
        start = Signal()
        m.d.comb += start.eq(self.cmd.valid & self.cmd.ready)
        sums, last_write = self._accumulate(m, command, array, start, valid[-3], stage_b)
        credit = self._requantize(m, command, sums, stage_b, injected)
        self._control(m, command, injected, credit, last_write)
        return m

    @staticmethod
    def _register(m, value, name):
        reg = Signal.like(value, name=name)
        m.d.sync += reg.eq(value)
        return reg

    def _accumulate(self, m, command, array, start, pre_a, stage_b):
        """The partial-sum memory. The previous K tile's sums of a vector are read when it is
        one stage before the array output (``pre_a``) and registered beside its column sums
        (stage A -> B); stage B adds them and writes the result back (on non-emit passes).
        Returns the sums and whether this cycle writes the pass's last vector."""
        cfg, fxp = self._cfg, self._cfg.fxp
        row = data.ArrayLayout(acc_shape(fxp), cfg.cols)
        m.submodules.psums = psums = memory.Memory(shape=row, depth=cfg.acc_depth, init=[])
        rd, wr = psums.read_port(), psums.write_port()
        rd_addr, wr_addr = Signal(cfg.addr_bits), Signal(cfg.addr_bits)
        m.d.comb += [rd.addr.eq(rd_addr), rd.en.eq(pre_a & command.accumulate)]
        with m.If(pre_a):
            m.d.sync += rd_addr.eq(rd_addr + 1)
        prev = Signal(row)
        row_b = Signal(row)
        m.d.sync += [prev.eq(Mux(command.accumulate, rd.data, 0)),
                     row_b.eq(Cat(*array.psum_out))]
        sums = []
        for c in range(cfg.cols):
            s = Signal(acc_shape(fxp), name=f"sum_{c}")
            m.d.comb += [s.eq(row_b[c] + prev[c]), wr.data[c].eq(s)]
            sums.append(s)
        m.d.comb += [wr.addr.eq(wr_addr), wr.en.eq(stage_b & ~command.emit)]
        with m.If(stage_b):
            m.d.sync += wr_addr.eq(wr_addr + 1)
        with m.If(start):
            m.d.sync += [rd_addr.eq(0), wr_addr.eq(0)]
        last_write = Signal()
        m.d.comb += last_write.eq(stage_b & (wr_addr == command.count - 1))
        return sums, last_write

    def _requantize(self, m, command, sums, stage_b, injected):
        """One pipelined ``Requantizer`` per column into the output FIFO, which feeds ``out``.
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
        valid = delay_stages(m, {"valid": stage_b & command.emit}, fxp.requant_latency,
                             "out_valid_{i}")[-1]["valid"]
        m.d.comb += [fifo.w_en.eq(valid), fifo.w_data.eq(row),
                     self.out.valid.eq(fifo.r_rdy), self.out.payload.eq(fifo.r_data),
                     fifo.r_en.eq(self.out.ready)]
        # free FIFO places not yet promised to a vector in flight. ``credit`` says there was
        # more than one a cycle ago, so there is at least one now (a cycle takes at most
        # one): acts.ready comes from registers, and no adder sits on its path
        free = Signal(range(cfg.out_fifo_depth + 1), init=cfg.out_fifo_depth)
        credit = Signal(init=1)
        taken = injected & command.emit
        left = self.out.valid & self.out.ready
        m.d.sync += [free.eq(free - taken + left), credit.eq(free >= 2)]
        return credit

    def _control(self, m, command, injected, credit, last_write):
        """The pass FSM: command, ``rows`` weight loads, one cycle for the last row to enter
        the array, ``count`` activation vectors, until the last vector's partial sums are
        written (stage B)."""
        cfg = self._cfg
        loaded = Signal(range(cfg.rows + 1))
        accepted = Signal(cfg.count_bits)
        more = Signal()  # COMPUTE and accepted != count, registered: acts.ready from registers
        m.d.comb += self.acts.ready.eq(more & (credit | ~command.emit))
        with m.If(injected):
            m.d.sync += [accepted.eq(accepted + 1), more.eq(accepted + 1 != command.count)]
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    m.d.sync += [command.eq(self.cmd.payload), loaded.eq(0), accepted.eq(0)]
                    m.next = "LOAD"
            with m.State("LOAD"):
                m.d.comb += self.weights.ready.eq(1)
                with m.If(self.weights.valid):
                    m.d.sync += loaded.eq(loaded + 1)
                    with m.If(loaded == cfg.rows - 1):
                        m.next = "SETTLE"
            with m.State("SETTLE"):  # the last weight row enters the array
                m.d.sync += more.eq(1)
                m.next = "COMPUTE"
            with m.State("COMPUTE"):
                with m.If(last_write):
                    m.next = "IDLE"
