"""Cycle-level simulator of the dense weight-stationary array (``hw.systolic.SystolicBlock``).

Three pieces, one schedule:
- ``plan_layer``: the host-side driver's tiling into passes (also used by the testbench);
- ``StepModel``: a step-per-cycle model of the block's FSM and pipeline, emitting every
  transfer with its cycle, for small cases and as the oracle;
- ``simulate_layer``: the vectorised count (closed form over passes) for whole networks.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from zeroskip.hw.config import SystolicConfig, ceil_div
from zeroskip.hw.fixedpoint import max_pool, requantize
from zeroskip.models.reference import im2col_np
from zeroskip.models.workloads import ConvLayer

from .report import LayerReport, NetworkReport
from .streams import Source, handshake_patterns


@dataclass(frozen=True)
class Pass:
    m0: int  # first output pixel of the chunk
    count: int  # output pixels in the pass
    n0: int  # first output channel of the column tile
    k0: int  # first reduction index of the row tile
    accumulate: bool
    emit: bool


def plan_layer(m: int, k: int, n: int, cfg: SystolicConfig) -> list[Pass]:
    """Driver tiling: for each pixel chunk, for each column tile, for each row (K) tile."""
    passes = []
    k_tiles = ceil_div(k, cfg.rows)
    for m0 in range(0, m, cfg.acc_depth):
        count = min(cfg.acc_depth, m - m0)
        for n0 in range(0, n, cfg.cols):
            for kt in range(k_tiles):
                passes.append(Pass(m0, count, n0, kt * cfg.rows, kt > 0, kt == k_tiles - 1))
    return passes


@dataclass
class Gemm:
    """A layer as the block sees it: ``requantize(a @ w + bias)`` with integer numpy arrays."""

    a: np.ndarray  # [M, K] unsigned activations
    w: np.ndarray  # [K, N] signed weights
    bias: np.ndarray  # [N]
    mult: np.ndarray  # [N]
    shift: np.ndarray  # [N]
    relu: bool = True

    def __post_init__(self):
        self.a = np.asarray(self.a, np.int64)
        self.w = np.asarray(self.w, np.int64)
        for f in ("bias", "mult", "shift"):
            setattr(self, f, np.asarray(getattr(self, f), np.int64))
        m, k = self.a.shape
        k2, n = self.w.shape
        if k != k2:
            raise ValueError(f"activations have K={k} but weights have K={k2}")
        for f in ("bias", "mult", "shift"):
            if getattr(self, f).shape != (n,):
                raise ValueError(f"{f} must have shape ({n},), not {getattr(self, f).shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.a.shape[0], self.a.shape[1], self.w.shape[1]

    def check(self, cfg: SystolicConfig) -> None:
        fxp = cfg.fxp
        if self.a.min(initial=0) < 0 or self.a.max(initial=0) > fxp.act_max:
            raise ValueError(f"activations must be in 0..{fxp.act_max}")
        if self.w.min(initial=0) < -fxp.weight_max - 1 or self.w.max(initial=0) > fxp.weight_max:
            raise ValueError(f"weights must fit {fxp.weight_bits} signed bits")
        fxp.check_reduction("gemm", self.shape[1], int(np.abs(self.bias).max(initial=0)))

    def reference(self, fxp) -> np.ndarray:
        return requantize(self.a @ self.w + self.bias, self.mult, self.shift, fxp, self.relu)


def pass_beats(g: Gemm, p: Pass, cfg: SystolicConfig):
    """(command dict, weight rows bottom-first, activation vectors) of one pass, zero-padded."""
    r, c = cfg.rows, cfg.cols
    m, k, n = g.shape
    nn = min(c, n - p.n0)
    kk = min(r, k - p.k0)
    wt = np.zeros((r, c), np.int64)
    wt[:kk, :nn] = g.w[p.k0:p.k0 + kk, p.n0:p.n0 + nn]
    acts = np.zeros((p.count, r), np.int64)
    acts[:, :kk] = g.a[p.m0:p.m0 + p.count, p.k0:p.k0 + kk]
    q = {f: np.zeros(c, np.int64) for f in ("bias", "mult", "shift")}
    for f in q:
        q[f][:nn] = getattr(g, f)[p.n0:p.n0 + nn]
    cmd = {"count": p.count, "accumulate": int(p.accumulate), "emit": int(p.emit),
           "relu": int(g.relu), "requant": {f: q[f].tolist() for f in q}}
    return cmd, wt[::-1].tolist(), acts.tolist()


def pass_runs(m: int, passes_per_chunk: int, acc_depth: int) -> list[tuple[int, int]]:
    """The pixel counts of a layer's passes as ``(count, passes)`` runs: every chunk but
    the last holds ``acc_depth`` pixels, the last the rest."""
    chunks = ceil_div(m, acc_depth)
    return [(acc_depth, (chunks - 1) * passes_per_chunk),
            (m - (chunks - 1) * acc_depth, passes_per_chunk)]


def layer_cycles(m: int, k: int, n: int, cfg: SystolicConfig) -> int:
    """Cycles from the first command beat to the last output beat, inclusive, with every
    input offered at once and ``out.ready`` always high (``SystolicConfig.layer_cycles``)."""
    passes_per_chunk = ceil_div(n, cfg.cols) * ceil_div(k, cfg.rows)
    return cfg.layer_cycles(pass_runs(m, passes_per_chunk, cfg.acc_depth))


class StepModel:
    """Step-per-cycle model of ``SystolicBlock``: the two banks' command, weight-load and
    injection flags, the valid/bank/last pipeline, the partial-sum memory and its per-bank
    addresses, the requantiser's stages, the output FIFO and its reservations, advanced one
    clock at a time. The array itself is a delay line carrying each vector's column sums (its
    arithmetic is the GEMM with its bank's weights; its timing is the delay)."""

    def __init__(self, cfg: SystolicConfig):
        self.cfg = cfg

    # What a variant of the array (``sim.combined``) replaces; the FSM and pipeline stay.
    def plan(self, g) -> list:
        return plan_layer(*g.shape, self.cfg)

    def pass_beats(self, g, p):
        return pass_beats(g, p, self.cfg)

    def pass_width(self, g, p) -> int:
        """Output channels the pass's column tile covers."""
        return min(self.cfg.cols, g.shape[2] - p.n0)

    def empty_weights(self) -> np.ndarray:
        return np.zeros((self.cfg.rows, self.cfg.cols), np.int64)

    def weight_row(self, payload) -> np.ndarray:
        return np.asarray(payload, np.int64)

    def column_sums(self, payload, weights) -> np.ndarray:
        return np.asarray(payload, np.int64) @ weights

    def run(self, g: Gemm, valid_p: float = 1.0, ready_p: float = 1.0, seed: int = 0,
            max_cycles: int = 10_000_000):
        """Returns ``(outputs [M, N], trace)``; ``trace`` maps port -> list of transfer cycles
        (``out_payload`` lists the output beats) and ``cycles`` to the first-command to
        last-output count. Sources offer beats with probability ``valid_p`` per cycle and the
        sink is ready with probability ``ready_p`` (``sim.streams.handshake_patterns``)."""
        pat = handshake_patterns(valid_p, ready_p, seed)
        out_pattern = pat["out"]
        cfg = self.cfg
        r, c = cfg.rows, cfg.cols
        m, k, n = g.shape
        passes = self.plan(g)
        beats = [self.pass_beats(g, p) for p in passes]
        cmd_src = Source([b[0] for b in beats], pat["cmd"])
        w_src = Source([row for b in beats for row in b[1]], pat["weights"])
        a_src = Source([v for b in beats for v in b[2]], pat["acts"])
        out_rows = []  # (pass index, pixel) in emit order
        for i, p in enumerate(passes):
            if p.emit:
                out_rows += [(i, j) for j in range(p.count)]

        mem = np.zeros((cfg.acc_depth, c), np.int64)
        idle = (False, 0, False, None)
        # (valid, bank, last of its pass, column sums) of stages 1 .. rows+cols+2
        pipe = [idle] * (r + c + 2)
        read, prev, row_b = np.zeros(c, np.int64), np.zeros(c, np.int64), None
        # the requantiser's stages, newest first; the last one is its output register
        rq_pipe = [(False, None)] * cfg.fxp.requant_latency
        fifo = deque()  # the output FIFO; its head is the out beat on offer
        free = cfg.out_fifo_depth  # FIFO places not promised to a vector in flight
        credit = True  # free >= 2 a cycle ago
        commands = [None, None]
        busy, need_weights, loaded = [False, False], [False, False], [False, False]
        rd_addr, wr_addr = [0, 0], [0, 0]
        cmd_bank = load_bank = inject_bank = settle_bank = 0
        w_count = accepted = hold = 0
        settle = False
        weights = [self.empty_weights(), self.empty_weights()]
        trace = {"cmd": [], "weights": [], "acts": [], "out": [], "out_payload": []}
        outputs = np.zeros((m, n), np.int64)
        emitted = 0
        t = 0
        while emitted < len(out_rows):
            if t >= max_cycles:
                raise RuntimeError("step model did not finish: the schedule deadlocked")
            left = bool(fifo) and out_pattern(t)
            if left:
                out_payload = fifo.popleft()
                pi, j = out_rows[emitted]
                p = passes[pi]
                nn = self.pass_width(g, p)
                outputs[p.m0 + j, p.n0:p.n0 + nn] = out_payload[:nn]
                trace["out"].append(t)
                trace["out_payload"].append(list(out_payload))
                emitted += 1
            # --- combinational: every ready and enable from the registers ---
            start = cmd_src.valid(t) and not busy[cmd_bank]
            w_taken = w_src.valid(t) and need_weights[load_bank]
            w_done = w_taken and w_count == r - 1
            ci = commands[inject_bank]
            injected = (a_src.valid(t) and loaded[inject_bank] and hold == 0
                        and (credit or not ci["emit"]))
            inject_last = injected and accepted + 1 == ci["count"]
            pre_a, stage_a, stage_b = pipe[r + c - 1], pipe[r + c], pipe[r + c + 1]
            cb = commands[stage_b[1]]
            sums = row_b + prev if stage_b[0] else None
            # --- clock edge: registers take their next values ---
            new_prev = (read if stage_a[0] and commands[stage_a[1]]["accumulate"]
                        else np.zeros(c, np.int64))
            if pre_a[0] and commands[pre_a[1]]["accumulate"]:
                read = mem[rd_addr[pre_a[1]]].copy()  # before this edge's write
            if stage_b[0] and not cb["emit"]:
                mem[wr_addr[stage_b[1]]] = sums
            prev, row_b = new_prev, stage_a[3]
            if rq_pipe[-1][0]:
                fifo.append(rq_pipe[-1][1])
            emit = stage_b[0] and bool(cb["emit"])
            q = cb["q"] if emit else None
            rq_pipe = [(emit, requantize(sums + q["bias"], q["mult"], q["shift"], cfg.fxp,
                                         bool(cb["relu"])) & cfg.fxp.act_max
                        if emit else None)] + rq_pipe[:-1]
            credit = free >= 2
            free += int(left) - int(injected and bool(ci["emit"]))
            sums_in = (self.column_sums(a_src.payload(), weights[inject_bank]) if injected
                       else None)
            pipe = [(injected, inject_bank, inject_last, sums_in)] + pipe[:-1]
            if pre_a[0]:
                rd_addr[pre_a[1]] += 1
            if stage_b[0]:
                wr_addr[stage_b[1]] += 1
                if stage_b[2]:  # the pass's last partial-sum write frees its bank
                    busy[stage_b[1]] = False
            if injected:
                trace["acts"].append(t)
                a_src.advance()
                accepted += 1
            if settle:
                loaded[settle_bank] = True
            if inject_last:
                hold = max(0, 3 - accepted)  # SystolicConfig.pass_gap(count) - 1
                accepted = 0
                loaded[inject_bank] = False
                inject_bank ^= 1
            elif hold:
                hold -= 1
            settle = w_done
            if w_taken:
                weights[load_bank] = np.concatenate([self.weight_row(w_src.payload())[None],
                                                     weights[load_bank][:-1]])
                trace["weights"].append(t)
                w_src.advance()
                w_count += 1
            if w_done:
                settle_bank = load_bank
                w_count = 0
                need_weights[load_bank] = False
                load_bank ^= 1
            if start:
                cmd = dict(cmd_src.payload())
                cmd["q"] = {f: np.asarray(cmd["requant"][f], np.int64) for f in cmd["requant"]}
                commands[cmd_bank] = cmd
                busy[cmd_bank] = need_weights[cmd_bank] = True
                rd_addr[cmd_bank] = wr_addr[cmd_bank] = 0
                trace["cmd"].append(t)
                cmd_src.advance()
                cmd_bank ^= 1
            t += 1
        trace["cycles"] = trace["out"][-1] - trace["cmd"][0] + 1
        return outputs, trace


