"""Early-termination block (SnaPEA, Akhlaghi et al., ISCA 2018): ``lanes`` time-folded MAC
lanes, each walking windows through its kernel's reordered weights and stopping a window as
soon as its output is known (exact) or predicted (speculative) to be zero after ReLU.

The host reorders each kernel offline (``models.snapea.reorder``) and sends the weights with
an index buffer of input offsets; ``sim.snapea.layer_commands`` is the driver. The rule the
lanes implement is written out in ``models.snapea``. Every buffer is a synchronous
``memory.Memory`` (block RAM on an FPGA) whose read data is registered beside the RAM, and
every lane is an eleven-stage pipeline (ECP5 timing for the default configuration:
``docs/fpga.md``).
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .arith import MAC_GROUP, bank_select, partial_product_groups, tree_sum
from .config import SnaPEAConfig
from .layouts import snapea_layouts
from .memories import banked_memory, sliced_memory
from .requantize import Requantizer, delay_stages


_TAG = 4  # window-number bits that tell the windows in a lane's pipeline apart


class InputBuffer(wiring.Component):
    """The tile's input activations, one copy per lane.

    Ports: ``wr_en``/``wr_addr``/``wr_data`` write one activation to every copy (registered:
    the write lands a cycle later); ``rd_addr[l]`` starts lane l's read, and three cycles
    later ``rd_banks[l][b]`` (a register) is the activation read from every bank b and
    ``rd_bank[l]`` the bank of the address. ``loading`` selects the write address.

    Storage: ``lanes`` copies of ``act_depth`` activations, each in ``act_banks`` banks of
    ``act_bank_depth`` (address ``a`` in bank ``a // act_bank_depth``). A copy has a single
    address register, the write's while ``loading`` and its lane's read address otherwise,
    so it is a single-port RAM: no collision logic between ports, the RAMs' address comes
    from a flip-flop and their read data goes straight into a register beside them (the lane
    registers it once more and selects the bank, ``hw.arith.bank_select``).
    """

    latency = 3  # rd_addr -> rd_banks

    def __init__(self, cfg: SnaPEAConfig):
        self._cfg = cfg
        act = unsigned(cfg.fxp.act_bits)
        super().__init__({
            "loading": In(1),
            "wr_en": In(1),
            "wr_addr": In(unsigned(cfg.addr_bits)),
            "wr_data": In(act),
            "rd_addr": In(unsigned(cfg.addr_bits)).array(cfg.lanes),
            "rd_banks": Out(data.ArrayLayout(act, cfg.act_banks)).array(cfg.lanes),
            "rd_bank": Out(range(max(2, cfg.act_banks))).array(cfg.lanes),
        })

    def elaborate(self, platform):
        cfg = self._cfg
        m = Module()
        wr_en, wr_data = Signal(), Signal.like(self.wr_data)
        m.d.sync += [wr_en.eq(self.wr_en & self.loading), wr_data.eq(self.wr_data)]
        for lane in range(cfg.lanes):
            addr = Signal(unsigned(cfg.addr_bits), name=f"addr_{lane}")
            m.d.sync += addr.eq(Mux(self.loading, self.wr_addr, self.rd_addr[lane]))
            data_, bank = banked_memory(
                m, f"copy_{lane}_bank_", unsigned(cfg.fxp.act_bits), cfg.act_depth,
                cfg.act_bank_depth, waddr=addr, wdata=wr_data, wen=wr_en, raddr=addr)
            assert len(data_) == cfg.act_banks
            # the read data registered beside the RAMs: the copies spread over the chip, so
            # the way to the lane is a register-to-register path of its own
            m.d.sync += [*(self.rd_banks[lane][b].eq(d) for b, d in enumerate(data_)),
                         self.rd_bank[lane].eq(bank)]
        return m


class EarlyTerminationLane(wiring.Component):
    """One MAC lane: a weight/index buffer, an eleven-stage tap pipeline, a requantiser and a
    bank of one entry per window of the tile.

    Ports: ``w_we``/``w_addr``/``w_data`` write the weight/index buffer; ``start`` (one cycle)
    begins a command with the lane's ``params`` and the ``tile`` geometry, both held stable
    by the block until the lane is idle; ``act_addr`` -> ``act_banks``/``act_bank`` (three
    cycles later) is the lane's read port on the input buffer; with ``readout`` high,
    ``ro_addr``/``ro_en`` read the bank and ``ro_move`` loads the read data into ``ro_data``
    (a register beside the bank: the way to the output register is long); ``busy`` is high
    from the cycle after ``start`` while windows remain or taps are in flight.

    Pipeline, one tap per cycle: I (issue: the tap counter addresses the weight/index buffer
    and the window number the bank) -> F (weight, offset and the window's bank entry
    registered) -> A (input address = window base + offset) -> R (the address registered in
    the input buffer; the bank entry registered again, as a lane's RAMs can lie apart) -> R2
    (its banks read; the window's initial sum from the bias or the bank entry) -> R3
    (their read data registered beside the RAMs) -> R4 (the bank's activation selected and
    registered in the lane) -> M (registered again, as the way from a RAM to its lane is
    long; partial products of activation x weight) -> M2 (their sum,
    the product) -> C (accumulate: the first tap of a window starts from the bias in the
    first segment, else from the bank's partial sum) -> D (decide, from the registered sum:
    the exact check ``acc < 0``, the prediction ``acc < threshold``, the window's end).

    Schedule: the cycle after ``start`` the lane issues tap 0 of window 0, then one tap per
    cycle; a window's last tap is followed by the next window's tap 0. When D ends a window
    early (a check fires, or the bank says the window stopped in an earlier segment) it
    tells I one cycle later: I has issued up to 10 more taps of that window, which are
    discarded, moves to the next window in that cycle and issues its tap 0 in the next, so
    an early stop costs up to ``lane_squash`` (= 11) cycles (``SnaPEAConfig.window_cycles``).
    A finished window's sum goes through the requantiser (``requant_latency`` stages) and is
    written to the bank: the output (0 if the window
    stopped early) on the kernel's last segment, else the partial sum and the stop flag.
    ``busy`` (a register) falls two cycles after the last write.
    """

    def __init__(self, cfg: SnaPEAConfig):
        self._cfg = cfg
        lay = snapea_layouts(cfg)
        super().__init__({
            "w_we": In(1),
            "w_addr": In(range(cfg.max_taps)),
            "w_data": In(lay.tap),
            "start": In(1),
            "params": In(lay.lane),
            "tile": In(lay.tile),
            "act_addr": Out(unsigned(cfg.addr_bits)),
            "act_banks": In(data.ArrayLayout(unsigned(cfg.fxp.act_bits), cfg.act_banks)),
            "act_bank": In(range(max(2, cfg.act_banks))),
            "readout": In(1),
            "ro_en": In(1),
            "ro_addr": In(range(cfg.max_windows)),
            "ro_move": In(1),
            "ro_data": Out(unsigned(cfg.fxp.act_bits)),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        cfg, fxp = self._cfg, self._cfg.fxp
        lay = snapea_layouts(cfg)
        m = Module()
        m.submodules.wbuf = wbuf = memory.Memory(shape=lay.tap, depth=cfg.max_taps, init=[])
        w_wr, w_rd = wbuf.write_port(), wbuf.read_port()
        m.d.comb += [w_wr.en.eq(self.w_we), w_wr.addr.eq(self.w_addr),
                     w_wr.data.eq(self.w_data)]
        # the bank, one entry per window: written by the write-back, read by I (or by the
        # read-out); sliced by width, so its read data goes straight into a register
        b_we, b_waddr = Signal(), Signal(range(cfg.max_windows))
        b_wdata, b_raddr, b_ren = Signal(lay.bank), Signal(range(cfg.max_windows)), Signal()
        b_rdata = sliced_memory(m, "bank_", lay.bank, cfg.max_windows, waddr=b_waddr,
                                wdata=b_wdata, wen=b_we, raddr=b_raddr, ren=b_ren)
        with m.If(self.ro_move):
            m.d.sync += self.ro_data.eq(b_rdata.value)

        # the window C ended early, by its number mod 16: the taps in flight span at most 11
        # consecutive windows (one per stage), so the low bits tell them apart
        kill, kill_win = Signal(), Signal(_TAG)
        issue = self._issue(m, kill, kill_win)
        m.d.comb += [w_rd.addr.eq(issue["tap"]),
                     b_raddr.eq(Mux(self.readout, self.ro_addr, issue["win"])),
                     b_ren.eq(Mux(self.readout, self.ro_en, 1))]

        def squashed(win):
            return kill & (kill_win == win[:_TAG])

        def stage(name, prev, values):
            """Pipeline registers: the previous stage's fields plus ``values``; a tap of the
            window C just ended early is dropped."""
            regs = {k: Signal.like(v, name=f"{name}_{k}") for k, v in {**prev, **values}.items()}
            m.d.sync += [regs[k].eq(v) for k, v in {**prev, **values}.items()]
            m.d.sync += regs["valid"].eq(prev["valid"] & ~squashed(prev["win"]))
            return regs

        p, tile = self.params, self.tile
        keep = ("valid", "win", "first", "last", "exact_ok", "spec_here")
        f = stage("f", {k: issue[k] for k in (*keep, "base")}, {})
        # every RAM's read data goes straight into a register: the bank entry is registered
        # twice (A, R) before it is taken apart in R -> R2, the input buffer's banks are
        # selected in R3 -> R4
        bank = ("bank_value", "bank_dead")
        a = stage("a", {k: f[k] for k in keep},
                  {"base": f["base"], "offset": w_rd.data.offset, "weight": w_rd.data.weight,
                   "bank_value": b_rdata.value, "bank_dead": b_rdata.dead})
        m.d.comb += self.act_addr.eq(a["base"] + a["offset"])
        r = stage("r", {k: a[k] for k in (*keep, "weight", *bank)}, {})
        init = Signal(signed(fxp.acc_bits))
        m.d.comb += init.eq(Mux(tile.first, p.bias, r["bank_value"]))
        carry = ("weight", "init", "dead")
        assert InputBuffer.latency == 3
        r2 = stage("r2", {k: r[k] for k in (*keep, "weight")},
                   {"init": init, "init_th": init - p.threshold,
                    "dead": ~tile.first & r["bank_dead"]})
        r3 = stage("r3", {k: r2[k] for k in (*keep, *carry, "init_th")}, {})
        # two registers between the input buffer's RAMs and the multiply: the copies spread
        # over the chip, and the way from a RAM to its lane is long
        act = Signal(unsigned(fxp.act_bits))
        m.d.comb += act.eq(bank_select(self.act_banks, self.act_bank))
        r4 = stage("r4", {k: r3[k] for k in (*keep, *carry, "init_th")}, {"act": act})
        mm = stage("m", {k: r4[k] for k in (*keep, *carry, "init_th", "act")}, {})
        groups = partial_product_groups(mm["weight"], mm["act"], MAC_GROUP)
        later = (*keep, "init", "init_th", "dead")
        m2 = stage("m2", {k: mm[k] for k in later},
                   {f"group_{j}": g for j, g in enumerate(groups)})
        c = stage("c", {k: m2[k] for k in later},
                  {"product": tree_sum(m2[f"group_{j}"] << (MAC_GROUP * j)
                                       for j in range(len(groups)))})

        # C: accumulate (the first tap of a window from init)
        product = c["product"]
        acc = Signal(signed(fxp.acc_bits))
        acc_th = Signal(signed(fxp.acc_bits + 2))  # acc - threshold
        acc_new, acc_th_new = Signal.like(acc), Signal.like(acc_th)
        m.d.comb += [acc_new.eq(Mux(c["first"], c["init"], acc) + product),
                     acc_th_new.eq(Mux(c["first"], c["init_th"], acc_th) + product)]
        with m.If(c["valid"]):
            m.d.sync += [acc.eq(acc_new), acc_th.eq(acc_th_new)]
        # D: decide, from the registered sum's sign
        dd = stage("d", {k: c[k] for k in ("valid", "win", "last", "exact_ok", "spec_here")},
                   {"dead": c["first"] & c["dead"], "sum": acc_new, "neg": acc_new[-1],
                    "below": acc_th_new[-1]})
        live = Signal()
        m.d.comb += live.eq(dd["valid"] & ~squashed(dd["win"]))
        zero = Signal()
        m.d.comb += zero.eq((dd["exact_ok"] & dd["neg"]) | (dd["spec_here"] & dd["below"])
                            | dd["dead"])
        end = Signal()
        m.d.comb += end.eq(live & (dd["last"] | zero))
        m.d.sync += [kill.eq(end & ~dd["last"]), kill_win.eq(dd["win"][:_TAG]),
                     # whether it is the window I will be on next cycle (for the redirect)
                     self._kill_here.eq(dd["win"][:_TAG] == self._issue_next_tag)]

        # write-back: requantise (or keep the partial sum) and write the bank
        m.submodules.requant = rq = Requantizer(fxp)
        m.d.comb += [rq.en.eq(1), rq.acc.eq(dd["sum"]), rq.bias.eq(0), rq.mult.eq(p.mult),
                     rq.shift.eq(p.shift), rq.relu.eq(tile.relu)]
        wb = {"valid": end, "win": dd["win"], "zero": zero, "sum": dd["sum"]}
        in_flight = [issue["valid"], f["valid"], a["valid"], r["valid"], r2["valid"],
                     r3["valid"], r4["valid"], mm["valid"], m2["valid"], c["valid"],
                     dd["valid"]]
        assert len(in_flight) == cfg.lane_stages + 1
        stages = delay_stages(m, wb, fxp.requant_latency, "wb{i}_{k}")  # beside the requantiser
        in_flight += [s["valid"] for s in stages]
        wb = stages[-1]
        m.d.comb += [b_we.eq(wb["valid"]), b_waddr.eq(wb["win"]),
                     b_wdata.dead.eq(wb["zero"]),
                     b_wdata.value.eq(Mux(p.last, Mux(wb["zero"], 0, rq.out), wb["sum"]))]
        # registered, so the block's idle check is not one long OR; set by start itself
        m.d.sync += self.busy.eq(self.start | self._running | Cat(*in_flight[1:]).any())
        return m

    def _issue(self, m, kill, kill_win):
        """Stage I: which tap of which window to issue this cycle. The window sequencer
        holds the current window and the one after it (and whether that one ends its row),
        so moving on is a register copy; the geometry it steps by is copied into the lane
        at ``start``;
        ``kill`` (the current window ended early, registered in C) moves the lane on without
        issuing in that cycle."""
        cfg, p, tile = self._cfg, self.params, self.tile
        self._running = running = Signal()
        tap = Signal(range(cfg.max_taps))
        chk = Signal(range(cfg.check_every))
        shape = {"win": range(cfg.max_windows), "ox": range(cfg.max_windows),
                 "base": unsigned(cfg.addr_bits), "row_base": unsigned(cfg.addr_bits),
                 "last": 1}
        cur = {k: Signal(v, name=f"cur_{k}") for k, v in shape.items()}
        nxt = {k: Signal(v, name=f"next_{k}") for k, v in shape.items()}

        # the tile's geometry as the sequencer needs it, copied into the lane at start (the
        # command register fans out to every lane): the last column, the window before the
        # last, and per next window whether it is the last of its row (so moving on does no
        # compare)
        geo = {"ox_before_last": unsigned(len(tile.out_w) + 1), "one_col": 1,
               "win_before_last": unsigned(len(tile.windows) + 1),
               "row_step": unsigned(cfg.addr_bits), "col_step": unsigned(cfg.addr_bits)}
        geo = {k: Signal(v, name=f"seq_{k}") for k, v in geo.items()}
        nxt_wraps = Signal()

        def after(w, wraps, g):
            """The window after ``w`` (raster order within the tile); ``wraps``: ``w`` is
            the last of its row."""
            nrow = w["row_base"] + g["row_step"]
            return {"win": w["win"] + 1, "ox": Mux(wraps, 0, w["ox"] + 1),
                    "base": Mux(wraps, nrow, w["base"] + g["col_step"]),
                    "row_base": Mux(wraps, nrow, w["row_base"]),
                    "last": w["win"] == g["win_before_last"]}

        first_win = {"win": 0, "ox": 0, "base": 0, "row_base": 0, "last": tile.windows == 1}
        start_geo = {"ox_before_last": tile.out_w - 2, "one_col": tile.out_w == 1,
                     "win_before_last": tile.windows - 2, "row_step": tile.row_step,
                     "col_step": tile.col_step}
        # kill_here (registered beside kill): the killed window is the current one
        self._kill_here = kill_here = Signal()
        redirect = Signal()
        m.d.comb += redirect.eq(running & kill & kill_here)
        last = Signal()  # tap is the window's last: registered beside tap
        one_tap = Signal()
        m.d.sync += one_tap.eq(p.taps == 1)
        checked = chk == cfg.check_every - 1

        def move_on():
            m.d.sync += [*(cur[k].eq(nxt[k]) for k in cur),
                         *(nxt[k].eq(v) for k, v in after(nxt, nxt_wraps, geo).items()),
                         nxt_wraps.eq(Mux(nxt_wraps, geo["one_col"],
                                          nxt["ox"] == geo["ox_before_last"])),
                         tap.eq(0), last.eq(one_tap), chk.eq(tile.check_phase),
                         running.eq(~cur["last"])]

        moving = Signal()
        m.d.comb += moving.eq(running & (redirect | last))
        self._issue_next_tag = Signal(_TAG)
        m.d.comb += self._issue_next_tag.eq(Mux(moving, nxt["win"][:_TAG], cur["win"][:_TAG]))
        with m.If(self.start):
            m.d.sync += [running.eq((p.taps != 0) & (tile.windows != 0)), tap.eq(0),
                         last.eq(p.taps == 1), chk.eq(tile.check_phase),
                         *(cur[k].eq(v) for k, v in first_win.items()),
                         *(nxt[k].eq(v) for k, v in after(first_win, tile.out_w == 1,
                                                           start_geo).items()),
                         nxt_wraps.eq(tile.out_w <= 2),
                         *(geo[k].eq(v) for k, v in start_geo.items())]
        with m.Elif(moving):
            move_on()
        with m.Elif(running):
            m.d.sync += [tap.eq(tap + 1), last.eq(tap + 2 == p.taps),
                         chk.eq(Mux(checked, 0, chk + 1))]
        info = {k: Signal(name=f"issue_{k}") for k in ("valid", "first", "exact_ok",
                                                       "spec_here")}
        m.d.comb += [info["valid"].eq(running & ~redirect), info["first"].eq(tap == 0),
                     info["exact_ok"].eq(tile.terminate & (tap + 1 >= p.exact_from) & checked),
                     info["spec_here"].eq((p.spec_n != 0) & (tap + 1 == p.spec_n))]
        return {**info, "last": last, "tap": tap, "win": cur["win"], "base": cur["base"]}


class SnaPEABlock(wiring.Component):
    """Early-termination convolution block: an input buffer, ``lanes`` EarlyTerminationLanes
    and a read-out of the lanes' banks.

    Ports (``amaranth.lib.stream``, payloads in ``hw.layouts.snapea_layouts``):
      ``cmd``     in:  one beat per (tile, lane group, segment): ``load_acts``, the weight
                       beat count ``taps``, ``readout``, the tile geometry, and per lane its
                       kernel segment's ``taps`` (0: lane unused), ``exact_from``, ``spec_n``,
                       ``threshold``, bias, multiplier, shift and ``last``.
      ``acts``    in:  ``act_count`` beats when ``load_acts``: the tile's zero-padded input,
                       channel-major then row-major, one activation per beat.
      ``weights`` in:  ``taps`` beats, beat ``j`` holding tap ``j`` (weight, input offset) of
                       every lane's reordered kernel segment.
      ``out``     out: on ``readout`` commands, ``windows`` beats, beat ``w`` holding window
                       ``w``'s output of every lane; which output pixel and channel a lane's
                       window is, is the host's (``sim.snapea.layer_commands``: lane ``l``
                       computes channel ``group * lanes + l % kernels`` on band
                       ``l // kernels`` of the tile's rows, its input offsets shifted).

    Cycle schedule of one command (``SnaPEAConfig.command_cycles``; ``sim.snapea`` mirrors
    it), every input valid and ``out.ready`` high:
      - cycle 0: the command is accepted (IDLE);
      - the next ``act_count`` cycles (if ``load_acts``): one input beat each (ACTS);
      - the next ``taps`` cycles: one weight/index beat each, written to every lane (WEIGHTS);
      - 1 cycle: the lanes are started (LAUNCH);
      - COMPUTE: each lane issues one tap per cycle over its windows (``S_l`` cycles up to
        its last useful tap); the block waits for the slowest lane, ``S = max S_l``, plus
        ``compute_tail`` cycles (pipeline, requantiser, bank write, the idle check);
      - READOUT (``readout`` only): the banks are read, their data registered in the lanes
        and then in the output register (``readout_latency`` = 3 cycles), then ``windows``
        output beats; then IDLE takes the next command.
    A command takes ``2 + act_count + taps + S + compute_tail (+ readout_latency +
    windows)`` cycles.
    Backpressure on ``out`` holds the read-out (a word moves on between the three places
    when the place after it is free or moves on itself); a missing input beat stalls the
    load (IDLE, ACTS and WEIGHTS each wait for their beat). Neither changes results; the
    step model (``sim.snapea.StepModel``) follows both cycle for cycle.
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
        cfg = self._cfg
        lay = snapea_layouts(cfg)
        m = Module()
        m.submodules.ibuf = ibuf = InputBuffer(cfg)
        command = Signal(lay.command)
        cnt = Signal(range(max(cfg.act_depth, cfg.max_taps, cfg.max_windows) + 1))
        # READOUT: the banks' read data, the lanes' registers, the output register
        readout, pend, mid, have = Signal(), Signal(), Signal(), Signal()
        more = Signal()  # READOUT: windows left to fetch (cnt != windows)
        out_word = Signal.like(self.out.payload)
        m.d.comb += self.out.payload.eq(out_word)
        lanes = []
        for i in range(cfg.lanes):
            lane = m.submodules[f"lane_{i}"] = EarlyTerminationLane(cfg)
            m.d.comb += [
                ibuf.rd_addr[i].eq(lane.act_addr), lane.act_banks.eq(ibuf.rd_banks[i]),
                lane.act_bank.eq(ibuf.rd_bank[i]),
                lane.params.eq(command.lane[i]), lane.tile.eq(command.tile),
                lane.w_addr.eq(cnt), lane.w_data.eq(self.weights.payload[i]),
                lane.readout.eq(readout), lane.ro_addr.eq(cnt),
            ]
            lanes.append(lane)
        # the lanes' start: a register, high in the LAUNCH cycle (it fans out to every lane)
        launch = Signal()
        m.d.sync += launch.eq(0)
        for lane in lanes:
            m.d.comb += lane.start.eq(launch)
        any_busy = Signal()  # registered: a lane's last write shows here two cycles later
        m.d.sync += any_busy.eq(Cat(*(lane.busy for lane in lanes)).any())
        m.d.comb += [ibuf.wr_addr.eq(cnt), ibuf.wr_data.eq(self.acts.payload[0])]

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
                m.d.comb += [self.acts.ready.eq(1), ibuf.loading.eq(1),
                             ibuf.wr_en.eq(self.acts.valid)]
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
                        m.d.sync += [cnt.eq(0), launch.eq(1)]
                        m.next = "LAUNCH"
            with m.State("LAUNCH"):
                m.d.sync += any_busy.eq(1)
                m.next = "COMPUTE"
            with m.State("COMPUTE"):
                with m.If(~any_busy):
                    m.d.sync += [cnt.eq(0), pend.eq(0), mid.eq(0), have.eq(0)]
                    with m.If(command.readout):
                        m.d.sync += [readout.eq(1), more.eq(command.tile.windows != 0)]
                        m.next = "READOUT"
                    with m.Else():
                        m.next = "IDLE"
            with m.State("READOUT"):
                # three places: the banks' read data (held while not moved on), the lanes'
                # registers and the output register; a word moves on when the place after
                # it is free or moves on itself
                # (readout, more: registers, as they fan out to every lane's bank)
                take = have & self.out.ready
                move_out = mid & (~have | take)
                move_mid = pend & (~mid | move_out)
                fetch = more & (~pend | move_mid)
                m.d.comb += self.out.valid.eq(have)
                for lane in lanes:
                    m.d.comb += [lane.ro_en.eq(fetch), lane.ro_move.eq(move_mid)]
                with m.If(fetch):
                    m.d.sync += [cnt.eq(cnt + 1), pend.eq(1),
                                 more.eq(cnt + 1 != command.tile.windows)]
                with m.Elif(move_mid):
                    m.d.sync += pend.eq(0)
                with m.If(move_mid):
                    m.d.sync += mid.eq(1)
                with m.Elif(move_out):
                    m.d.sync += mid.eq(0)
                with m.If(move_out):
                    m.d.sync += [have.eq(1), *(out_word[i].eq(lane.ro_data)
                                               for i, lane in enumerate(lanes))]
                with m.Elif(take):
                    m.d.sync += have.eq(0)
                    with m.If(~pend):
                        m.d.sync += readout.eq(0)
                        m.next = "IDLE"
        return m
