"""Cycle-level simulator of the early-termination block (``hw.snapea.SnaPEABlock``).

Pieces, one schedule (``SnaPEAConfig.command_cycles``):
- ``plan_layer``: the host driver's tiling: *tiles* of output windows (whole output rows
  where they fit; the tile's zero-padded input, all channels, must fit the input buffer and
  its windows the banks) x *lane groups* (``lanes`` consecutive output channels, one kernel
  per lane) x *segments* (``max_taps`` taps of the reordered kernels each; several for
  kernels longer than the weight buffers);
- ``layer_commands``: the stream beats of every command (command, input, weight/index beats)
  and where each output beat goes; shared by the step model and the cocotb testbench;
- ``StepModel``: a step-per-cycle model of the block (the FSM with every port's valid/ready
  handshake, the read-out's places, each lane's issue stage tap by tap), an independent
  oracle of outputs, MAC counts, cycles and output-beat cycles for small cases;
- ``simulate_layer`` / ``simulate_network``: the vectorised count: per-window termination
  points from ``models.snapea.termination`` (block-sum matmuls + a short gather, every window,
  no loop over windows or MACs), per-lane sums per (tile, group, segment), the slowest lane
  sets the command's time.

Dispatch is static: lane ``l`` of a group of ``kernels`` kernels owns output channel
``group * lanes + l % kernels`` and walks the windows of band ``l // kernels`` of the tile's
rows (``bands_of``: lanes a small group leaves idle take other bands) in raster order, one
tap per cycle. A window that stops early costs
up to ``lane_squash`` more cycles: the taps the lane issued before the decision reached its
issue stage (discarded) and the cycle that moves it to the next window. The group waits for its slowest
lane (the balance cost, reported as ``lane_balance``: mean lane busy time / slowest lane).
``dispatch_study`` measures what a queue of (window, kernel) pairs would change.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zeroskip.hw.config import SnaPEAConfig, ceil_div, ceil_log2
from zeroskip.hw.fixedpoint import max_pool, requantize
from zeroskip.models.snapea import (KernelOrder, LayerParams, Termination, block_outputs, eligible,
                                    reorder, termination)
from zeroskip.models.reference import im2col_np
from zeroskip.models.workloads import ConvLayer

from .report import LayerReport, NetworkReport


@dataclass(frozen=True)
class Tile:
    """A rectangle of output windows whose zero-padded input fits the input buffer."""

    r0: int  # first output row
    r1: int  # one past the last output row
    c0: int  # first output column
    c1: int  # one past the last output column
    in_rows: int  # padded input rows the tile needs, from padded row r0 * stride
    in_cols: int  # padded input columns, from padded column c0 * stride

    @property
    def windows(self) -> int:
        return (self.r1 - self.r0) * (self.c1 - self.c0)

    @property
    def width(self) -> int:
        return self.c1 - self.c0

    def pixels(self, out_w: int) -> np.ndarray:
        """Row-major output pixel index of every window, in the lanes' (raster) order."""
        r, c = np.mgrid[self.r0:self.r1, self.c0:self.c1]
        return (r * out_w + c).ravel()


