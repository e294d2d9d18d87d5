"""Early-termination block (SnaPEA, Akhlaghi et al., ISCA 2018): ``lanes`` time-folded MAC
lanes, each walking windows through its kernel's reordered weights and stopping a window as
soon as its output is known (exact) or predicted (speculative) to be zero after ReLU.

The host reorders each kernel offline (``models.snapea.reorder``) and sends the weights with
an index buffer of input offsets; ``sim.snapea.layer_commands`` is the driver. The rule the
lanes implement is written out in ``models.snapea``.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .config import SnaPEAConfig
from .layouts import snapea_layouts
from .requantize import Requantizer


class EarlyTerminationLane(wiring.Component):
    """One MAC lane with its weight/index buffer and output bank.

    Ports: ``w_we``/``w_addr``/``w_data`` write the weight/index buffer; ``start`` (one cycle)
    begins a command with the lane's ``params`` and the band geometry (``windows``, ``out_w``,
    ``col_step``, ``row_step``, ``terminate``, ``relu``), all held stable by the block until
    the lane is idle again; ``act_addr``/``act_data`` is the lane's asynchronous read port on
    the input buffer; ``rd_addr``/``rd_data`` reads the output bank asynchronously; ``busy``
    is high while windows remain.

    Schedule: the cycle after ``start`` the lane performs tap 0 of window 0; every cycle one
    tap: the weight/offset buffer and the input buffer are read asynchronously,
    ``acc' = (tap == 0 ? bias : acc) + act * w``, and the window ends when it was its last tap,
    or the exact check fires (``terminate``, ``tap + 1 >= exact_from``, a ``check_every``-th
    tap, ``acc' < 0``), or the prediction fires (``tap + 1 == spec_n``, ``acc' < threshold``).
    The next window's tap 0 follows in the next cycle, so a window costs exactly as many
    cycles as MACs it performs. A finished window's ``acc'`` is registered, requantised (or
    forced to 0 if it stopped early) and written to the bank one cycle later; ``busy`` falls
    the cycle after the last window's last MAC.
    """

    def __init__(self, cfg: SnaPEAConfig):
        self._cfg = cfg
        fxp = cfg.fxp
        lay = snapea_layouts(cfg)
        super().__init__({
            "w_we": In(1),
            "w_addr": In(range(cfg.max_taps)),
            "w_data": In(lay.tap),
            "start": In(1),
            "params": In(lay.lane),
            "windows": In(unsigned(cfg.window_bits)),
            "out_w": In(unsigned(cfg.window_bits)),
            "col_step": In(unsigned(cfg.addr_bits)),
            "row_step": In(unsigned(cfg.addr_bits)),
            "terminate": In(1),
            "relu": In(1),
            "act_addr": Out(unsigned(cfg.addr_bits)),
            "act_data": In(unsigned(fxp.act_bits)),
            "rd_addr": In(range(cfg.max_windows)),
            "rd_data": Out(unsigned(fxp.act_bits)),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        cfg, fxp = self._cfg, self._cfg.fxp
        lay = snapea_layouts(cfg)
        m = Module()
        m.submodules.wbuf = wbuf = memory.Memory(shape=lay.tap, depth=cfg.max_taps, init=[])
        m.submodules.bank = bank = memory.Memory(shape=unsigned(fxp.act_bits),
                                                 depth=cfg.max_windows, init=[])
        w_wr = wbuf.write_port()
        w_rd = wbuf.read_port(domain="comb")
        b_wr = bank.write_port()
        b_rd = bank.read_port(domain="comb")
        m.d.comb += [w_wr.en.eq(self.w_we), w_wr.addr.eq(self.w_addr),
                     w_wr.data.eq(self.w_data)]
        m.d.comb += [b_rd.addr.eq(self.rd_addr), self.rd_data.eq(b_rd.data)]

        p = self.params
        running = Signal()
        tap = Signal(range(cfg.max_taps))
        chk = Signal(range(cfg.check_every))
        acc = Signal(signed(fxp.acc_bits))
        win = Signal(range(cfg.max_windows))
        ox = Signal(unsigned(cfg.window_bits))
        base = Signal(unsigned(cfg.addr_bits))
        row_base = Signal(unsigned(cfg.addr_bits))
        m.d.comb += self.busy.eq(running)

        m.d.comb += [w_rd.addr.eq(tap), self.act_addr.eq(base + w_rd.data.offset)]
        acc_new = Signal(signed(fxp.acc_bits))
        m.d.comb += acc_new.eq(Mux(tap == 0, p.bias, acc) + self.act_data * w_rd.data.weight)
        checked = (chk == cfg.check_every - 1)
        term_exact = Signal()
        term_pred = Signal()
        m.d.comb += [
            term_exact.eq(self.terminate & (tap + 1 >= p.exact_from) & checked & (acc_new < 0)),
            term_pred.eq((p.spec_n != 0) & (tap + 1 == p.spec_n) & (acc_new < p.threshold)),
        ]
        done = Signal()
        m.d.comb += done.eq(running & ((tap == p.taps - 1) | term_exact | term_pred))

        # write-back stage: requantise (or zero) and write the output bank
        wb_valid = Signal()
        wb_win = Signal.like(win)
        wb_acc = Signal(signed(fxp.acc_bits))
        wb_zero = Signal()
        m.d.sync += wb_valid.eq(done)
        with m.If(done):
            m.d.sync += [wb_win.eq(win), wb_acc.eq(acc_new), wb_zero.eq(term_exact | term_pred)]
        m.submodules.requant = rq = Requantizer(fxp)
        m.d.comb += [rq.acc.eq(wb_acc), rq.bias.eq(0), rq.mult.eq(p.mult),
                     rq.shift.eq(p.shift), rq.relu.eq(self.relu)]
        m.d.comb += [b_wr.en.eq(wb_valid), b_wr.addr.eq(wb_win),
                     b_wr.data.eq(Mux(wb_zero, 0, rq.out))]

        with m.If(self.start):
            m.d.sync += [running.eq((p.taps != 0) & (self.windows != 0)), tap.eq(0), chk.eq(0),
                         win.eq(0), ox.eq(0), base.eq(0), row_base.eq(0)]
        with m.Elif(running):
            with m.If(done):
                m.d.sync += [tap.eq(0), chk.eq(0), win.eq(win + 1)]
                with m.If(win == self.windows - 1):
                    m.d.sync += running.eq(0)
                with m.If(ox == self.out_w - 1):
                    m.d.sync += [ox.eq(0), base.eq(row_base + self.row_step),
                                 row_base.eq(row_base + self.row_step)]
                with m.Else():
                    m.d.sync += [ox.eq(ox + 1), base.eq(base + self.col_step)]
            with m.Else():
                m.d.sync += [tap.eq(tap + 1), acc.eq(acc_new),
                             chk.eq(Mux(checked, 0, chk + 1))]
        return m


class SnaPEABlock(wiring.Component):
    """Early-termination convolution block: input buffer, ``lanes`` EarlyTerminationLanes, a
    read-out of the lanes' output banks.

    Ports (``amaranth.lib.stream``, payloads in ``hw.layouts.snapea_layouts``):
      ``cmd``     in:  one beat per (band, lane group): geometry, ``taps``, ``terminate``,
                       ``relu`` and per lane its kernel's ``taps``, ``exact_from``, ``spec_n``,
                       ``threshold``, bias, multiplier, shift (``taps == 0``: lane unused).
      ``acts``    in:  ``act_count`` beats when ``load_acts``: the band's zero-padded input,
                       channel-major then row-major, one activation per beat.
      ``weights`` in:  ``taps`` beats, beat ``j`` holding tap ``j`` (weight, input offset) of
                       every lane's reordered kernel.
      ``out``     out: ``windows`` beats, beat ``w`` holding window ``w``'s output of every
                       lane (output channel ``group * lanes + lane``).

    Cycle schedule of one command (``SnaPEAConfig.command_cycles``; ``sim.snapea`` mirrors
    it), every input valid and ``out.ready`` high:
      - cycle 0: the command is accepted (IDLE);
      - the next ``act_count`` cycles (if ``load_acts``): one input beat each (ACTS);
      - the next ``taps`` cycles: one weight/index beat each, written to every lane (WEIGHTS);
      - 1 cycle: the lanes are started (LAUNCH);
      - COMPUTE: each lane performs one MAC per cycle over its windows, ``S_l`` cycles in all;
        the block waits for the slowest lane, ``S = max S_l``, plus 1 cycle for its last
        write-back;
      - READOUT: ``windows`` cycles, one output beat each; then IDLE takes the next command.
    A command takes ``3 + act_count + taps + S + windows`` cycles. Backpressure on ``out``
    holds the read-out; a missing input beat stalls the load. Neither changes results.
    """

    def __init__(self, cfg: SnaPEAConfig):
        self._cfg = cfg
        lay = snapea_layouts(cfg)
        super().__init__({
            "cmd": In(stream.Signature(lay.command)),
            "acts": In(stream.Signature(lay.act)),
            "weights": In(stream.Signature(lay.weight_row)),
            "out": Out(stream.Signature(lay.out_vector)),
        })

    @property
    def config(self) -> SnaPEAConfig:
        return self._cfg

    def elaborate(self, platform):
        cfg, fxp = self._cfg, self._cfg.fxp
        lay = snapea_layouts(cfg)
        m = Module()
        m.submodules.ibuf = ibuf = memory.Memory(shape=unsigned(fxp.act_bits),
                                                 depth=cfg.act_depth, init=[])
        i_wr = ibuf.write_port()
        command = Signal(lay.command)
        cnt = Signal(range(max(cfg.act_depth, cfg.max_taps, cfg.max_windows) + 1))
        lanes = []
        for i in range(cfg.lanes):
            lane = EarlyTerminationLane(cfg)
            m.submodules[f"lane_{i}"] = lane
            rd = ibuf.read_port(domain="comb")
            m.d.comb += [rd.addr.eq(lane.act_addr), lane.act_data.eq(rd.data)]
            m.d.comb += [
                lane.params.eq(command.lane[i]), lane.windows.eq(command.windows),
                lane.out_w.eq(command.out_w), lane.col_step.eq(command.col_step),
                lane.row_step.eq(command.row_step), lane.terminate.eq(command.terminate),
                lane.relu.eq(command.relu),
                lane.w_addr.eq(cnt), lane.w_data.eq(self.weights.payload[i]),
                lane.rd_addr.eq(cnt), self.out.payload[i].eq(lane.rd_data),
            ]
            lanes.append(lane)
        any_busy = Signal()
        m.d.comb += any_busy.eq(sum(lane.busy for lane in lanes) != 0)
        m.d.comb += [i_wr.addr.eq(cnt), i_wr.data.eq(self.acts.payload[0])]

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    m.d.sync += [command.eq(self.cmd.payload), cnt.eq(0)]
                    with m.If(self.cmd.payload.load_acts & (self.cmd.payload.act_count != 0)):
                        m.next = "ACTS"
                    with m.Else():
                        m.next = "WEIGHTS"
            with m.State("ACTS"):
                m.d.comb += [self.acts.ready.eq(1), i_wr.en.eq(self.acts.valid)]
                with m.If(self.acts.valid):
                    m.d.sync += cnt.eq(cnt + 1)
                    with m.If(cnt == command.act_count - 1):
                        m.d.sync += cnt.eq(0)
                        m.next = "WEIGHTS"
            with m.State("WEIGHTS"):
                m.d.comb += self.weights.ready.eq(1)
                for lane in lanes:
                    m.d.comb += lane.w_we.eq(self.weights.valid)
                with m.If(self.weights.valid):
                    m.d.sync += cnt.eq(cnt + 1)
                    with m.If(cnt == command.taps - 1):
                        m.d.sync += cnt.eq(0)
                        m.next = "LAUNCH"
            with m.State("LAUNCH"):
                for lane in lanes:
                    m.d.comb += lane.start.eq(1)
                m.next = "COMPUTE"
            with m.State("COMPUTE"):
                with m.If(~any_busy):
                    m.d.sync += cnt.eq(0)
                    m.next = "READOUT"
            with m.State("READOUT"):
                m.d.comb += self.out.valid.eq(1)
                with m.If(self.out.ready):
                    m.d.sync += cnt.eq(cnt + 1)
                    with m.If(cnt == command.windows - 1):
                        m.next = "IDLE"
        return m