def batch_fold(spec: ConvLayer, batch: int) -> tuple[int, int]:
    """How ``batch`` images run a layer on a weight-stationary array: ``(images, runs)``.
    A fully connected layer has one pixel per image, so its images are batched as the
    pixels of one GEMM (each pass's weights stay in the array for all of them): ``(batch,
    1)``; any other layer runs once per image: ``(1, batch)``."""
    return (batch, 1) if spec.kind == "fc" and batch > 1 else (1, batch)


def simulate_layer(spec: ConvLayer, cfg: SystolicConfig, table=None, batch: int = 1) -> LayerReport:
    """Vectorised count for one layer and ``batch`` images (closed form over the passes of
    ``plan_layer``; the dense array's cycles do not depend on data): a fully connected layer
    takes the images as the pixels of one GEMM, any other layer runs once per image
    (``batch_fold``)."""
    images, runs = batch_fold(spec, batch)
    m, k, n = spec.gemm
    m *= images
    cfg.fxp.check_reduction(spec.name, k)
    r, c = cfg.rows, cfg.cols
    chunks = ceil_div(m, cfg.acc_depth)
    k_tiles, n_tiles = ceil_div(k, r), ceil_div(n, c)
    passes = chunks * n_tiles * k_tiles
    cycles = layer_cycles(m, k, n, cfg)
    psum_bytes = cfg.fxp.acc_bits // 8
    events = {
        "mac": m * k * n,
        "requant": m * n,
        # per pass and cell: the weight enters its bank, and the cell's selected-weight
        # register takes it when the pass's first vector passes (once: it holds the same
        # bank until the next pass)
        "reg_write_byte": 2 * passes * r * c,
        "sram_read_byte": passes * r * c + n_tiles * k_tiles * m * r,  # weight + act buffers
        "sram_write_byte": m * n,  # outputs
        "small_sram_byte": 2 * (k_tiles - 1) * n_tiles * m * c * psum_bytes,  # psum rd + wr
        "dram_byte": (spec.input_size + spec.output_size) * images + spec.weight_size + 4 * n,
    }
    events = {a: v * runs for a, v in events.items()}
    rep = LayerReport(spec.name, cycles * runs, spec.macs * batch, spec.macs * batch, r * c,
                      events, extra={"passes": passes * runs, "k_tiles": k_tiles,
                                     "n_tiles": n_tiles, "chunks": chunks,
                                     "batched_images": images})
    return rep.priced(table)