def _balanced(n: int, most: int) -> int:
    """The smallest tile size that splits ``n`` into as few tiles of at most ``most``."""
    return -(-n // -(-n // most))


def plan_layer(spec: ConvLayer, cfg: SnaPEAConfig) -> list[Tile]:
    """Tiles of output windows in raster order: as many whole output rows as fit the input
    buffer (``act_depth``, all input channels) and the banks (``max_windows``); rows whose
    input does not fit are split into column tiles of equal width."""
    s, k, c = spec.stride, spec.k, spec.in_ch

    def extent(n):  # padded input rows (or columns) that n output rows (columns) need
        return (n - 1) * s + k

    if c * k * k > cfg.act_depth:
        raise ValueError(f"layer {spec.name!r}: one window needs {c * k * k} input activations "
                         f"({c} channels x {k} x {k}) but act_depth is {cfg.act_depth}; use "
                         f"--act-depth {c * k * k} or more")
    width = min(spec.out_w, cfg.max_windows)
    while c * k * extent(width) > cfg.act_depth:
        width -= 1
    width = _balanced(spec.out_w, width)
    rows = min(spec.out_h, cfg.max_windows // width)
    while c * extent(rows) * extent(width) > cfg.act_depth:
        rows -= 1
    rows = _balanced(spec.out_h, rows)
    tiles = []
    for r0 in range(0, spec.out_h, rows):
        r1 = min(spec.out_h, r0 + rows)
        for c0 in range(0, spec.out_w, width):
            c1 = min(spec.out_w, c0 + width)
            tiles.append(Tile(r0, r1, c0, c1, extent(r1 - r0), extent(c1 - c0)))
    return tiles


def segments(taps: int, cfg: SnaPEAConfig) -> range:
    """First tap of every segment of a kernel group whose longest kernel has ``taps``."""
    return range(0, max(1, taps), cfg.max_taps)


def layer_order(w: np.ndarray, spec: ConvLayer, cfg: SnaPEAConfig,
                params: LayerParams | None) -> KernelOrder:
    return reorder(w, params)


# --- the host driver: stream beats ---------------------------------------------------------

@dataclass
class Command:
    cmd: dict
    acts: list  # input beats (one activation each)
    weights: list  # weight/index beats (one {weight, offset} per lane)
    windows: int  # windows each lane walks (one band of the tile)
    pixels: np.ndarray  # [bands, windows]: output pixel (row-major) of each band's windows
    channel0: int  # first output channel of the group
    kernels: int  # kernels of the group (lane l: kernel l % kernels, band l // kernels)
    tap0: int  # the segment's first tap (of the reordered kernels)

    @property
    def bands(self) -> int:
        return len(self.pixels)

    @property
    def lanes_used(self) -> int:
        return self.bands * self.kernels


def bands_of(tile: Tile, kernels: int, cfg: SnaPEAConfig) -> int:
    """Bands a tile's rows are cut into for a group of ``kernels`` kernels: the most
    (at most ``lanes // kernels``) that split its rows evenly, so every lane walks the same
    number of windows. Lanes a group leaves idle take the other bands: lane ``l`` computes
    kernel ``l % kernels`` on band ``l // kernels``."""
    most = max(1, cfg.lanes // max(1, kernels))
    rows = tile.r1 - tile.r0
    return max(r for r in range(1, min(most, rows) + 1) if rows % r == 0)


IDLE_LANE = {"taps": 0, "exact_from": 0, "spec_n": 0, "threshold": 0, "bias": 0, "mult": 0,
             "shift": 0, "last": 0}


def _segment_lane(order: KernelOrder, k: int, t0: int, cfg: SnaPEAConfig, bias, mult,
                  shift) -> dict:
    """Kernel ``k``'s lane parameters for the segment starting at tap ``t0``."""
    n = min(cfg.max_taps, int(order.taps[k]) - t0)
    if n <= 0:
        return dict(IDLE_LANE)  # the kernel ended in an earlier segment
    spec_n = int(order.spec_n[k]) - t0
    return {"taps": n, "exact_from": min(max(0, int(order.exact_from[k]) - t0), n + 1),
            "spec_n": spec_n if 0 < spec_n <= n else 0, "threshold": int(order.threshold[k]),
            "bias": int(bias[k]), "mult": int(mult[k]), "shift": int(shift[k]),
            "last": int(int(order.taps[k]) <= t0 + cfg.max_taps)}


def layer_commands(x: np.ndarray, spec: ConvLayer, w: np.ndarray, bias, mult, shift,
                   cfg: SnaPEAConfig, params: LayerParams | None = None,
                   terminate: bool = True) -> list[Command]:
    """Every command of one layer in issue order: tile by tile, lane group by lane group,
    segment by segment."""
    order = layer_order(w, spec, cfg, params)
    xp = np.pad(np.asarray(x, np.int64), ((0, 0), (spec.pad, spec.pad), (spec.pad, spec.pad)))
    kk = spec.k * spec.k
    cmds = []
    for t in plan_layer(spec, cfg):
        y0, x0 = t.r0 * spec.stride, t.c0 * spec.stride
        acts = xp[:, y0:y0 + t.in_rows, x0:x0 + t.in_cols].reshape(-1).tolist()
        pixels = t.pixels(spec.out_w)
        for g0 in range(0, spec.out_ch, cfg.lanes):
            ks = list(range(g0, min(spec.out_ch, g0 + cfg.lanes)))
            nb = bands_of(t, len(ks), cfg)
            band_w = t.windows // nb
            # a band's windows are the tile's, a band's input its rows' (the offsets shifted)
            band_step = (t.r1 - t.r0) // nb * spec.stride * t.in_cols
            used = nb * len(ks)
            taps_g = int(max(order.taps[k] for k in ks))
            segs = segments(taps_g, cfg)
            for t0 in segs:
                lanes = [_segment_lane(order, ks[lane % len(ks)], t0, cfg, bias, mult, shift)
                         if lane < used else dict(IDLE_LANE) for lane in range(cfg.lanes)]
                n = min(cfg.max_taps, taps_g - t0)
                beats = []
                for j in range(t0, t0 + n):
                    row = []
                    for lane in range(cfg.lanes):
                        k = ks[lane % len(ks)]
                        if lane < used and j < order.taps[k]:
                            c, r = divmod(int(order.index[k, j]), kk)
                            ky, kx = divmod(r, spec.k)
                            row.append({"weight": int(order.weight[k, j]),
                                        "offset": (c * t.in_rows + ky) * t.in_cols + kx
                                        + lane // len(ks) * band_step})
                        else:
                            row.append({"weight": 0, "offset": 0})
                    beats.append(row)
                load = g0 == 0 and t0 == 0
                readout = t0 == segs[-1]
                cmd = {"load_acts": int(load), "act_count": len(acts) if load else 0,
                       "taps": n, "readout": int(readout),
                       "tile": {"windows": band_w, "out_w": t.width,
                                "col_step": spec.stride, "row_step": spec.stride * t.in_cols,
                                "first": int(t0 == 0), "check_phase": t0 % cfg.check_every,
                                "terminate": int(terminate), "relu": int(spec.relu)},
                       "lane": lanes}
                cmds.append(Command(cmd, acts if load else [], beats, band_w,
                                    pixels.reshape(nb, band_w), g0, len(ks), t0))
    return cmds


class StepModel:
    """Step-per-cycle model of ``SnaPEABlock``: the FSM advanced one clock at a time with the
    valid/ready handshake of every stream port (``cmd``, ``acts``, ``weights`` in, ``out``
    out; the patterns of ``sim.streams.handshake_patterns``, as the cocotb bench drives
    them), the read-out's three places (bank read data, the lanes' registers, the output
    register), and each lane's issue stage tap by tap over its windows, with the lane's bank
    of partial sums between segments.

    ``run`` returns ``(outputs [M, N], stats)``: ``stats["cycles"]`` counted from the first
    command transfer to the last output transfer, inclusive, ``stats["out_cycles"]`` the
    cycle of every output transfer from the same origin, ``stats["macs"]`` (useful MACs;
    taps issued and discarded after an early stop are ``stats["squashed"]``) and
    ``stats["trace"]`` (port -> absolute transfer cycles)."""

    def __init__(self, cfg: SnaPEAConfig):
        self.cfg = cfg

    def _compute(self, c: Command, imem, banks) -> tuple[int, int, int]:
        """Every lane of one command, window by window, tap by tap: updates the banks and
        returns (the slowest lane's issue cycles, useful MACs, squashed taps)."""
        cfg, fxp = self.cfg, self.cfg.fxp
        cmd, tile = c.cmd, c.cmd["tile"]
        macs = squashed = slowest = 0
        for lane in range(cfg.lanes):
            p = cmd["lane"][lane]
            cyc = 0
            ox = oy = 0
            for w_i in range(c.windows if p["taps"] else 0):
                base = oy * tile["row_step"] + ox * tile["col_step"]
                acc, dead = (p["bias"], False) if tile["first"] else banks[lane][w_i]
                # a window that stopped in an earlier segment costs the tap that finds its
                # flag in the bank
                issued = 1 if dead else 0
                for j in range(0 if dead else p["taps"]):
                    issued += 1
                    macs += 1
                    row = c.weights[j][lane]
                    acc += int(imem[base + row["offset"]]) * row["weight"]
                    exact = (tile["terminate"] and j + 1 >= p["exact_from"]
                             and (c.tap0 + j + 1) % cfg.check_every == 0 and acc < 0)
                    pred = p["spec_n"] > 0 and j + 1 == p["spec_n"] and acc < p["threshold"]
                    if exact or pred:
                        dead = True
                        break
                early = dead and issued < p["taps"]
                last_window = w_i == c.windows - 1
                # after an early stop the lane spends up to lane_squash more cycles on the
                # window (taps in flight, discarded, and the move on; not after its last)
                extra = (min(p["taps"] - issued, cfg.lane_squash)
                         if early and not last_window else 0)
                cyc += issued + extra
                squashed += extra
                if p["last"]:
                    y = 0 if dead else int(requantize(acc, p["mult"], p["shift"], fxp,
                                                      bool(tile["relu"])))
                    banks[lane][w_i] = (y, dead)
                else:
                    banks[lane][w_i] = (acc, dead)
                ox += 1
                if ox == tile["out_w"]:
                    ox, oy = 0, oy + 1
            slowest = max(slowest, cyc)
        return slowest, macs, squashed

    def run(self, cmds: list[Command], m: int, n: int, valid_p: float = 1.0,
            ready_p: float = 1.0, seed: int = 0, max_cycles: int = 50_000_000):
        from .streams import Source, handshake_patterns

        cfg = self.cfg
        out = np.zeros((m, n), np.int64)
        macs = squashed = 0
        imem = np.zeros(cfg.act_depth, np.int64)
        banks = [[(0, False)] * cfg.max_windows for _ in range(cfg.lanes)]
        pat = handshake_patterns(valid_p, ready_p, seed)
        srcs = {"cmd": Source(range(len(cmds)), pat["cmd"]),
                "acts": Source([v for c in cmds for v in c.acts], pat["acts"]),
                "weights": Source([0] * sum(len(c.weights) for c in cmds), pat["weights"])}
        out_ready = pat["out"]
        trace = {"cmd": [], "acts": [], "weights": [], "out": []}
        state, c, cnt, left, t = "IDLE", None, 0, 0, 0
        pend = mid = have = more = False
        done = 0
        while done < len(cmds):
            if t >= max_cycles:
                raise TimeoutError(f"the step model ran {max_cycles} cycles")
            # every source is asked every cycle, as the bench does (a source that offers
            # a beat holds it until it is taken)
            valid = {p: src.valid(t) for p, src in srcs.items()}
            ready = out_ready(t)
            taken = None
            nxt = state
            if state == "IDLE":
                if valid["cmd"]:
                    taken = "cmd"
                    c = cmds[srcs["cmd"].payload()]
                    cnt = 0
                    nxt = "ACTS" if c.cmd["load_acts"] and c.cmd["act_count"] else "WEIGHTS"
            elif state == "ACTS":
                if valid["acts"]:
                    taken = "acts"
                    cnt += 1
                    if cnt == c.cmd["act_count"]:
                        cnt, nxt = 0, "WEIGHTS"
            elif state == "WEIGHTS":
                if valid["weights"]:
                    taken = "weights"
                    cnt += 1
                    if cnt == c.cmd["taps"]:
                        cnt, nxt = 0, "LAUNCH"
            elif state == "LAUNCH":
                imem[:len(c.acts)] = c.acts
                slowest, mc, sq = self._compute(c, imem, banks)
                macs, squashed = macs + mc, squashed + sq
                left = slowest + cfg.compute_tail  # COMPUTE: the lanes, then the tail
                nxt = "COMPUTE"
            elif state == "COMPUTE":
                left -= 1
                if left == 0:
                    if c.cmd["readout"]:
                        cnt, pend, mid, have, more = 0, False, False, False, c.windows != 0
                        for lane in range(c.lanes_used):
                            out[c.pixels[lane // c.kernels], c.channel0 + lane % c.kernels] = [
                                v for v, _ in banks[lane][:c.windows]]
                        nxt = "READOUT"
                    else:
                        nxt, done = "IDLE", done + 1
            elif state == "READOUT":
                # a word moves on when the place after it is free or moves on itself
                take = have and ready
                move_out = mid and (not have or take)
                move_mid = pend and (not mid or move_out)
                fetch = more and (not pend or move_mid)
                if take:
                    trace["out"].append(t)
                n_pend = True if fetch else (False if move_mid else pend)
                n_mid = True if move_mid else (False if move_out else mid)
                n_have = True if move_out else (False if take else have)
                if fetch:
                    cnt += 1
                    more = cnt != c.windows
                if take and not move_out and not pend:
                    nxt, done = "IDLE", done + 1
                pend, mid, have = n_pend, n_mid, n_have
            if taken:
                trace[taken].append(t)
                srcs[taken].advance()
            state = nxt
            t += 1
        origin = trace["cmd"][0]
        return out, {"cycles": trace["out"][-1] - origin + 1 if trace["out"] else t - origin,
                     "out_cycles": [x - origin for x in trace["out"]], "macs": macs,
                     "squashed": squashed, "trace": trace}


# --- the vectorised simulator --------------------------------------------------------------

def layer_cycles(spec: ConvLayer, cfg: SnaPEAConfig, macs: np.ndarray, stopped: np.ndarray,
                 taps: np.ndarray, sample: int = 1) -> dict:
    """Cycles of a layer (closed form over tiles, lane groups and segments of
    ``SnaPEAConfig.command_cycles``) from every window's outcome: ``macs`` [M, N] the MACs it
    performs (of the reordered kernel, all segments), ``stopped`` [M, N] whether it ended
    early (output forced to 0), ``taps`` [N] the kernels' lengths.

    A lane's issue cycles in a segment are the sum of its windows' ``window_cycles``: a
    window that stops early also pays the taps issued before the decision arrived, except
    the tile's last window (nothing waits for those); a window that stopped in an earlier
    segment costs its flag lookup (one tap) the same way.

    ``sample > 1``: ``macs`` holds only every ``sample``-th window (raster order); each
    tile's per-lane sums are scaled up from its sampled windows (an estimate)."""
    tiles = plan_layer(spec, cfg)
    n = spec.out_ch
    groups = ceil_div(n, cfg.lanes)
    pad = groups * cfg.lanes - n
    taps = np.asarray(taps, np.int64)
    taps_g = np.pad(taps, (0, pad)).reshape(groups, cfg.lanes).max(1)  # [G]
    nseg = np.maximum(1, ceil_div_np(taps_g, cfg.max_taps))  # [G]
    windows = np.array([t.windows for t in tiles])
    pixels = np.concatenate([t.pixels(spec.out_w) for t in tiles])
    starts = np.concatenate([[0], np.cumsum(windows)[:-1]])
    if sample == 1:
        rows = pixels  # the windows in tile order
        tile_of = None
    else:
        sampled = np.arange(len(macs)) * sample
        tile_of = np.repeat(np.arange(len(tiles)), windows)[np.argsort(pixels)][sampled]
        rows = np.arange(len(macs))
    mac_t, stop_t = np.asarray(macs)[rows], np.asarray(stopped)[rows]
    last = starts + windows - 1  # each tile's last window
    kernels = np.minimum(cfg.lanes, n - np.arange(groups) * cfg.lanes)  # [G]
    nbands = np.array([[bands_of(t, int(kg), cfg) for kg in kernels] for t in tiles])  # [T, G]
    slowest = np.zeros((len(tiles), groups), np.int64)
    busy_mean = squashed = 0.0
    cycles = 0
    for s in range(int(nseg.max())):
        t0 = s * cfg.max_taps
        seg = np.clip(taps - t0, 0, cfg.max_taps)[None]  # [1, N] the kernels' taps here
        dead = stop_t & (mac_t <= t0) & (seg > 0) if s else np.zeros_like(stop_t)
        performed = np.where(dead, 1, np.clip(mac_t - t0, 0, seg))
        early = dead | (stop_t & (mac_t > t0) & (mac_t < t0 + seg))
        cost = cfg.window_cycles(seg, performed, early)
        extra = cost - performed  # squashed taps (0 unless early)
        if sample == 1:
            per_tile = np.add.reduceat(cost, starts, axis=0) - extra[last]
        else:
            per_tile = np.zeros((len(tiles), n), np.float64)
            np.add.at(per_tile, tile_of, cost)
            counts = np.bincount(tile_of, minlength=len(tiles))
            per_tile = np.rint(per_tile * (windows / np.maximum(counts, 1))[:, None])
        lane_busy = np.pad(per_tile, ((0, 0), (0, pad))).reshape(len(tiles), groups, cfg.lanes)
        for ti, g in zip(*np.nonzero(nbands > 1)):
            # a group that leaves lanes idle: its lanes walk bands of the tile's rows
            lane_busy[ti, g] = _band_busy(cost, extra, ti, g, nbands[ti, g], starts, windows,
                                          tile_of, kernels[g], cfg.lanes)
        squashed += (float(lane_busy.sum()) - float(performed.sum()) * (
            1 if sample == 1 else sample))
        active = s < nseg  # [G]: groups that have a segment s
        slow = lane_busy.max(2).astype(np.int64) * active[None]
        slowest += slow
        used = np.pad(seg[0] > 0, (0, pad)).reshape(groups, cfg.lanes).sum(1)  # [G]
        used_tg = np.maximum(used[None] * nbands, 1)
        busy_mean += float((lane_busy.sum(2) / used_tg).sum())
        seg_beats = np.clip(taps_g - t0, 0, cfg.max_taps) * active
        readout = active & (s == nseg - 1)
        cycles += int(len(tiles) * (active.sum() * (2 + cfg.compute_tail) + seg_beats.sum())
                      + slow.sum()
                      + ((cfg.readout_latency + windows[:, None] // nbands) * readout).sum())
    act_beats = np.array([spec.in_ch * t.in_rows * t.in_cols for t in tiles])
    cycles += int(act_beats.sum())
    return {"cycles": int(cycles), "compute_cycles": int(slowest.sum()),
            "lane_balance": busy_mean / max(1, slowest.sum()), "tiles": len(tiles),
            "groups": groups, "segments": int(nseg.sum()), "act_beats": int(act_beats.sum()),
            "weight_beats": int(len(tiles) * taps_g.sum()), "squashed": int(round(squashed))}


def _band_busy(cost, extra, ti, g, nb, starts, windows, tile_of, kernels, lanes):
    """Issue cycles of every lane of group ``g`` on tile ``ti`` when its ``kernels`` kernels
    run on ``nb`` bands of the tile (lane ``b * kernels + j``: kernel ``j`` on band ``b``);
    each band's last window pays no squash. ``tile_of`` (sampled windows): scaled up."""
    ks = slice(g * lanes, g * lanes + kernels)
    band_w = windows[ti] // nb
    busy = np.zeros(lanes, np.float64)
    if tile_of is None:
        rows = np.arange(starts[ti], starts[ti] + windows[ti])
        c = cost[rows, ks].reshape(nb, band_w, kernels)
        b = c.sum(1) - extra[rows, ks].reshape(nb, band_w, kernels)[:, -1]
    else:
        # sampled windows of the tile, in raster order: their band by position
        rows = np.nonzero(tile_of == ti)[0]
        band = np.minimum(np.arange(len(rows)) * nb // max(1, len(rows)), nb - 1)
        b = np.zeros((nb, kernels))
        np.add.at(b, band, cost[rows, ks])
        b = np.rint(b * band_w / np.maximum(np.bincount(band, minlength=nb), 1)[:, None])
    busy[:nb * kernels] = b.ravel()
    return busy


def ceil_div_np(a, b):
    return -(-np.asarray(a) // b)


def index_bits(spec: ConvLayer) -> int:
    """Bits of one tap's index as stored in DRAM: its position ``c·k·k + ky·k + kx`` in the
    kernel, at the narrowest width that holds every position (the host turns it into the
    tile's input offset, which depends on the tile, when it sends the weight beats)."""
    return max(1, ceil_log2(spec.gemm[1]))


def index_stream_bits(spec: ConvLayer, order: KernelOrder, fxp) -> tuple[int, int]:
    """(bits of the layer's packed weight/index stream in DRAM, of them the index's): per
    kernel a header of two tap counts (``taps``, ``exact_from``) at ``bits(K)`` each, then
    per tap its weight (``weight_bits``, two's complement) and position (``index_bits``)."""
    taps = int(np.asarray(order.taps).sum())
    header = 2 * max(1, int(spec.gemm[1]).bit_length()) * order.kernels
    idx = taps * index_bits(spec)
    return header + taps * fxp.weight_bits + idx, idx


def _events(spec, cfg, macs, order, checks, full_windows, cyc,
            weights_from_dram: bool = True) -> tuple[dict, dict]:
    """The layer's action counts on one image, and the index's part of them (bytes of
    DRAM and of the lanes' weight/index buffers) for the breakdown. The weight/index stream
    comes from DRAM once per batch (``weights_from_dram`` on the first image only), as the
    dense array's model counts its weights; every tile streams it into the lanes again
    (buffer writes)."""
    taps = order.taps
    tap_bits = cfg.fxp.weight_bits + cfg.addr_bits  # one lane buffer entry: weight, offset
    psum_bytes = ceil_div(cfg.fxp.acc_bits + 1, 8)
    m, _, n = spec.gemm
    # taps issued and discarded after an early stop read the buffers and multiply too
    issued = int(macs.sum()) + cyc["squashed"]
    # partial sums between segments: each window of each kernel, written then read back
    between = m * int(np.maximum(0, ceil_div_np(taps, cfg.max_taps) - 1).sum())
    entries = issued + cyc["weight_beats"] * cfg.lanes  # buffer reads + writes, per entry
    stream_bits, idx_bits = index_stream_bits(spec, order, cfg.fxp)
    weights_dram = ceil_div(stream_bits, 8) + 4 * n if weights_from_dram else 0
    events = {
        "mac": issued,
        "compare": int(checks),  # sign / threshold checks
        "requant": int(full_windows),  # terminated windows skip the requantiser
        "sram_read_byte": issued,  # input buffer, one activation per tap
        "sram_write_byte": cyc["act_beats"],  # input buffer fill
        # per-lane weight + index buffers (entries of tap_bits): read per tap, written per
        # weight beat
        "small_sram_byte": ceil_div(entries * tap_bits, 8)
        + 2 * m * n  # output bank write + read-out
        + 2 * between * psum_bytes,
        "dram_byte": spec.input_size + weights_dram + spec.output_size,
    }
    index = {"dram_byte": ceil_div(idx_bits, 8) if weights_from_dram else 0,
             "small_sram_byte": ceil_div(entries * cfg.addr_bits, 8)}
    return events, index


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
    index_events: dict | None = None  # the index's part of ``events`` (``_events``)


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
              limit: int | None = None, weights_from_dram: bool = True) -> LayerRun:
    """Vectorised run of one layer on one input ([C, H, W]): every window, exact (default).

    Opt-in estimate: with ``limit``, layers with more than ``limit`` window x kernel x tap
    terms evaluate every ``sample_stride``-th window only and scale the per-tile lane sums,
    MACs and events (``outputs`` then covers the sampled windows only).
    ``weights_from_dram``: count the weight/index stream's DRAM read (the first image of a
    batch; later images reuse it).
    """
    cfg.fxp.check_reduction(spec.name, spec.gemm[1], int(np.abs(bias).max(initial=0)))
    order = layer_order(w, spec, cfg, params)
    s = sample_stride(spec, limit)
    a = im2col_np(x, spec)[::s]
    wm = np.asarray(w, np.int64).reshape(spec.out_ch, -1).T
    t = termination(a, wm, bias, order, cfg.check_every, terminate)
    dense_macs = np.broadcast_to(order.taps, t.macs.shape)
    cyc = layer_cycles(spec, cfg, t.macs, t.zeroed, order.taps, s)
    base_cyc = layer_cycles(spec, cfg, dense_macs, np.zeros(t.macs.shape, bool), order.taps,
                            s)
    checks = _checks(t, order, cfg, terminate)
    scale = spec.gemm[0] / len(a)
    macs_all = t.macs if s == 1 else np.rint(t.macs * scale).astype(np.int64)
    full_windows = (~t.zeroed).sum() * scale
    events, index = _events(spec, cfg, macs_all, order, checks * scale, full_windows, cyc,
                            weights_from_dram)
    base_events, _ = _events(spec, cfg, np.rint(dense_macs * scale).astype(np.int64), order,
                             0, spec.gemm[0] * spec.out_ch, base_cyc, weights_from_dram)
    outputs = block_outputs(t, mult, shift, cfg.fxp, spec.relu)
    return LayerRun(t, order, cyc, base_cyc, events, base_events, outputs, s, index)


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
                             "tiles": runs[0].cyc["tiles"],
                             "segments": runs[0].cyc["segments"],
                             "sampled_every": runs[0].sample,
                             "baseline_cycles": base_cycles,
                             "baseline_energy_pj": base_energy,
                             "baseline_onchip_energy_pj": base_onchip})
    rep.priced(table)
    index = {k: sum(r.index_events[k] for r in runs) for k in runs[0].index_events}
    rep.extra["index_energy_pj"] = price(index, table)["energy_pj"]
    rep.extra["index_energy_share"] = rep.extra["index_energy_pj"] / rep.energy_pj
    rep.extra["speedup_vs_no_termination"] = base_cycles / cycles
    rep.extra["energy_saving_vs_no_termination"] = base_energy / rep.energy_pj
    # compute + buffers only: DRAM traffic (inputs, weights, outputs) is the same either way
    rep.extra["onchip_energy_saving_vs_no_termination"] = base_onchip / (rep.energy_pj
                                                      - rep.energy_breakdown_pj["dram"])
    if systolic is not None:
        rep.extra["systolic_cycles"] = systolic.cycles
        rep.extra["systolic_energy_pj"] = systolic.energy_pj
    return rep


def simulate_layer(spec: ConvLayer, datas: list, cfg: SnaPEAConfig, table=None,
                   params: LayerParams | None = None, terminate: bool = True,
                   mode: str = "exact") -> LayerReport:
    """One layer over one or more ``sim.workload.LayerData`` (one per image)."""
    runs = [run_layer(d.x, spec, d.w, d.bias, d.mult, d.shift, cfg, params, terminate,
                      weights_from_dram=i == 0) for i, d in enumerate(datas)]
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
    from zeroskip.models.snapea import snapea_network_forward

    if any(s.groups > 1 for s in workload.layers):  # one group at a time: sim/workload.py
        from .workload import simulate_per_group

        return simulate_per_group(simulate_network, workload, cfg, table, progress, mode=mode,
                                  params=params, systolic=systolic, sample_limit=sample_limit)
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
    if workload.trained_digits and any(p is not None for p in params):
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
                          params[i] if term else None, term, sample_limit, img == 0)
                for img, d in enumerate(datas)]
        sys_rep = None
        if systolic:
            from zeroskip.hw.config import SYSTOLIC_PRESETS

            from . import systolic as sys_sim
            sys_rep = sys_sim.simulate_layer(spec, SYSTOLIC_PRESETS["default"], table,
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
    if workload.trained_digits:
        from zeroskip.models import digits

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
    """The layer's output as the integer reference computes it: the lanes' outputs
    (``lane_outputs``), max-pooled by the host where the layer pools."""
    return max_pool(lane_outputs(data, spec, fxp, cfg, params), spec.pool)


def lane_outputs(data, spec: ConvLayer, fxp, cfg: SnaPEAConfig | None = None,
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


# --- what other dispatch would give (a study; the block dispatches statically) -------------

def dispatch_study(workload, cfg: SnaPEAConfig) -> dict:
    """Exact mode against termination off (``--mode dense``) on every image of a workload,
    the cycles of the block's static dispatch beside what the same per-(window, kernel)
    costs would take with a queue: every command's (window, kernel) pairs (window-major,
    the bands' copies of a kernel counted as kernels of their own) to the first free lane,
    and perfect balance (the group's issue cycles / lanes, rounded up); each with the
    block's ``lane_squash`` per early stop (``_squash``) and with none (``_no_squash``).
    The fixed cycles of every command (input and weight beats, launch, ``compute_tail``,
    read-out) are the block's in all of them. Kernels of one segment only (every layer of
    the digits net). Returns per scheme ``cycles``, ``cycles_dense``, ``cycles_saved``
    (1 - cycles / cycles_dense), ``macs_saved`` (1 - MACs issued / MACs with termination
    off; squashed taps count as issued where they are paid) and ``ratio`` = cycles_saved /
    macs_saved, and
    ``fixed_share``: the fixed cycles' share of the dense cycles (``input_beats_of_fixed``:
    the input beats' share of them)."""
    import heapq

    ok = eligible(workload.layers)
    tot = {"static": [0, 0], **{f"{s}_{q}": [0, 0] for s in ("queue", "balanced")
                                  for q in ("squash", "no_squash")}}
    fixed = dense_macs = issued = useful = input_beats = 0
    for i, spec in enumerate(workload.layers):
        for img in range(workload.batch):
            d = workload.layer_data(i, img)
            args = (d.x, spec, d.w, d.bias, d.mult, d.shift, cfg)
            runs = [run_layer(*args, None, False), run_layer(*args, None, bool(ok[i]))]
            if runs[0].cyc["segments"] != runs[0].cyc["groups"]:
                raise ValueError(f"layer {spec.name!r}: kernels in segments are not studied")
            fixed += runs[0].cyc["cycles"] - runs[0].cyc["compute_cycles"]
            input_beats += runs[0].cyc["act_beats"]
            dense_macs += int(runs[0].t.macs.sum())
            issued += int(runs[1].t.macs.sum()) + runs[1].cyc["squashed"]
            useful += int(runs[1].t.macs.sum())
            for col, r in enumerate(runs):
                taps = r.order.taps[None]
                early = r.t.zeroed & (r.t.macs < taps)
                tot["static"][col] += r.cyc["compute_cycles"]
                for q, squash in (("squash", cfg.lane_squash), ("no_squash", 0)):
                    cost = np.where(early, np.minimum(taps, r.t.macs + squash), taps)
                    for tile in plan_layer(spec, cfg):
                        rows = cost[tile.pixels(spec.out_w)]
                        for g0 in range(0, spec.out_ch, cfg.lanes):
                            pairs = rows[:, g0:g0 + cfg.lanes]
                            nb = bands_of(tile, pairs.shape[1], cfg)
                            # window-major: a band's window with every kernel on every band
                            pairs = pairs.reshape(nb, -1, pairs.shape[1]).transpose(1, 0, 2)
                            free = [0] * cfg.lanes
                            for c in pairs.ravel().tolist():
                                heapq.heappush(free, heapq.heappop(free) + c)
                            tot[f"queue_{q}"][col] += max(free)
                            tot[f"balanced_{q}"][col] += -(-int(pairs.sum()) // cfg.lanes)
    out = {"fixed_share": fixed / (fixed + tot["static"][0]),
           "input_beats_of_fixed": input_beats / fixed}
    for k, (dense, term) in tot.items():
        macs = useful if k.endswith("no_squash") else issued
        saved_c, saved_m = 1 - (fixed + term) / (fixed + dense), 1 - macs / dense_macs
        out[k] = {"cycles": fixed + term, "cycles_dense": fixed + dense,
                  "cycles_saved": saved_c, "macs_saved": saved_m, "ratio": saved_c / saved_m}
    return out
