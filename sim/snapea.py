"""Cycle-level simulator of the early-termination block (``hw.snapea.SnaPEABlock``).

Pieces, one schedule (``SnaPEAConfig.command_cycles``):
- ``plan_layer``: the host driver's tiling: output-row *bands* (the band's zero-padded input
  rows must fit the input buffer and its windows the output banks) x *lane groups*
  (``lanes`` consecutive output channels, one kernel per lane);
- ``layer_commands``: the stream beats of every command (command, input, weight/index beats)
  and where each output beat goes; shared by the step model and the cocotb testbench;
- ``StepModel``: a step-per-cycle model of the block (FSM + lanes, tap by tap), an
  independent oracle of outputs, MAC counts and cycles for small cases;
- ``simulate_layer`` / ``simulate_network``: the vectorised count: per-window termination
  points from ``models.snapea.termination`` (block-sum matmuls + a short gather, every window,
  no loop over windows or MACs),
  per-lane sums per (band, group), the slowest lane sets the group's time.

Dispatch is static: lane ``l`` of a group owns output channel ``group * lanes + l`` and walks
all the band's windows in raster order; a lane that terminates a window early starts the next
window in the next cycle. The group waits for its slowest lane (the balance cost, reported
as ``lane_balance``: mean lane busy time / slowest lane).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hw.config import SnaPEAConfig, ceil_div
from hw.fixedpoint import requantize
from models.snapea import (KernelOrder, LayerParams, Termination, block_outputs, eligible,
                           reorder, termination)
from models.workloads import ConvLayer

from .report import LayerReport, NetworkReport


@dataclass(frozen=True)
class Band:
    r0: int  # first output row
    r1: int  # one past the last output row
    in_rows: int  # padded input rows the band needs, from padded row r0 * stride

    def windows(self, out_w: int) -> int:
        return (self.r1 - self.r0) * out_w


def plan_layer(spec: ConvLayer, cfg: SnaPEAConfig) -> list[Band]:
    """Output-row bands whose padded input fits ``act_depth`` and windows ``max_windows``."""
    wp = spec.in_w + 2 * spec.pad
    if spec.out_w > cfg.max_windows:
        raise ValueError(f"layer {spec.name!r}: an output row has {spec.out_w} windows but the "
                         f"output banks hold max_windows={cfg.max_windows}; use "
                         f"--max-windows {spec.out_w} or more")
    fit_rows = cfg.act_depth // (spec.in_ch * wp)
    rows = min(cfg.max_windows // spec.out_w, (fit_rows - spec.k) // spec.stride + 1
               if fit_rows >= spec.k else 0)
    if rows < 1:
        need = spec.in_ch * spec.k * wp
        raise ValueError(f"layer {spec.name!r}: one output row needs {need} input activations "
                         f"({spec.in_ch} channels x {spec.k} rows x {wp}) but act_depth is "
                         f"{cfg.act_depth}; use --act-depth {need} or more")
    bands = []
    for r0 in range(0, spec.out_h, rows):
        r1 = min(spec.out_h, r0 + rows)
        bands.append(Band(r0, r1, (r1 - 1 - r0) * spec.stride + spec.k))
    return bands


def layer_order(w: np.ndarray, spec: ConvLayer, cfg: SnaPEAConfig,
                params: LayerParams | None) -> KernelOrder:
    order = reorder(w, params)
    if int(order.taps.max()) > cfg.max_taps:
        raise ValueError(f"layer {spec.name!r}: a kernel has {int(order.taps.max())} non-zero "
                         f"weights but the weight buffers hold max_taps={cfg.max_taps}; use "
                         f"--max-taps {int(order.taps.max())} or more")
    return order


def im2col_np(x: np.ndarray, spec: ConvLayer) -> np.ndarray:
    """[C, H, W] -> [M, K] (K ordered channel, ky, kx), as ``models.reference.im2col``."""
    from numpy.lib.stride_tricks import sliding_window_view

    xp = np.pad(np.asarray(x, np.int64), ((0, 0), (spec.pad, spec.pad), (spec.pad, spec.pad)))
    win = sliding_window_view(xp, (spec.k, spec.k), axis=(1, 2))[:, ::spec.stride, ::spec.stride]
    return win.transpose(1, 2, 0, 3, 4).reshape(spec.out_h * spec.out_w, -1)


# --- the host driver: stream beats ---------------------------------------------------------

@dataclass
class Command:
    cmd: dict
    acts: list  # input beats (one activation each)
    weights: list  # weight/index beats (one {weight, offset} per lane)
    windows: int
    pixel0: int  # first output pixel (row-major) of the band
    channel0: int  # first output channel of the group
    lanes_used: int


def layer_commands(x: np.ndarray, spec: ConvLayer, w: np.ndarray, bias, mult, shift,
                   cfg: SnaPEAConfig, params: LayerParams | None = None,
                   terminate: bool = True) -> list[Command]:
    """Every command of one layer in issue order (band by band, lane group by lane group)."""
    order = layer_order(w, spec, cfg, params)
    xp = np.pad(np.asarray(x, np.int64), ((0, 0), (spec.pad, spec.pad), (spec.pad, spec.pad)))
    wp = xp.shape[2]
    kk = spec.k * spec.k
    cmds = []
    for b in plan_layer(spec, cfg):
        band_in = xp[:, b.r0 * spec.stride:b.r0 * spec.stride + b.in_rows, :]
        acts = band_in.reshape(-1).tolist()
        for g0 in range(0, spec.out_ch, cfg.lanes):
            ks = list(range(g0, min(spec.out_ch, g0 + cfg.lanes)))
            taps = int(max(order.taps[k] for k in ks))
            lanes = []
            for lane in range(cfg.lanes):
                if lane < len(ks):
                    k = ks[lane]
                    lanes.append({"taps": int(order.taps[k]),
                                  "exact_from": int(order.exact_from[k]),
                                  "spec_n": int(order.spec_n[k]),
                                  "threshold": int(order.threshold[k]),
                                  "bias": int(bias[k]), "mult": int(mult[k]),
                                  "shift": int(shift[k])})
                else:
                    lanes.append({"taps": 0, "exact_from": 0, "spec_n": 0, "threshold": 0,
                                  "bias": 0, "mult": 0, "shift": 0})
            beats = []
            for j in range(taps):
                row = []
                for lane in range(cfg.lanes):
                    if lane < len(ks) and j < order.taps[ks[lane]]:
                        i = int(order.index[ks[lane], j])
                        c, r = divmod(i, kk)
                        ky, kx = divmod(r, spec.k)
                        row.append({"weight": int(order.weight[ks[lane], j]),
                                    "offset": c * b.in_rows * wp + ky * wp + kx})
                    else:
                        row.append({"weight": 0, "offset": 0})
                beats.append(row)
            cmd = {"load_acts": int(g0 == 0), "act_count": len(acts) if g0 == 0 else 0,
                   "windows": b.windows(spec.out_w), "out_w": spec.out_w,
                   "col_step": spec.stride, "row_step": spec.stride * wp, "taps": taps,
                   "terminate": int(terminate), "relu": int(spec.relu), "lane": lanes}
            cmds.append(Command(cmd, acts if g0 == 0 else [], beats, b.windows(spec.out_w),
                                b.r0 * spec.out_w, g0, len(ks)))
    return cmds


class StepModel:
    """Step-per-cycle model of ``SnaPEABlock`` with every input valid and ``out.ready`` high:
    the FSM (command, input load, weight load, launch, compute, write-back, read-out) and each
    lane tap by tap. Returns ``(outputs [M, N], stats)`` with ``stats["cycles"]`` counted from
    the first command beat to the last output beat, inclusive, and ``stats["macs"]``."""

    def __init__(self, cfg: SnaPEAConfig):
        self.cfg = cfg

    def run(self, cmds: list[Command], m: int, n: int):
        cfg, fxp = self.cfg, self.cfg.fxp
        out = np.zeros((m, n), np.int64)
        t = 0
        macs = 0
        imem = np.zeros(cfg.act_depth, np.int64)
        for c in cmds:
            cmd = c.cmd
            t += 1  # command beat
            for i, v in enumerate(c.acts):  # one input beat per cycle
                imem[i] = v
                t += 1
            t += len(c.weights)  # one weight/index row per cycle
            t += 1  # launch
            lane_cycles = []
            for lane in range(cfg.lanes):
                p = cmd["lane"][lane]
                if p["taps"] == 0:
                    lane_cycles.append(0)
                    continue
                ws = [row[lane]["weight"] for row in c.weights[:p["taps"]]]
                offs = [row[lane]["offset"] for row in c.weights[:p["taps"]]]
                cyc = 0
                ox = oy = 0
                for w_i in range(c.windows):
                    base = oy * cmd["row_step"] + ox * cmd["col_step"]
                    acc = p["bias"]
                    stopped = False
                    for j in range(p["taps"]):
                        cyc += 1  # one MAC per cycle
                        macs += 1
                        acc += int(imem[base + offs[j]]) * ws[j]
                        exact = (cmd["terminate"] and j + 1 >= p["exact_from"]
                                 and (j + 1) % cfg.check_every == 0 and acc < 0)
                        pred = p["spec_n"] > 0 and j + 1 == p["spec_n"] and acc < p["threshold"]
                        if exact or pred:
                            stopped = True
                            break
                    y = 0 if stopped else int(requantize(acc, p["mult"], p["shift"], fxp,
                                                         bool(cmd["relu"])))
                    out[c.pixel0 + w_i, c.channel0 + lane] = y
                    ox += 1
                    if ox == cmd["out_w"]:
                        ox, oy = 0, oy + 1
                lane_cycles.append(cyc)
            t += max(lane_cycles)  # the slowest lane
            t += 1  # write-back of the last result
            t += c.windows  # read-out, one beat per window
        return out, {"cycles": t, "macs": macs}


# --- the vectorised simulator --------------------------------------------------------------

def layer_cycles(spec: ConvLayer, cfg: SnaPEAConfig, macs: np.ndarray,
                 taps: np.ndarray, sample: int = 1) -> dict:
    """Cycles of a layer from per-window MAC counts ``macs`` [M, N] (closed form over bands
    and lane groups of ``SnaPEAConfig.command_cycles``) and the lanes' busy cycles.

    ``sample > 1``: ``macs`` holds only every ``sample``-th window (raster order); each
    band's per-lane sums are scaled up from its sampled windows (an estimate)."""
    bands = plan_layer(spec, cfg)
    wp = spec.in_w + 2 * spec.pad
    starts = np.array([b.r0 * spec.out_w for b in bands])
    if sample == 1:
        per_band = np.add.reduceat(macs, starts, axis=0)  # [B, N]
    else:
        win = np.arange(len(macs)) * sample
        band_of = np.searchsorted(starts, win, side="right") - 1
        per_band = np.zeros((len(bands), macs.shape[1]), np.float64)
        np.add.at(per_band, band_of, macs)
        counts = np.bincount(band_of, minlength=len(bands))
        sizes = np.array([b.windows(spec.out_w) for b in bands])
        per_band = np.rint(per_band * (sizes / np.maximum(counts, 1))[:, None]).astype(np.int64)
    n = spec.out_ch
    groups = ceil_div(n, cfg.lanes)
    pad = groups * cfg.lanes - n
    lane_busy = np.pad(per_band, ((0, 0), (0, pad))).reshape(len(bands), groups, cfg.lanes)
    slowest = lane_busy.max(2)  # [B, G]
    taps_g = np.pad(taps, (0, pad)).reshape(groups, cfg.lanes).max(1)  # [G]
    act_beats = np.array([spec.in_ch * b.in_rows * wp for b in bands])
    windows = np.array([b.windows(spec.out_w) for b in bands])
    cycles = (3 * len(bands) * groups + act_beats.sum() + len(bands) * taps_g.sum()
              + slowest.sum() + groups * windows.sum())
    used = np.pad(np.ones(n, bool), (0, pad)).reshape(groups, cfg.lanes)
    busy_mean = (lane_busy.sum(2) / used.sum(1)[None]).sum()
    return {"cycles": int(cycles), "compute_cycles": int(slowest.sum()),
            "lane_balance": float(busy_mean / max(1, slowest.sum())), "bands": len(bands),
            "groups": groups, "act_beats": int(act_beats.sum()),
            "weight_beats": int(len(bands) * taps_g.sum())}