def batch_note(reports, batch: int) -> list[str]:
    """The report's word on which layers batched their images (``batch_fold``)."""
    names = [r.name for r in reports if r.extra.get("batched_images", 1) > 1]
    return [f"{', '.join(names)}: the {batch} images batched into each pass (fully "
            "connected: the weights stay in the array for all of them)"] if names else []


def simulate_network(workload, cfg: SystolicConfig, table=None, progress=None) -> NetworkReport:
    """Every layer of a ``sim.workload.Workload`` on the dense array."""
    if any(s.groups > 1 for s in workload.layers):  # one group at a time: sim/workload.py
        from .workload import simulate_per_group

        return simulate_per_group(simulate_network, workload, cfg, table, progress)
    reports = []
    for spec in workload.layers:
        reports.append(simulate_layer(spec, cfg, table, workload.batch))
        if progress:
            progress(spec.name)
    return NetworkReport("systolic", cfg.to_dict(), reports,
                         [workload.description, f"{workload.batch} image(s)",
                          *batch_note(reports, workload.batch)])


def layer_outputs(data, spec: ConvLayer, fxp) -> np.ndarray:
    """The layer's output as the integer reference computes it: the array's outputs
    (``array_outputs``), max-pooled by the host where the layer pools."""
    return max_pool(array_outputs(data, spec, fxp), spec.pool)


def array_outputs(data, spec: ConvLayer, fxp) -> np.ndarray:
    """The block's outputs for one layer's ``sim.workload.LayerData`` ([N, H, W] before any
    pooling), computed as the array does: the tiled GEMM with the shared requantisation."""
    a = im2col_np(data.x, spec)
    w = data.w.reshape(spec.out_ch, -1).T
    y = requantize(a @ w + data.bias, data.mult, data.shift, fxp, spec.relu)
    return y.T.reshape(spec.out_ch, spec.out_h, spec.out_w)
