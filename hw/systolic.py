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

from amaranth import Module, Mux, Signal
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .config import SystolicConfig
from .layouts import acc_shape, act_shape, systolic_layouts, weight_shape
from .requantize import Requantizer


class ProcessingElement(wiring.Component):
    """One MAC cell: a stationary weight, a registered activation and a registered partial sum.

    Ports: ``load``/``w_in`` shift a weight in (``w_out`` passes it on down the column);
    ``en`` advances the compute pipeline: ``a <= a_in``, ``psum_out <= psum_in + a * w``.
    One cycle of latency on both the activation (left to right) and the partial sum
    (top to bottom).
    """

    def __init__(self, cfg: SystolicConfig):
        fxp = cfg.fxp
        super().__init__({
            "en": In(1),
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
        with m.If(self.en):
            m.d.sync += [
                self.a_out.eq(self.a_in),
                self.psum_out.eq(self.psum_in + self.a_out * self.w_out),
            ]
        return m


class SystolicArray(wiring.Component):
    """``rows x cols`` processing elements with input skew and output de-skew registers.

    Ports: ``a_in[r]`` activations (row ``r`` of a vector), ``w_in[c]`` the weight row
    entering the top on ``load`` (each load shifts every row down by one, so after ``rows``
    loads row ``r`` holds the ``rows-1-r``-th row sent), ``psum_out[c]`` the column sums.

    Schedule: with ``en`` high every cycle, a vector presented on ``a_in`` in cycle t has all
    its column sums on ``psum_out`` in cycle ``t + rows + cols``: row r is delayed r cycles
    by the skew, each PE adds one cycle, column c is delayed ``cols-1-c`` by the de-skew.
    """

    def __init__(self, cfg: SystolicConfig):
        self._cfg = cfg
        fxp = cfg.fxp
        super().__init__({
            "en": In(1),
            "load": In(1),
            "w_in": In(weight_shape(fxp)).array(cfg.cols),
            "a_in": In(act_shape(fxp)).array(cfg.rows),
            "psum_out": Out(acc_shape(fxp)).array(cfg.cols),
        })

    def elaborate(self, platform):
        cfg, fxp = self._cfg, self._cfg.fxp
        m = Module()
        pes = [[ProcessingElement(cfg) for _ in range(cfg.cols)] for _ in range(cfg.rows)]
        for r, row in enumerate(pes):
            for c, pe in enumerate(row):
                m.submodules[f"pe_{r}_{c}"] = pe
                m.d.comb += [pe.en.eq(self.en), pe.load.eq(self.load)]
                m.d.comb += pe.w_in.eq(self.w_in[c] if r == 0 else pes[r - 1][c].w_out)
                m.d.comb += pe.psum_in.eq(0 if r == 0 else pes[r - 1][c].psum_out)
                if c > 0:
                    m.d.comb += pe.a_in.eq(row[c - 1].a_out)
        for r in range(cfg.rows):  # input skew: row r waits r cycles
            m.d.comb += pes[r][0].a_in.eq(self._delay(m, self.a_in[r], r, act_shape(fxp),
                                                      f"skew_{r}"))
        for c in range(cfg.cols):  # output de-skew: column c waits cols-1-c cycles
            m.d.comb += self.psum_out[c].eq(
                self._delay(m, pes[-1][c].psum_out, cfg.cols - 1 - c, acc_shape(fxp),
                            f"deskew_{c}"))
        return m

    def _delay(self, m, value, cycles, shape, name):
        for i in range(cycles):
            reg = Signal(shape, name=f"{name}_{i}")
            with m.If(self.en):
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
      - cycles 1..rows: one weight row per cycle (LOAD);
      - cycles rows+1 .. rows+count: one activation vector per cycle (COMPUTE); the vector
        accepted in cycle t reaches the de-skewed array output in cycle t+rows+cols, reads
        its partial sum from memory there, is added/written one cycle later and its output
        beat is valid in cycle t+rows+cols+2 (``pipeline_latency``);
      - the block is back in IDLE the cycle after the last partial-sum write, i.e. a pass
        takes ``1 + rows + count + rows + cols + 1`` cycles, and the next command is accepted
        in that cycle. Passes never overlap.
    Backpressure on ``out`` stalls the whole compute pipeline (one global enable); a missing
    ``acts`` beat inserts a bubble. Neither changes results, only cycles.
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
        cfg, fxp = self._cfg, self._cfg.fxp
        lay = self._layouts()
        m = Module()
        m.submodules.array = array = self._array()
        m.submodules.psums = psums = memory.Memory(
            shape=data.ArrayLayout(acc_shape(fxp), cfg.cols), depth=cfg.acc_depth,
            init=[])
        rd = psums.read_port()
        wr = psums.write_port()

        command = Signal(lay.command)
        loaded = Signal(range(cfg.rows + 1))
        accepted = Signal(cfg.count_bits)
        rd_addr = Signal(cfg.addr_bits)
        wr_addr = Signal(cfg.addr_bits)

        # One global enable: the pipeline advances unless the output register is full and
        # not being taken.
        step = Signal()
        m.d.comb += step.eq(~self.out.valid | self.out.ready)
        m.d.comb += array.en.eq(step)

        # Valid bits travel beside the data: rows+cols stages to the array output (stage A),
        # one more to the accumulate stage (stage B).
        injected = Signal()
        m.d.comb += injected.eq(self.acts.valid & self.acts.ready)
        valid = injected
        for i in range(cfg.rows + cfg.cols):
            reg = Signal(name=f"valid_{i}")
            with m.If(step):
                m.d.sync += reg.eq(valid)
            valid = reg
        stage_a = valid
        stage_b = Signal()
        row_b = Signal(data.ArrayLayout(acc_shape(fxp), cfg.cols))
        with m.If(step):
            m.d.sync += stage_b.eq(stage_a)
            m.d.sync += [row_b[c].eq(array.psum_out[c]) for c in range(cfg.cols)]

        for r in range(cfg.rows):
            m.d.comb += array.a_in[r].eq(self.acts.payload[r])
        for c in range(cfg.cols):
            m.d.comb += array.w_in[c].eq(self.weights.payload[c])

        # Stage A: read the previous K tile's partial sums; stage B: add, write, requantise.
        m.d.comb += [rd.addr.eq(rd_addr), rd.en.eq(step & stage_a & command.accumulate)]
        with m.If(step & stage_a):
            m.d.sync += rd_addr.eq(rd_addr + 1)
        sums = []
        for c in range(cfg.cols):
            s = Signal(acc_shape(fxp), name=f"sum_{c}")
            m.d.comb += s.eq(row_b[c] + Mux(command.accumulate, rd.data[c], 0))
            sums.append(s)
        m.d.comb += [wr.addr.eq(wr_addr), wr.en.eq(step & stage_b & ~command.emit)]
        for c in range(cfg.cols):
            m.d.comb += wr.data[c].eq(sums[c])
        with m.If(step & stage_b):
            m.d.sync += wr_addr.eq(wr_addr + 1)

        out_valid = Signal()
        m.d.comb += self.out.valid.eq(out_valid)
        for c in range(cfg.cols):
            rq = m.submodules[f"requant_{c}"] = Requantizer(fxp)
            m.d.comb += [
                rq.acc.eq(sums[c]), rq.relu.eq(command.relu),
                rq.bias.eq(command.requant.bias[c]), rq.mult.eq(command.requant.mult[c]),
                rq.shift.eq(command.requant.shift[c]),
            ]
            with m.If(step):
                m.d.sync += self.out.payload[c].eq(rq.out)
        with m.If(step):
            m.d.sync += out_valid.eq(stage_b & command.emit)

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    m.d.sync += [command.eq(self.cmd.payload), loaded.eq(0), accepted.eq(0),
                                 rd_addr.eq(0), wr_addr.eq(0)]
                    m.next = "LOAD"
            with m.State("LOAD"):
                m.d.comb += [self.weights.ready.eq(1), array.load.eq(self.weights.valid)]
                with m.If(self.weights.valid):
                    m.d.sync += loaded.eq(loaded + 1)
                    with m.If(loaded == cfg.rows - 1):
                        m.next = "COMPUTE"
            with m.State("COMPUTE"):
                m.d.comb += self.acts.ready.eq(step & (accepted != command.count))
                with m.If(injected):
                    m.d.sync += accepted.eq(accepted + 1)
                with m.If(step & stage_b & (wr_addr == command.count - 1)):
                    m.next = "IDLE"
        return m
