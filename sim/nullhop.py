"""Cycle-level simulator of the NullHop sparse-feature-map block (``hw.nullhop.NullHopBlock``).

Three pieces, one schedule (``hw.config.NullHopConfig.pass_cycles``):
- ``plan_layer`` / ``pass_beats``: the host driver's cut of a layer into passes (output
  channel group x band of output rows x tile of input slices) and each pass's command,
  kernel beats and compressed input words (also used by the testbench);
- ``StepModel``: a step-per-cycle model of the block's FSM, memories and output encoder,
  honouring ``sim.streams`` handshake patterns and emitting every transfer with its cycle;
- ``simulate_layer``: the vectorised count from the real compressed input (per-row non-zero
  counts with numpy, no loop over pixels), for whole networks.

Host conventions: a layer's input is sent as slices of ``Cp = min(next_pow2(C), lanes)``
channels (the block's own outputs are slices of ``lanes`` channels, so layers chain; FC
layers see their input flattened to ``[C*H*W, 1, 1]`` by the host); a tile holds as many
slices as the kernel memory takes (``slices * Cp * k * k <= kernel_depth``); a band as many
output rows as the partial-sum memory takes (``rows * out_w <= acc_depth``, even with
pooling). Passes run for each output group, for each band, for each tile; kernels are loaded
once per group when a layer has a single tile, else every pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zeroskip.hw.config import NullHopConfig, ceil_div
from zeroskip.hw.fixedpoint import max_pool, requantize
from zeroskip.models.workloads import ConvLayer

from .energy import price
from .report import LayerReport, NetworkReport
from .sparse_format import Stream, encode, next_pow2, slice_rows, values_per_word
from .streams import Pattern, Source, handshake_patterns


@dataclass(frozen=True)
class Plan:
    cp: int  # input slice channels (power of two)
    slices: int  # input slices of the layer
    tile: int  # slices per pass
    tiles: int
    groups: int  # output channel groups of ``lanes``
    band: int  # output rows per band (before pooling)
    bands: int


@dataclass(frozen=True)
class Pass:
    group: int
    band: int
    tile: int
    oy0: int  # first output row (before pooling) of the band
    out_h: int  # output rows of the band
    iy0: int  # first input row streamed
    in_h: int  # input rows streamed
    pad_top: int
    s0: int  # first input slice
    ns: int  # slices
    load: bool
    emit: bool


def plan_layer(spec: ConvLayer, cfg: NullHopConfig) -> tuple[Plan, list[Pass]]:
    """The driver's passes for one layer; raises ValueError when the block cannot run it."""
    name = spec.name
    if spec.k > cfg.max_k:
        raise ValueError(f"layer {name!r}: kernel {spec.k}x{spec.k} exceeds max_k={cfg.max_k}; "
                         f"use --max-k {spec.k}")
    if spec.stride not in (1, 2, 4, 8):
        raise ValueError(f"layer {name!r}: stride {spec.stride} is not supported "
                         f"(1, 2, 4 or 8)")
    if spec.pad > cfg.max_k:
        raise ValueError(f"layer {name!r}: padding {spec.pad} exceeds max_k={cfg.max_k}")
    if spec.pool not in (1, 2):
        raise ValueError(f"layer {name!r}: pooling {spec.pool} is not supported (1 or 2x2)")
    if spec.pool == 2 and (not spec.relu or spec.out_h % 2 or spec.out_w % 2):
        raise ValueError(f"layer {name!r}: 2x2 pooling needs ReLU and an even output "
                         f"({spec.out_h}x{spec.out_w})")
    if max(spec.in_w, spec.out_w) > cfg.max_dim:
        raise ValueError(f"layer {name!r}: width {max(spec.in_w, spec.out_w)} exceeds "
                         f"max_dim={cfg.max_dim}; use --max-dim {max(spec.in_w, spec.out_w)}")
    kk = spec.k * spec.k
    cp = min(next_pow2(spec.in_ch), cfg.lanes)
    slices = ceil_div(spec.in_ch, cp)
    tile = min(slices, cfg.kernel_depth // (cp * kk))
    if tile < 1:
        raise ValueError(f"layer {name!r}: one slice of {cp} channels x {spec.k}x{spec.k} "
                         f"needs {cp * kk} kernel entries, kernel_depth is {cfg.kernel_depth}; "
                         f"use --kernel-depth {cp * kk}")
    tiles = ceil_div(slices, tile)
    step = spec.pool
    band = min(spec.out_h, cfg.acc_depth // spec.out_w) // step * step
    if band < 1:
        raise ValueError(f"layer {name!r}: {step} output row(s) of {spec.out_w} pixels do not "
                         f"fit acc_depth={cfg.acc_depth}; use --acc-depth {step * spec.out_w}")
    bands = ceil_div(spec.out_h, band)
    groups = ceil_div(spec.out_ch, cfg.lanes)
    plan = Plan(cp, slices, tile, tiles, groups, band, bands)
    passes = []
    s = spec.stride
    for g in range(groups):
        for b in range(bands):
            oy0 = b * band
            out_h = min(band, spec.out_h - oy0)
            top = oy0 * s - spec.pad
            iy0 = max(0, top)
            iy1 = min(spec.in_h, (oy0 + out_h - 1) * s - spec.pad + spec.k)
            if iy1 - iy0 > cfg.max_dim:
                raise ValueError(f"layer {name!r}: a band needs {iy1 - iy0} input rows, more "
                                 f"than max_dim={cfg.max_dim}")
            for t in range(tiles):
                s0 = t * tile
                passes.append(Pass(g, b, t, oy0, out_h, iy0, iy1 - iy0, iy0 - top, s0,
                                   min(tile, slices - s0), load=(tiles > 1 or b == 0),
                                   emit=(t == tiles - 1)))
    return plan, passes


def _x3(x: np.ndarray, spec: ConvLayer) -> np.ndarray:
    x = np.asarray(x, np.int64)
    want = (spec.in_ch, spec.in_h, spec.in_w)
    if x.shape != want:
        x = x.reshape(want)
    return x


def layer_outputs(data, spec: ConvLayer, fxp) -> np.ndarray:
    """The block's output of one layer: conv + bias -> requantise (+ReLU) -> 2x2 max-pool,
    int64 [out_ch, out_h/pool, out_w/pool] (signed values for a layer without ReLU)."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(_x3(data.x, spec)).double()[None]
    w = torch.from_numpy(np.asarray(data.w, np.int64)).double()
    acc = F.conv2d(x, w, stride=spec.stride, padding=spec.pad)[0].round().long().numpy()
    acc = acc + np.asarray(data.bias, np.int64)[:, None, None]
    y = requantize(acc, np.asarray(data.mult, np.int64)[:, None, None],
                   np.asarray(data.shift, np.int64)[:, None, None], fxp, spec.relu)
    return max_pool(y, spec.pool)


def output_stream(y: np.ndarray, p: Pass, spec: ConvLayer, cfg: NullHopConfig) -> Stream:
    """What the block sends for pass ``p`` (an emitting pass) given the layer's output ``y``."""
    n0 = p.group * cfg.lanes
    r0, r1 = p.oy0 // spec.pool, (p.oy0 + p.out_h) // spec.pool
    return encode(y[n0:n0 + cfg.lanes, r0:r1], cfg.sm_bits, cfg.lanes, cfg.fxp.act_bits)


def pass_beats(data, spec: ConvLayer, plan: Plan, p: Pass, cfg: NullHopConfig):
    """(command dict, kernel beats, input words as a ``Stream``) of one pass."""
    x = _x3(data.x, spec)
    L, cp = cfg.lanes, plan.cp
    n0 = p.group * L
    nn = min(L, spec.out_ch - n0)
    q = {}
    for f in ("bias", "mult", "shift"):
        v = np.zeros(L, np.int64)
        v[:nn] = np.asarray(getattr(data, f), np.int64)[n0:n0 + nn]
        q[f] = v.tolist()
    cmd = {"load": int(p.load), "emit": int(p.emit), "relu": int(spec.relu),
           "pool": int(spec.pool == 2), "k": spec.k,
           "stride_log2": spec.stride.bit_length() - 1, "pad_top": p.pad_top,
           "pad_left": spec.pad, "in_h": p.in_h, "in_w": spec.in_w, "out_h": p.out_h,
           "out_w": spec.out_w, "slices": p.ns, "slice_log2": cp.bit_length() - 1,
           "requant": q}
    weights = []
    if p.load:
        c0 = p.s0 * cp
        cn = p.ns * cp
        w = np.zeros((L, cn, spec.k, spec.k), np.int64)
        wl = np.asarray(data.w, np.int64).reshape(spec.out_ch, spec.in_ch, spec.k, spec.k)
        sub = wl[n0:n0 + nn, c0:c0 + cn]
        w[:nn, :sub.shape[1]] = sub
        weights = w.reshape(L, -1).T.tolist()  # entry (c*k + ky)*k + kx
    xs = x[p.s0 * cp:(p.s0 + p.ns) * cp, p.iy0:p.iy0 + p.in_h]
    words = Stream.concat(
        encode(xs[i * cp:(i + 1) * cp], cfg.sm_bits, cp, cfg.fxp.act_bits)
        for i in range(p.ns))
    return cmd, weights, words


# ------------------------------------------------------------------------------------------
# vectorised count
# ------------------------------------------------------------------------------------------
@dataclass
class LayerCount:
    cycles: int
    passes: int
    mac_cycles: int  # sum over passes of nnz * k * k
    valid_ops: int  # MAC cycles that land on an output of the band (per group, summed)
    useful_macs: int  # valid ops x real output channels
    in_words: int  # input words streamed, over all passes
    in_words_once: int  # the compressed input map's size (what DRAM holds)
    out_words: int
    weight_beats: int
    out_pixels: int  # output pixels read by the output stages (after pooling)
    in_nnz: int
    out_nnz: int


def kernel_range(coord: int, pad: int, out_n: int, k: int, s: int) -> tuple[int, int]:
    """First and last kernel offsets (on the stride grid) that take input coordinate
    ``coord`` to an output in ``0..out_n-1``; first > last when there is none. The RTL's
    MAC loop walks exactly these (``hw.nullhop``)."""
    a = coord + pad  # offsets o with o = a (mod s): from lo up, from hi down
    lo, hi = max(0, a - (out_n - 1) * s), min(k - 1, a)
    return lo + ((a - lo) & (s - 1)), hi - ((hi - a) & (s - 1))


def _range_count(coords: np.ndarray, pad: int, out_n: int, k: int, s: int) -> np.ndarray:
    """``kernel_range`` as a count, vectorised over coordinates."""
    a = coords + pad
    lo, hi = np.maximum(0, a - (out_n - 1) * s), np.minimum(k - 1, a)
    first, last = lo + ((a - lo) & (s - 1)), hi - ((hi - a) & (s - 1))
    return np.where(first <= last, (last - first) // s + 1, 0)


def _tile_sum(per_slice: np.ndarray, s0: np.ndarray, ns: np.ndarray) -> np.ndarray:
    """Sum of ``per_slice[slices, passes]`` over each pass's slices ``s0 .. s0+ns-1``."""
    cs = np.concatenate([np.zeros((1, per_slice.shape[1]), np.int64),
                         np.cumsum(per_slice, 0)], 0)
    cols = np.arange(per_slice.shape[1])
    return cs[s0 + ns, cols] - cs[s0, cols]


def _valid_positions(n_in: int, n_out: int, k: int, s: int, pad: int) -> np.ndarray:
    """For each input coordinate, how many kernel offsets land on an output coordinate."""
    i = np.arange(n_in)[:, None]
    num = i + pad - np.arange(k)[None, :]
    return ((num >= 0) & (num % s == 0) & (num // s < n_out)).sum(axis=1)


def count_layer(x: np.ndarray, y: np.ndarray, spec: ConvLayer, cfg: NullHopConfig,
                plan: Plan, passes: list[Pass]) -> LayerCount:
    """Closed form of the schedule over the passes, from the real input and output maps."""
    S, L, kk = cfg.sm_bits, cfg.lanes, spec.k * spec.k
    cp = plan.cp
    rows = slice_rows(x, cp)  # [slices, H, W*Cp]
    nzr = (rows != 0)
    row_nnz = nzr.sum(axis=2)  # [slices, H]
    n_pos = rows.shape[2]
    r_words = ceil_div(n_pos, S)
    last_nz = nzr[:, :, (r_words - 1) * S:].any(axis=2)  # last chunk of a row non-empty
    vpw = values_per_word(S, cfg.fxp.act_bits)
    row_vwords = _value_words(nzr, S, vpw)  # [slices, H]
    vcum = np.concatenate([np.zeros((plan.slices, 1), np.int64), np.cumsum(row_vwords, 1)], 1)
    cum = np.concatenate([np.zeros((plan.slices, 1), np.int64), np.cumsum(row_nnz, 1)], 1)
    pools = spec.pool
    wo = spec.out_w // pools
    y_rows = slice_rows(y, L)  # [groups, Ho, Wo*L]
    out_row_nnz = (y_rows != 0).sum(axis=2)
    out_row_vwords = _value_words(y_rows != 0, S, vpw)
    out_chunks_row = ceil_div(L * wo, S)

    g = np.array([p.group for p in passes])
    iy0 = np.array([p.iy0 for p in passes])
    in_h = np.array([p.in_h for p in passes])
    s0 = np.array([p.s0 for p in passes])
    ns = np.array([p.ns for p in passes])
    load = np.array([p.load for p in passes])
    emit = np.array([p.emit for p in passes])
    oy0 = np.array([p.oy0 for p in passes])
    out_h = np.array([p.out_h for p in passes])
    # the input side depends only on (band, tile): count it once per distinct pair
    keys = np.array([(p.band, p.tile) for p in passes])
    _, first, inv = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    ip = [passes[i] for i in first]
    u_iy0, u_in_h = iy0[first], in_h[first]
    u_s0, u_ns = s0[first], ns[first]
    per_slice = cum[:, u_iy0 + u_in_h] - cum[:, u_iy0]  # [slices, distinct passes]
    nnz = _tile_sum(per_slice, u_s0, u_ns)[inv]
    value_words = _tile_sum(vcum[:, u_iy0 + u_in_h] - vcum[:, u_iy0], u_s0, u_ns)[inv]
    gcum = np.concatenate([np.zeros((plan.slices, 1), np.int64),
                           np.cumsum(nzr.reshape(plan.slices, spec.in_h, -1, min(cp, S))
                                     .sum(axis=3).__add__(cfg.macs_per_channel - 1)
                                     .__floordiv__(cfg.macs_per_channel).sum(axis=2), 1)], 1)
    n_groups = _tile_sum(gcum[:, u_iy0 + u_in_h] - gcum[:, u_iy0], u_s0, u_ns)[inv]
    sm_words = ns * in_h * r_words
    # MAC cycles: a non-zero at (row, x) costs ny(row) * nx(x) cycles, ny depending on the
    # band; dead values (no offset reaches an output) cost none
    k, st = spec.k, spec.stride
    h, w = spec.in_h, spec.in_w
    # groups (macs_per_channel M > 1): up to M consecutive non-zeros of one block of
    # min(Cp, S) positions (one pixel's channels) share MAC cycles
    blk = min(cp, S)
    M = cfg.macs_per_channel
    per_blk = nzr.reshape(plan.slices, h, w, cp // blk, blk).sum(axis=4)
    gx = ((per_blk + M - 1) // M).sum(axis=3)  # groups per pixel [slices, H, W]
    row_groups = gx.sum(axis=2)  # [slices, H]
    nx = _range_count(np.arange(w), spec.pad, spec.out_w, k, st)
    wx = (gx * nx).sum(axis=2)  # [slices, H]
    zx = (gx * (nx == 0)).sum(axis=2)
    last_pos = np.where(nzr.any(axis=2), n_pos - 1 - np.argmax(nzr[:, :, ::-1], axis=2), 0)
    last_x = last_pos // cp  # x of each row's final non-zero
    mac = np.zeros((plan.slices, len(ip)), np.int64)
    dead = np.zeros((plan.slices, len(ip)), np.int64)
    last_dead = np.zeros(len(ip), bool)
    bands = {}
    for i, p in enumerate(ip):  # one entry per distinct band geometry
        bands.setdefault((p.iy0, p.in_h, p.pad_top, p.out_h), []).append(i)
    for (b0, bh, top, oh), idx in bands.items():
        ny = _range_count(np.arange(bh), top, oh, k, st)
        rws = slice(b0, b0 + bh)
        mac[:, idx] = (ny * wx[:, rws]).sum(axis=1)[:, None]
        dead[:, idx] = ((ny == 0) * row_groups[:, rws]
                        + (ny > 0) * zx[:, rws]).sum(axis=1)[:, None]
        for i in idx:
            sl, row = ip[i].s0 + ip[i].ns - 1, b0 + bh - 1
            last_dead[i] = ny[-1] == 0 or nx[last_x[sl, row]] == 0
    mac_cycles = _tile_sum(mac, u_s0, u_ns)[inv]
    dead_values = _tile_sum(dead, u_s0, u_ns)[inv]
    last_is_sm = ~last_nz[s0 + ns - 1, iy0 + in_h - 1]
    last_no_mac = last_is_sm | last_dead[inv]
    wbeats = ns * cp * kk * load
    ocum = np.concatenate([np.zeros((plan.groups, 1), np.int64), np.cumsum(out_row_nnz, 1)], 1)
    r0, r1 = oy0 // pools, (oy0 + out_h) // pools
    out_nnz = (ocum[g, r1] - ocum[g, r0]) * emit
    ovcum = np.concatenate([np.zeros((plan.groups, 1), np.int64),
                            np.cumsum(out_row_vwords, 1)], 1)
    out_vwords = (ovcum[g, r1] - ovcum[g, r0]) * emit
    out_pix = (r1 - r0) * wo * emit
    out_chunks = (r1 - r0) * out_chunks_row * emit
    output = _output_phases(y_rows, g, r0, r1, emit, spec, cfg)
    cycles = cfg.pass_cycles(weight_beats=ns * cp * kk, load=load, mac_cycles=mac_cycles,
                             sm_words=sm_words, dead_values=dead_values,
                             last_no_mac=last_no_mac, emit=emit, output=output,
                             collected=nnz - n_groups)
    # useful work: each non-zero input times the kernel offsets that reach an output
    vy = _valid_positions(spec.in_h, spec.out_h, spec.k, spec.stride, spec.pad)
    vx = _valid_positions(spec.in_w, spec.out_w, spec.k, spec.stride, spec.pad)
    per_pixel = (x != 0).sum(axis=0)  # [H, W]
    valid_one = int((per_pixel * vy[:, None] * vx[None, :]).sum())
    return LayerCount(
        cycles=int(cycles.sum()), passes=len(passes), mac_cycles=int(mac_cycles.sum()),
        valid_ops=valid_one * plan.groups, useful_macs=valid_one * spec.out_ch,
        in_words=int((sm_words + value_words).sum()),
        in_words_once=plan.slices * spec.in_h * r_words + int(row_vwords.sum()),
        out_words=int((out_chunks + out_vwords).sum()),
        weight_beats=int(wbeats.sum()), out_pixels=int(out_pix.sum()),
        in_nnz=int(np.count_nonzero(x)), out_nnz=int(np.count_nonzero(y)))


def _value_words(nz_rows: np.ndarray, S: int, vpw: int) -> np.ndarray:
    """Value words of every row of ``nz_rows`` ([..., positions], non-zero flags): per chunk of
    ``S`` positions, ceil(nnz / ``vpw``)."""
    n = nz_rows.shape[-1]
    r = ceil_div(n, S)
    padded = np.zeros(nz_rows.shape[:-1] + (r * S,), bool)
    padded[..., :n] = nz_rows
    per_chunk = padded.reshape(nz_rows.shape[:-1] + (r, S)).sum(axis=-1)
    return ((per_chunk + vpw - 1) // vpw).sum(axis=-1)


def _output_phases(y_rows: np.ndarray, g, r0, r1, emit, spec: ConvLayer,
                   cfg: NullHopConfig) -> np.ndarray:
    """``NullHopConfig.output_cycles`` of every pass from the output map ``y_rows``
    ([groups, Ho, Wo*L] positions, ``slice_rows``): chunks of S positions per row, their
    non-zero counts and fill times. 0 for passes that do not emit."""
    S, L, parts = cfg.sm_bits, cfg.lanes, cfg.parts
    groups, ho, n_pos = y_rows.shape
    wo = n_pos // L
    per_row = ceil_div(n_pos, S)
    padded = np.zeros((groups, ho, per_row * S), bool)
    padded[..., :n_pos] = y_rows != 0
    nnz = padded.reshape(groups, ho, per_row, S).sum(axis=3)  # [groups, Ho, chunks]
    vpw = values_per_word(S, cfg.fxp.act_bits)
    nnz = (nnz + vpw - 1) // vpw  # value words of each chunk
    if parts == 1:
        slots = S // L
        pixels = np.minimum(slots, wo - np.arange(per_row) * slots)
        fills = cfg.chunk_fills(pixels, spec.pool == 2, 0)
    else:
        fills = cfg.chunk_fills(1, spec.pool == 2, np.arange(per_row) % parts)
    # chunk j after chunk j - 1 (within a group's rows), as a running sum per group
    seq = nnz.reshape(groups, -1)
    f_seq = np.tile(fills, ho)
    step = np.maximum(1 + seq[:, :-1], f_seq[None, 1:])
    cs = np.concatenate([np.zeros((groups, 1), np.int64), np.cumsum(step, axis=1)], axis=1)
    first, last = r0 * per_row, r1 * per_row - 1  # the pass's first and last chunk
    out = (f_seq[first] + cs[g, last] - cs[g, first] + seq[g, last] + 1)
    return np.where(emit, out, 0)


def layer_cycles(data, spec: ConvLayer, cfg: NullHopConfig, y: np.ndarray | None = None) -> int:
    """Cycles of one layer (first command beat to last output beat), full-rate streams."""
    plan, passes = plan_layer(spec, cfg)
    x = _x3(data.x, spec)
    y = layer_outputs(data, spec, cfg.fxp) if y is None else y
    return count_layer(x, y, spec, cfg, plan, passes).cycles


def _events(c: LayerCount, spec: ConvLayer, cfg: NullHopConfig) -> dict:
    fxp = cfg.fxp
    wb, ab = ceil_div(fxp.weight_bits, 8), ceil_div(fxp.acc_bits, 8)
    word_bytes = ceil_div(cfg.word_bits, 8)
    L = cfg.lanes
    pw = 4 if spec.pool == 2 else 1
    return {
        "mac": c.valid_ops * L,
        # kernel memory (one row per MAC cycle) and the on-chip feature-map buffer that
        # re-streams the compressed input to every pass
        "sram_read_byte": c.mac_cycles * L * cfg.macs_per_channel * wb
        + c.in_words * word_bytes,
        "sram_write_byte": c.weight_beats * L * wb + c.in_words_once * word_bytes,
        # partial sums: read every MAC cycle, written on valid ones; read + cleared on output
        "small_sram_byte": (c.mac_cycles + c.valid_ops + 2 * c.out_pixels * pw) * L * ab,
        "requant": c.out_pixels * pw * L,
        "compare": c.out_pixels * (pw - 1) * L + c.out_words,
        # each compressed map and each weight crosses the DRAM interface once
        "dram_byte": (c.in_words_once + c.out_words) * word_bytes
        + spec.weight_size * wb + 4 * spec.out_ch,
    }


def simulate_layer(spec: ConvLayer, cfg: NullHopConfig, datas, table=None,
                   baseline=None) -> LayerReport:
    """One layer over the images in ``datas`` (a list of ``sim.workload.LayerData``), with
    the dense systolic array (``baseline``, its default preset if None) and this block with
    zero-skipping disabled (same schedule, every input value treated as non-zero)."""
    from zeroskip.hw.config import SYSTOLIC_PRESETS

    from . import systolic

    plan, passes = plan_layer(spec, cfg)
    cfg.fxp.check_reduction(spec.name, spec.gemm[1])
    total = None
    dense = None
    dens_in, dens_out = [], []
    for d in datas:
        x = _x3(d.x, spec)
        y = layer_outputs(d, spec, cfg.fxp)
        c = count_layer(x, y, spec, cfg, plan, passes)
        cd = count_layer(np.ones_like(x), y, spec, cfg, plan, passes)
        total = c if total is None else LayerCount(*(a + b for a, b in zip(
            vars(total).values(), vars(c).values())))
        dense = cd if dense is None else LayerCount(*(a + b for a, b in zip(
            vars(dense).values(), vars(cd).values())))
        dens_in.append(np.count_nonzero(x) / x.size)
        dens_out.append(np.count_nonzero(y) / y.size)
    n = len(datas)
    events = _events(total, spec, cfg)
    rep = LayerReport(spec.name, total.cycles, spec.macs * n, total.useful_macs, cfg.macs,
                      events).priced(table)
    noskip = price(_events(dense, spec, cfg), table)["energy_pj"]
    base_cfg = baseline or SYSTOLIC_PRESETS["default"]
    base = systolic.simulate_layer(spec, base_cfg, table, batch=n)
    word_bytes = ceil_div(cfg.word_bits, 8)
    in_dense = spec.input_size * n
    out_dense = spec.output_size // (spec.pool ** 2) * n
    rep.extra = {
        "input_density": float(np.mean(dens_in)),
        "output_density": float(np.mean(dens_out)),
        "passes": total.passes // n, "groups": plan.groups, "bands": plan.bands,
        "tiles": plan.tiles, "slice_channels": plan.cp,
        "mac_cycles": total.mac_cycles,
        "macs_vs_dense": total.useful_macs / (spec.macs * n),
        "bytes_in_compressed": total.in_words_once * word_bytes,
        "bytes_in_streamed": total.in_words * word_bytes,  # re-sent to every pass
        "bytes_out_compressed": total.out_words * word_bytes,
        "bytes_in_dense": in_dense, "bytes_out_dense": out_dense,
        "cycles_no_skip": dense.cycles,
        "speedup_vs_no_skip": dense.cycles / total.cycles,
        "energy_saving_vs_no_skip": noskip / rep.energy_pj,
        "systolic_cycles": base.cycles,
        "speedup_vs_systolic": base.cycles / total.cycles,
        "speedup_vs_systolic_per_mac": (base.cycles * base.mac_units)
                                       / (total.cycles * cfg.macs),
        "energy_saving_vs_systolic": base.energy_pj / rep.energy_pj,
    }
    return rep


def simulate_network(workload, cfg: NullHopConfig, table=None, progress=None) -> NetworkReport:
    """Every layer of a ``sim.workload.Workload``; real activations for the digits net,
    the seeded activation model otherwise."""
    if any(s.groups > 1 for s in workload.layers):  # one group at a time: sim/workload.py
        from .workload import simulate_per_group

        return simulate_per_group(simulate_network, workload, cfg, table, progress)
    reports = []
    for i, spec in enumerate(workload.layers):
        datas = [workload.layer_data(i, b) for b in range(workload.batch)]
        reports.append(simulate_layer(spec, cfg, datas, table))
        if progress:
            progress(spec.name)
    from zeroskip.hw.config import SYSTOLIC_PRESETS

    base = SYSTOLIC_PRESETS["default"]
    notes = [workload.description, f"{workload.batch} image(s)",
             f"per layer 'extra': speedup and energy saving against the dense systolic array's "
             f"default preset ({base.rows}x{base.cols} = {base.rows * base.cols} MACs; also "
             f"per MAC unit) and against this block with zero-skipping disabled"]
    for r in reports:
        e = r.extra
        notes.append(f"{r.name}: input density {e['input_density']:.2f} -> MAC utilisation "
                      f"{r.utilization:.1%}, speedup {e['speedup_vs_no_skip']:.2f}x vs no "
                      f"skipping, {e['speedup_vs_systolic']:.2f}x vs dense systolic "
                      f"({e['speedup_vs_systolic_per_mac']:.2f}x per MAC unit), energy "
                      f"systolic/nullhop energy {e['energy_saving_vs_systolic']:.2f}, compressed "
                      f"input {e['bytes_in_compressed'] / max(1, e['bytes_in_dense']):.2f}x "
                      f"the dense bytes")
    return NetworkReport("nullhop", cfg.to_dict(), reports, notes)


# ------------------------------------------------------------------------------------------
# step-per-cycle model
# ------------------------------------------------------------------------------------------
@dataclass
class _Registers:
    """The FSM's registers between two clock edges; ``StepModel`` works out the next cycle's
    in a copy (``copy``), from these."""

    state: str = "IDLE"
    count: int = 0  # cycles spent in a timed state (PRIME, DECODE, DRAIN)
    wcount: int = 0  # kernel beats loaded
    mask: int = 0  # the current SM word's non-zero positions not yet taken
    cur_w: int = 0  # the current SM word: index in its row, input row, input slice
    cur_iy: int = 0
    cur_slice: int = 0
    nxt_w: int = 0  # the same for the next SM word
    nxt_iy: int = 0
    nxt_slice: int = 0
    sm_done: int = 0  # the pass's last SM word has been taken
    vals: tuple[int, ...] = ()  # the group's values (M slots, empty ones 0)
    x: int = 0  # the group's column and input row
    iy: int = 0
    wbases: tuple[int, ...] = ()  # kernel-memory base (input channel * k*k) of each value
    ky: int = 0  # the kernel offset the MAC walk is at
    kx: int = 0
    kx_first: int = 0  # the walk's box of offsets (on the stride grid)
    ky_last: int = 0
    kx_last: int = 0
    gcount: int = 0  # values in the group
    vslot: int = 0  # the current value's slot in its value word (``values_per_word``)
    reach: bool = False  # the group's box is not empty

    def copy(self) -> _Registers:
        # a plain dict copy: dataclasses.replace would more than double a cycle's time
        new = object.__new__(_Registers)
        new.__dict__ = self.__dict__.copy()
        return new

    @property
    def input_end(self) -> bool:
        """Every word of the pass's input has been taken."""
        return self.mask == 0 and bool(self.sm_done)

    @property
    def mac_last(self) -> bool:
        """The MAC walk is at the last offset of its box."""
        return self.ky == self.ky_last and self.kx == self.kx_last


@dataclass(slots=True)
class _Transfers:
    """What happens on the ports in one cycle (``StepModel._handshake``)."""

    cmd: bool
    weights: bool
    act_in: bool  # act_in's word is used this cycle (an SM word or the current value)
    act_in_taken: bool  # ... and accepted: an SM word, or its value word's last value
    act_out: bool
    out_word: tuple[int, int, int] | None  # the word the send buffer offers, if any


@dataclass
class _Run:
    """One ``StepModel.run``'s state besides the FSM's registers: the ports, the memories,
    the command of the current pass (with the constants derived from it) and the output
    stage (``StepModel._output_jobs``'s dict)."""

    src: dict[str, Source]
    out_ready: Pattern
    kmem: np.ndarray
    pmem: np.ndarray
    t: int = 0
    cmd: dict | None = None
    kk: int = 0  # k * k
    cp: int = 0  # input slice channels
    row_words: int = 0  # SM words of an input row
    out_stage: dict | None = None


class StepModel:
    """Step-per-cycle model of ``NullHopBlock``: the same FSM states, counters and memories,
    advanced one clock at a time, one method per state; the schedule is stated in
    ``NullHopConfig``'s docstring (``hw/config.py``). Arithmetic is applied when a MAC cycle
    issues (the RTL's read-modify-write pipeline forwards, so the result is the same)."""

    def __init__(self, cfg: NullHopConfig):
        self.cfg = cfg
        self._vpw = values_per_word(cfg.sm_bits, cfg.fxp.act_bits)
        self._states = {"IDLE": self._idle, "PRIME": self._prime, "LOAD": self._load,
                        "FETCH": self._fetch, "DECODE": self._decode, "COLLECT": self._collect,
                        "MAC": self._mac, "DRAIN": self._drain, "OUT": self._out}

    def run(self, cmds, weights, words, n_out: int, valid_p: float = 1.0,
            ready_p: float = 1.0, seed: int = 0, max_cycles: int = 5_000_000):
        """Feed the beats of a sequence of passes; returns ``(out_words, trace)``:
        ``out_words`` a list of (data, first, last), ``trace`` per-port transfer cycles and
        ``cycles`` (first command to last output word, inclusive)."""
        cfg = self.cfg
        pat = handshake_patterns(valid_p, ready_p, seed,
                                 sources=("cmd", "weights", "act_in"), sinks=("act_out",))
        s = _Run(src={"cmd": Source(cmds, pat["cmd"]),
                      "weights": Source(weights, pat["weights"]),
                      "act_in": Source(words, pat["act_in"])},
                 out_ready=pat["act_out"],
                 kmem=np.zeros((cfg.kernel_depth, cfg.lanes), np.int64),
                 pmem=np.zeros((cfg.acc_depth, cfg.lanes), np.int64))
        zeros = (0,) * cfg.macs_per_channel
        r = _Registers(vals=zeros, wbases=zeros)
        trace = {"cmd": [], "weights": [], "act_in": [], "act_out": []}
        out = []
        while len(out) < n_out:
            if s.t >= max_cycles:
                raise RuntimeError("step model did not finish: the schedule deadlocked")
            io = self._handshake(s, r)
            if io.act_out:
                trace["act_out"].append(s.t)
                out.append(io.out_word)
            n = r.copy()
            self._states[r.state](s, r, n, io)
            # a source moves on to its next beat after the cycle that took one (the state
            # has read the payload)
            for name, fired in (("cmd", io.cmd), ("weights", io.weights),
                                ("act_in", io.act_in_taken)):
                if fired:
                    trace[name].append(s.t)
                    s.src[name].advance()
            r = n
            s.t += 1
        trace["cycles"] = trace["act_out"][-1] - trace["cmd"][0] + 1
        return out, trace

    def _handshake(self, s: _Run, r: _Registers) -> _Transfers:
        """This cycle's transfers: each port's ready follows from the state and registers,
        its valid from the source (every source is polled every cycle: once valid it holds its
        beat), ``act_out``'s ready from its pattern."""
        st = r.state
        end = r.input_end
        in_ready = st == "COLLECT" or (st == "FETCH" and not end) or (
            st == "MAC" and r.mac_last and not end)
        src, t = s.src, s.t
        cmd_valid, w_valid, in_valid = (src["cmd"].valid(t), src["weights"].valid(t),
                                        src["act_in"].valid(t))
        out_word = self._offer(s.out_stage) if st == "OUT" else None
        # a value word is held (valid, not ready) until its last value is used
        m = r.mask
        word_done = m == 0 or r.vslot == self._vpw - 1 or m & (m - 1) == 0
        used = in_ready and in_valid
        return _Transfers(st == "IDLE" and cmd_valid, st == "LOAD" and w_valid,
                          used, used and word_done, out_word is not None and s.out_ready(t),
                          out_word)

    # --- the FSM's states: each works out the next registers ``n`` from ``r`` --------------
    def _idle(self, s: _Run, r: _Registers, n: _Registers, io: _Transfers) -> None:
        """Waits for a command; taking one clears the input counters and starts PRIME."""
        if io.cmd:
            c = s.cmd = s.src["cmd"].payload()
            s.kk = c["k"] * c["k"]
            s.cp = 1 << c["slice_log2"]
            s.row_words = ceil_div(s.cp * c["in_w"], self.cfg.sm_bits)
            n.wcount = n.mask = n.nxt_w = n.nxt_iy = n.nxt_slice = n.sm_done = 0
            n.state, n.count = "PRIME", 0

    def _prime(self, s: _Run, r: _Registers, n: _Registers, io: _Transfers) -> None:
        """``prime_cycles`` cycles, then LOAD (or FETCH when the pass loads no kernels)."""
        n.count = r.count + 1
        if r.count == self.cfg.prime_cycles - 1:
            n.state = "LOAD" if s.cmd["load"] else "FETCH"

    def _load(self, s: _Run, r: _Registers, n: _Registers, io: _Transfers) -> None:
        """Writes one kernel beat per transfer; FETCH after the pass's last one."""
        if io.weights:
            c = s.cmd
            s.kmem[r.wcount] = s.src["weights"].payload()
            n.wcount = r.wcount + 1
            if r.wcount == (c["slices"] << c["slice_log2"]) * s.kk - 1:
                n.state = "FETCH"

    def _fetch(self, s: _Run, r: _Registers, n: _Registers, io: _Transfers) -> None:
        """Takes an input word (``_take_word``); at the end of the input DRAIN, or IDLE when
        the pass does not emit."""
        if r.input_end:
            n.state = "DRAIN" if s.cmd["emit"] else "IDLE"
            n.count = 0
        elif io.act_in:
            n.state = self._take_word(s, r, n, int(s.src["act_in"].payload()["data"]))
            n.count = 0

    def _decode(self, s: _Run, r: _Registers, n: _Registers, io: _Transfers) -> None:
        """``decode_cycles`` cycles after an SM word, then FETCH."""
        n.count = r.count + 1
        if r.count == self.cfg.decode_cycles - 1:
            n.state = "FETCH"

    def _collect(self, s: _Run, r: _Registers, n: _Registers, io: _Transfers) -> None:
        """Adds one value per transfer to the group; MAC (FETCH for a dead group) when the
        group is full or the next non-zero belongs to another pixel."""
        if io.act_in:
            ch, _, more = self._decode_value(s, r)
            g = r.gcount
            value = self._slot_value(r, int(s.src["act_in"].payload()["data"]))
            n.vslot = (r.vslot + 1) % self._vpw
            n.mask = r.mask & (r.mask - 1)
            n.gcount = g + 1
            n.vals = r.vals[:g] + (value,) + r.vals[g + 1:]
            n.wbases = r.wbases[:g] + (ch * s.kk,) + r.wbases[g + 1:]
            if not more or g == self.cfg.macs_per_channel - 1:
                n.state = "MAC" if r.reach else "FETCH"

    def _mac(self, s: _Run, r: _Registers, n: _Registers, io: _Transfers) -> None:
        """Adds the group's products at one kernel offset into its output pixel and steps
        the walk; the box's last offset already takes the next word."""
        c = s.cmd
        sl = c["stride_log2"]
        oy = (r.iy + c["pad_top"] - r.ky) >> sl
        ox = (r.x + c["pad_left"] - r.kx) >> sl
        off = r.ky * c["k"] + r.kx
        kmem = s.kmem
        s.pmem[oy * c["out_w"] + ox] += sum(v * kmem[wb + off] for v, wb in
                                            zip(r.vals, r.wbases))
        stride = 1 << sl
        if r.kx == r.kx_last:
            n.kx, n.ky = r.kx_first, r.ky + stride
        else:
            n.kx = r.kx + stride
        if r.mac_last:
            if io.act_in:
                n.state = self._take_word(s, r, n, int(s.src["act_in"].payload()["data"]))
                n.count = 0
            else:
                n.state = "FETCH"

    def _drain(self, s: _Run, r: _Registers, n: _Registers, io: _Transfers) -> None:
        """``drain_cycles`` cycles, then OUT with the output stage's chunks ready to walk."""
        n.count = r.count + 1
        if r.count == self.cfg.drain_cycles - 1:
            s.out_stage = self._output_jobs(s.cmd, s.pmem)
            s.out_stage["go"] = s.t + 1
            n.state = "OUT"

    def _out(self, s: _Run, r: _Registers, n: _Registers, io: _Transfers) -> None:
        """The output stage's clock edge; IDLE once the pass's last word has left."""
        if self._out_edge(s.out_stage, s.t, io.act_out):
            n.state = "IDLE"

    # --- the input decoder ------------------------------------------------------------------
    def _take_word(self, s: _Run, r: _Registers, n: _Registers, word: int) -> str:
        """Takes an input word into ``n``: an SM word (no non-zero left in the current one)
        steps the word/row/slice counters; a value word starts a group and its box of kernel
        offsets. Returns the next state."""
        c = s.cmd
        M = self.cfg.macs_per_channel
        if r.mask == 0:
            n.mask = word & ((1 << self.cfg.sm_bits) - 1)
            n.cur_w, n.cur_iy, n.cur_slice = r.nxt_w, r.nxt_iy, r.nxt_slice
            if r.nxt_w == s.row_words - 1:
                n.nxt_w = 0
                if r.nxt_iy == c["in_h"] - 1:
                    n.nxt_iy = 0
                    if r.nxt_slice == c["slices"] - 1:
                        n.sm_done = 1
                    else:
                        n.nxt_slice = r.nxt_slice + 1
                else:
                    n.nxt_iy = r.nxt_iy + 1
            else:
                n.nxt_w = r.nxt_w + 1
            n.vslot = 0
            return "DECODE"
        ch, p, more = self._decode_value(s, r)
        x = p >> c["slice_log2"]
        n.mask = r.mask & (r.mask - 1)
        n.x, n.iy = x, r.cur_iy
        n.vals = (self._slot_value(r, word),) + (0,) * (M - 1)
        n.vslot = (r.vslot + 1) % self._vpw
        n.wbases = (ch * s.kk,) + (0,) * (M - 1)
        n.gcount = 1
        stride = 1 << c["stride_log2"]
        fy, ly = kernel_range(r.cur_iy, c["pad_top"], c["out_h"], c["k"], stride)
        fx, lx = kernel_range(x, c["pad_left"], c["out_w"], c["k"], stride)
        reach = fy <= ly and fx <= lx  # a group that reaches no output takes no MAC
        n.ky, n.kx, n.kx_first, n.ky_last, n.kx_last, n.reach = fy, fx, fx, ly, lx, reach
        return "COLLECT" if more else ("MAC" if reach else "FETCH")

    def _slot_value(self, r: _Registers, word: int) -> int:
        """The current value: slot ``vslot`` of the value word."""
        a = self.cfg.fxp.act_bits
        return word >> (r.vslot * a) & self.cfg.fxp.act_max

    def _decode_value(self, s: _Run, r: _Registers) -> tuple[int, int, bool]:
        """The current SM word's lowest non-zero left: (input channel, position in the row,
        whether the next non-zero joins its group: same block of ``min(Cp, S)`` positions)."""
        S = self.cfg.sm_bits
        sl = s.cmd["slice_log2"]
        m = r.mask
        idx = (m & -m).bit_length() - 1
        p = (r.cur_w * S) + idx
        ch = (r.cur_slice << sl) | (p & (s.cp - 1))
        m2 = m & (m - 1)
        idx2 = (m2 & -m2).bit_length() - 1
        blk = min(sl, S.bit_length() - 1)
        return ch, p, self.cfg.macs_per_channel > 1 and m2 != 0 and idx >> blk == idx2 >> blk

    # --- the output stage -------------------------------------------------------------------
    def _output_jobs(self, c, pmem) -> dict:
        """The pass's chunks in order, each ``(values [S], first, final, reads or None)``;
        the partial sums are requantised, pooled and cleared (they are all final here)."""
        cfg, fxp = self.cfg, self.cfg.fxp
        S, G, parts = cfg.sm_bits, cfg.group, cfg.parts
        slots = S // G
        pool = c["pool"]
        ho, wo = c["out_h"] >> pool, c["out_w"] >> pool
        q = {f: np.asarray(c["requant"][f], np.int64) for f in ("bias", "mult", "shift")}
        jobs = []
        for py in range(ho):
            for px0 in range(0, wo, slots if parts == 1 else 1):
                pixels = range(px0, min(wo, px0 + slots)) if parts == 1 else [px0]
                vals = []
                for px in pixels:
                    addrs = [((py << pool) + dy) * c["out_w"] + (px << pool) + dx
                             for dy in range(1 + pool) for dx in range(1 + pool)]
                    y = requantize(pmem[addrs] + q["bias"], q["mult"], q["shift"], fxp,
                                   bool(c["relu"])) & fxp.act_max
                    pmem[addrs] = 0
                    vals.append(y.max(axis=0))
                pix = np.concatenate(vals)
                final_px = py == ho - 1 and pixels[-1] == wo - 1
                for p in range(parts):
                    chunk = np.zeros(S, np.int64)
                    part = pix[p * S:(p + 1) * S] if parts > 1 else pix
                    chunk[:len(part)] = part
                    jobs.append({"vals": chunk, "first": px0 == 0 and p == 0,
                                 "final": final_px and p == parts - 1,
                                 "fill": int(cfg.chunk_fills(len(pixels), pool, p)) - 1})
        return {"jobs": jobs, "next": 0, "go": None, "b_at": None, "b": None, "a": None}

    @staticmethod
    def _offer(o):
        """The word the send buffer offers this cycle, or None."""
        a = o["a"]
        if a is None:
            return None
        if a["sm"]:
            return (a["mask"], int(a["first"]), int(a["final"] and a["mask"] == 0))
        idxs, rest = _lowest_bits(a["rem"], a["vpw"])
        word = sum(int(a["vals"][i]) << (j * a["act_bits"]) for j, i in enumerate(idxs))
        return (word, 0, int(a["final"] and rest == 0))

    def _out_edge(self, o, t, taken) -> bool:
        """One clock edge of the output stage; True once the pass's last word has left."""
        a = o["a"]
        done = False
        if taken:
            if a["sm"]:
                a["sm"] = False
                done = a["mask"] == 0
            else:
                a["rem"] = _lowest_bits(a["rem"], a["vpw"])[1]
                done = a["rem"] == 0
        if done:
            o["a"] = None
        if o["go"] == t:  # the walker starts the next chunk: complete after its fill time
            o["b"] = o["jobs"][o["next"]]
            o["next"] += 1
            o["b_at"] = t + o["b"]["fill"]
        finished = done and a["final"]
        if o["b"] is not None and t >= o["b_at"] and o["a"] is None:  # swap
            b = o["b"]
            mask = sum(1 << i for i in range(len(b["vals"])) if b["vals"][i] != 0)
            o["a"] = {"vals": b["vals"], "mask": mask, "rem": mask, "first": b["first"],
                      "vpw": self._vpw, "act_bits": self.cfg.fxp.act_bits,
                      "final": b["final"], "sm": True}
            o["b"] = None
            if not b["final"]:
                o["go"] = t + 1
        return finished


def _lowest_bits(mask: int, n: int) -> tuple[list[int], int]:
    """The indices of the ``n`` lowest set bits of ``mask`` and the mask without them."""
    idxs = []
    while mask and len(idxs) < n:
        idxs.append((mask & -mask).bit_length() - 1)
        mask &= mask - 1
    return idxs, mask


def layer_beats(data, spec: ConvLayer, cfg: NullHopConfig):
    """All passes of a layer: (commands, kernel beats, input word payloads, expected output
    ``Stream`` in emit order, plan, passes)."""
    plan, passes = plan_layer(spec, cfg)
    y = layer_outputs(data, spec, cfg.fxp)
    cmds, weights, words, outs = [], [], [], []
    for p in passes:
        cmd, w, s = pass_beats(data, spec, plan, p, cfg)
        cmds.append(cmd)
        weights += w
        words += s.beats()
        if p.emit:
            o = output_stream(y, p, spec, cfg)
            o.last[:] = False
            o.last[-1] = True
            outs.append(o)
    return cmds, weights, words, Stream.concat(outs), plan, passes