def _events(spec, cfg, macs, taps, checks, full_windows, cyc, nnz) -> dict:
    idx_bytes = ceil_div(cfg.addr_bits, 8)
    m, _, n = spec.gemm
    return {
        "mac": int(macs.sum()),
        "compare": int(checks),  # sign / threshold checks
        "requant": int(full_windows),  # terminated windows skip the requantiser
        "sram_read_byte": int(macs.sum()),  # input buffer, one activation per MAC
        "sram_write_byte": cyc["act_beats"],  # input buffer fill
        # per-lane weight + index buffers: read per MAC, written per weight beat
        "small_sram_byte": int(macs.sum()) * (1 + idx_bytes)
        + cyc["weight_beats"] * cfg.lanes * (1 + idx_bytes)
        + 2 * m * n,  # output bank write + read-out
        "dram_byte": spec.input_size + nnz * (1 + idx_bytes) + 4 * n + spec.output_size,
    }


def _checks(t: Termination, order: KernelOrder, cfg: SnaPEAConfig, terminate: bool) -> int:
    """Sign checks performed: multiples of ``check_every`` in [exact_from, macs], plus one
    threshold check per window of a predicted kernel that reached tap ``n``."""
    if not terminate:
        return 0
    k = cfg.check_every
    lo = np.maximum(order.exact_from, 1)[None]
    exact_checks = np.maximum(0, t.macs // k - (lo - 1) // k)
    spec_checks = (order.spec_n[None] > 0) & (t.macs >= order.spec_n[None])
    return int(exact_checks.sum() + spec_checks.sum())


@dataclass
class LayerRun:
    """One layer, one image: termination outcome and cycle figures, with and without
    termination."""

    t: Termination
    order: KernelOrder
    cyc: dict
    base_cyc: dict
    events: dict
    base_events: dict
    outputs: np.ndarray  # [M, N]
    sample: int = 1  # every how many windows were evaluated (1: all, exact)


# opt-in only (``run_layer(limit=...)``, ``simulate_network(sample_limit=...)``): windows x
# kernels x taps above which a layer's windows are sampled, an estimate. Off by default: the
# default simulation evaluates every window (exact).
EXACT_LIMIT = 60_000_000


def sample_stride(spec: ConvLayer, limit: int | None = None) -> int:
    """Every how many windows ``run_layer`` evaluates (1 = all, exact)."""
    m, k, n = spec.gemm
    return 1 if limit is None else max(1, -(-m * k * n // limit))


def run_layer(x: np.ndarray, spec: ConvLayer, w, bias, mult, shift, cfg: SnaPEAConfig,
              params: LayerParams | None = None, terminate: bool = True,
              limit: int | None = None) -> LayerRun:
    """Vectorised run of one layer on one input ([C, H, W]): every window, exact (default).

    Opt-in estimate: with ``limit``, layers with more than ``limit`` window x kernel x tap
    terms evaluate every ``sample_stride``-th window only and scale the per-band lane sums,
    MACs and events (``outputs`` then covers the sampled windows only).
    """
    cfg.fxp.check_reduction(spec.name, spec.gemm[1], int(np.abs(bias).max(initial=0)))
    order = layer_order(w, spec, cfg, params)
    s = sample_stride(spec, limit)
    a = im2col_np(x, spec)[::s]
    wm = np.asarray(w, np.int64).reshape(spec.out_ch, -1).T
    t = termination(a, wm, bias, order, cfg.check_every, terminate)
    dense_macs = np.broadcast_to(order.taps, t.macs.shape)
    cyc = layer_cycles(spec, cfg, t.macs, order.taps, s)
    base_cyc = layer_cycles(spec, cfg, dense_macs, order.taps, s)
    nnz = int((np.asarray(w) != 0).sum())
    checks = _checks(t, order, cfg, terminate)
    scale = spec.gemm[0] / len(a)
    macs_all = t.macs if s == 1 else np.rint(t.macs * scale).astype(np.int64)
    full_windows = (~t.zeroed).sum() * scale
    events = _events(spec, cfg, macs_all, order.taps, checks * scale, full_windows, cyc, nnz)
    base_events = _events(spec, cfg, np.rint(dense_macs * scale).astype(np.int64), order.taps, 0,
                          spec.gemm[0] * spec.out_ch, base_cyc, nnz)
    outputs = block_outputs(t, mult, shift, cfg.fxp, spec.relu)
    return LayerRun(t, order, cyc, base_cyc, events, base_events, outputs, s)


def _layer_report(spec, cfg, runs: list[LayerRun], table, terminate: bool, mode: str,
                  systolic=None) -> LayerReport:
    from .energy import price

    events = {k: sum(r.events[k] for r in runs) for k in runs[0].events}
    base_events = {k: sum(r.base_events[k] for r in runs) for k in runs[0].base_events}
    cycles = sum(r.cyc["cycles"] for r in runs)
    base_cycles = sum(r.base_cyc["cycles"] for r in runs)
    m = spec.gemm[0]
    windows = m * spec.out_ch * len(runs)
    exact = sum(round(int(r.t.exact.sum()) * m / len(r.t.macs)) for r in runs)
    pred = sum(round(int(r.t.predicted.sum()) * m / len(r.t.macs)) for r in runs)
    macs_block_dense = sum(int(r.order.taps.sum()) * m for r in runs)
    base_priced = price(base_events, table)
    base_energy = base_priced["energy_pj"]
    base_onchip = base_energy - base_priced["breakdown"]["dram"]
    compute = sum(r.cyc["compute_cycles"] for r in runs)
    balance = (sum(r.cyc["lane_balance"] * r.cyc["compute_cycles"] for r in runs)
               / max(1, compute))
    rep = LayerReport(spec.name, cycles, spec.macs * len(runs), events["mac"], cfg.lanes, events,
                      extra={"mode": mode if terminate else "dense",
                             "terminates": terminate, "windows": windows,
                             "windows_terminated_exact": exact,
                             "windows_terminated_predicted": pred,
                             "macs_block_dense": macs_block_dense,
                             "zero_weight_fraction": 1 - macs_block_dense / (spec.macs * len(runs)),
                             "lane_utilization": events["mac"] / max(1, compute * cfg.lanes),
                             "lane_balance": balance,
                             "bands": runs[0].cyc["bands"],
                             "sampled_every": runs[0].sample,
                             "baseline_cycles": base_cycles,
                             "baseline_energy_pj": base_energy,
                             "baseline_onchip_energy_pj": base_onchip})
    rep.priced(table)
    rep.extra["speedup"] = base_cycles / cycles
    rep.extra["energy_ratio"] = base_energy / rep.energy_pj
    # compute + buffers only: DRAM traffic (inputs, weights, outputs) is the same either way
    rep.extra["onchip_energy_ratio"] = base_onchip / (rep.energy_pj
                                                      - rep.energy_breakdown_pj["dram"])
    if systolic is not None:
        rep.extra["systolic_cycles"] = systolic.cycles
        rep.extra["systolic_energy_pj"] = systolic.energy_pj
    return rep


def simulate_layer(spec: ConvLayer, datas: list, cfg: SnaPEAConfig, table=None,
                   params: LayerParams | None = None, terminate: bool = True,
                   mode: str = "exact") -> LayerReport:
    """One layer over one or more ``sim.workload.LayerData`` (one per image)."""
    runs = [run_layer(d.x, spec, d.w, d.bias, d.mult, d.shift, cfg, params, terminate)
            for d in datas]
    return _layer_report(spec, cfg, runs, table, terminate, mode)


def simulate_network(workload, cfg: SnaPEAConfig, table=None, progress=None,
                     mode: str = "exact", params: list | None = None,
                     systolic: bool = True, sample_limit: int | None = None) -> NetworkReport:
    """Every layer of a ``sim.workload.Workload``. ``mode`` is ``exact`` or ``predictive``
    (``params``: per-layer ``LayerParams`` or None, e.g. from ``models.snapea_tune``);
    ``dense`` disables termination everywhere (the baseline). The first layer and layers
    without ReLU always run dense. For the digits net in predictive mode every layer's input
    is the previous layer's SnaPEA output (mispredictions propagate). Every window of every
    layer is evaluated (exact) unless ``sample_limit`` opts in to the sampled estimate."""
    from models.snapea import snapea_network_forward

    if mode not in ("exact", "predictive", "dense"):
        raise ValueError(f"mode must be exact, predictive or dense, not {mode!r}")
    if mode == "predictive" and params is None:
        raise ValueError("predictive mode needs (Th, n) parameters: pass a budget "
                         "(zeroskip sim snapea --mode predictive --budget 1)")
    if mode != "predictive":
        params = None
    n_layers = len(workload.layers)
    params = params or [None] * n_layers
    ok = eligible(workload.layers)
    inputs = None
    if workload.real and any(p is not None for p in params):
        x0 = workload.real_inputs[0]
        acts = snapea_network_forward(x0, workload.quant, params)
        inputs = [a.reshape(a.shape[0], s.in_ch, s.in_h, s.in_w)
                  for a, s in zip(acts, workload.layers)]
    reports = []
    for i, spec in enumerate(workload.layers):
        datas = [workload.layer_data(i, img) for img in range(workload.batch)]
        if inputs is not None:
            for img, d in enumerate(datas):
                d.x = inputs[i][img].numpy()
        term = ok[i] and mode != "dense"
        runs = [run_layer(d.x, spec, d.w, d.bias, d.mult, d.shift, cfg,
                          params[i] if term else None, term, sample_limit) for d in datas]
        sys_rep = None
        if systolic:
            from hw.config import PRESETS

            from . import systolic as sys_sim
            sys_rep = sys_sim.simulate_layer(spec, PRESETS["systolic"]["default"], table,
                                             workload.batch)
        reports.append(_layer_report(spec, cfg, runs, table, term, mode, sys_rep))
        if progress:
            progress(spec.name)
    notes = [workload.description, f"{workload.batch} image(s)",
             f"mode {mode}; first layer and layers without ReLU run dense; zero weights are "
             "skipped in every mode (also in the no-termination baseline)"]
    sampled = [(l.name, l.extra["sampled_every"]) for l in reports if l.extra["sampled_every"] > 1]
    if sampled:
        notes.append("ESTIMATE (opt-in sampling): from a systematic sample of windows (every s-th in raster "
                     "order, per-band lane sums scaled): " + ", ".join(f"{n} s={k}"
                                                                      for n, k in sampled))
    rep = NetworkReport("snapea", cfg.to_dict(), reports, notes)
    if workload.real:
        from models import digits

        data = digits.load_data()
        x = digits.quantize_input(data.x_test)
        logits = snapea_network_forward(x, workload.quant, params)[-1].reshape(len(x), -1)
        rep.accuracy = float((logits.argmax(1) == data.y_test).double().mean())
    tot = rep.totals()
    base_c = sum(l.extra["baseline_cycles"] for l in reports)
    base_e = sum(l.extra["baseline_energy_pj"] for l in reports)
    base_o = sum(l.extra["baseline_onchip_energy_pj"] for l in reports)
    onchip = tot["energy_pj"] - tot["energy_breakdown_pj"]["dram"]
    rep.notes.append(f"against this block with termination disabled: speedup "
                     f"{base_c / tot['cycles']:.2f}x, energy ratio {base_e / tot['energy_pj']:.2f}x"
                     f" (on-chip, without DRAM: {base_o / onchip:.2f}x)"
                     f", MACs {tot['macs_performed']:,} of {sum(l.extra['macs_block_dense'] for l in reports):,}")
    if systolic:
        sc = sum(l.extra["systolic_cycles"] for l in reports)
        se = sum(l.extra["systolic_energy_pj"] for l in reports)
        rep.notes.append(f"dense systolic array (default preset) for context: {sc:,} cycles, "
                         f"{se / 1e6:.3f} µJ")
    return rep


def layer_outputs(data, spec: ConvLayer, fxp, cfg: SnaPEAConfig | None = None,
                  params: LayerParams | None = None) -> np.ndarray:
    """The block's outputs for one layer's ``LayerData`` ([N, H, W] before pooling)."""
    from dataclasses import replace

    cfg = cfg or SnaPEAConfig(fxp=fxp)
    if cfg.fxp != fxp:
        cfg = replace(cfg, fxp=fxp)
    order = reorder(data.w, params)
    a = im2col_np(data.x, spec)
    wm = np.asarray(data.w, np.int64).reshape(spec.out_ch, -1).T
    t = termination(a, wm, data.bias, order, cfg.check_every, spec.relu)
    y = block_outputs(t, data.mult, data.shift, fxp, spec.relu)
    return y.T.reshape(spec.out_ch, spec.out_h, spec.out_w)
