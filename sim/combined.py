"""Cycle-level simulator of the column-combined array (``hw.combined.CombinedBlock``).

The block is the dense array with ``alpha`` activation lanes per packed row and a select per
cell, so this module reuses ``sim.systolic``: the step-per-cycle ``StepModel`` (same FSM and
pipeline; only the tiling, the beats and the cell arithmetic are replaced) and the dense
schedule ``SystolicConfig.layer_cycles`` (overlapped passes, two weight banks).

Tiling over the packed matrix (``plan_packed``): for each chunk of ``acc_depth`` output
pixels, for each grouping block (one for a global grouping), for each tile of ``cols``
output channels of the block, for each tile of ``rows`` *packed* rows (groups): one pass.
With ``alpha = 1`` the packing is the identity and this is ``sim.systolic.plan_layer``.

Where the packed weights come from (``simulate_network``):
- the trained digits CNN: ``alpha = 1`` runs the workload's dense int8 weights (the dense
  array exactly); ``alpha > 1`` runs the weights of the joint prune-combine-retrain
  optimisation (``models.column_combining.joint_optimize``, cached) with its groupings;
- shape-only networks (VGG-16, ...): a random int8 matrix per layer, pruned iid to
  ``target_sparsity(alpha)`` (stated in the report's notes), grouped in windows of
  ``SHAPE_ONLY_WINDOW`` columns to bound the cost of the greedy on the largest layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zeroskip.hw.config import CombinedConfig, ceil_div
from zeroskip.hw.fixedpoint import max_pool, requantize
from zeroskip.models import column_combining as cc
from zeroskip.models.reference import im2col_np
from zeroskip.models.workloads import ConvLayer

from . import systolic
from .report import LayerReport, NetworkReport
from .systolic import Pass, StepModel

SHAPE_ONLY_WINDOW = 256
SHAPE_ONLY_SEED = 1811


@dataclass(frozen=True)
class CombinedPass(Pass):
    block: int = 0  # grouping block of the packing
    width: int = 0  # output channels of the column tile (<= cols)


def plan_packed(m: int, packing: cc.Packing, cfg: CombinedConfig) -> list[CombinedPass]:
    """Driver tiling over the packed matrix (see the module doc)."""
    passes = []
    for m0 in range(0, m, cfg.acc_depth):
        count = min(cfg.acc_depth, m - m0)
        for b, blk in enumerate(packing.blocks):
            k_tiles = ceil_div(max(1, blk.rows), cfg.rows)
            for n0 in range(blk.n0, blk.n1, cfg.cols):
                width = min(cfg.cols, blk.n1 - n0)
                for kt in range(k_tiles):
                    passes.append(CombinedPass(m0, count, n0, kt * cfg.rows, kt > 0,
                                               kt == k_tiles - 1, b, width))
    return passes


def identity_packing(w: np.ndarray) -> cc.Packing:
    """``alpha = 1``: every column its own packed row, nothing pruned (the dense array)."""
    return cc.pack(np.asarray(w), 1, 0.0)


@dataclass
class PackedGemm:
    """A packed layer as the block sees it: ``requantize(a @ packing.dense() + bias)``."""

    a: np.ndarray  # [M, K] unsigned activations (original, unpacked columns)
    packing: cc.Packing
    bias: np.ndarray
    mult: np.ndarray
    shift: np.ndarray
    relu: bool = True

    def __post_init__(self):
        self.a = np.asarray(self.a, np.int64)
        for f in ("bias", "mult", "shift"):
            setattr(self, f, np.asarray(getattr(self, f), np.int64))
        if self.a.shape[1] != self.packing.k:
            raise ValueError(f"activations have K={self.a.shape[1]} but the packing has "
                             f"K={self.packing.k}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.a.shape[0], self.packing.k, self.packing.n

    def reference(self, fxp) -> np.ndarray:
        """Integer reference on the pruned, conflict-free weights (plain GEMM)."""
        return requantize(self.a @ self.packing.dense().astype(np.int64) + self.bias,
                          self.mult, self.shift, fxp, self.relu)


def pass_beats(g: PackedGemm, p: CombinedPass, cfg: CombinedConfig):
    """(command, weight rows bottom-first as ``{weight, sel}`` cells, activation vectors of
    ``rows x alpha`` lanes) of one pass, zero-padded."""
    r, c, alpha = cfg.rows, cfg.cols, cfg.alpha
    if g.packing.alpha > alpha:
        raise ValueError(f"the packing has groups of up to {g.packing.alpha} columns but the "
                         f"array has alpha={alpha} lanes; pack with alpha <= {alpha}")
    blk = g.packing.blocks[p.block]
    gg = min(r, blk.rows - p.k0)
    j0, nn = p.n0 - blk.n0, p.width
    wt = np.zeros((r, c), np.int64)
    sel = np.zeros((r, c), np.int64)
    wt[:gg, :nn] = blk.weight[p.k0:p.k0 + gg, j0:j0 + nn]
    sel[:gg, :nn] = blk.select[p.k0:p.k0 + gg, j0:j0 + nn]
    rows = [[{"weight": int(wt[i, j]), "sel": int(sel[i, j])} for j in range(c)]
            for i in range(r)][::-1]
    lanes = -np.ones((r, alpha), np.int64)
    lanes[:gg, :g.packing.alpha] = g.packing.lanes(p.block)[p.k0:p.k0 + gg]
    a = g.a[p.m0:p.m0 + p.count]
    acts = np.where(lanes >= 0, a[:, np.maximum(lanes, 0)], 0)  # [count, r, alpha]
    q = {f: np.zeros(c, np.int64) for f in ("bias", "mult", "shift")}
    for f in q:
        q[f][:nn] = getattr(g, f)[p.n0:p.n0 + nn]
    cmd = {"count": p.count, "accumulate": int(p.accumulate), "emit": int(p.emit),
           "relu": int(g.relu), "requant": {f: q[f].tolist() for f in q}}
    return cmd, rows, acts.tolist()


def layer_cycles(m: int, packing: cc.Packing, cfg: CombinedConfig) -> int:
    """First command to last output, inclusive, inputs always valid and ``out`` always
    ready: the dense array's schedule (``SystolicConfig.layer_cycles``) over the packed
    tiling's passes."""
    per_chunk = sum(ceil_div(max(1, b.rows), cfg.rows) * ceil_div(b.n1 - b.n0, cfg.cols)
                    for b in packing.blocks)
    return cfg.layer_cycles(systolic.pass_runs(m, per_chunk, cfg.acc_depth))


class CombinedStepModel(StepModel):
    """``sim.systolic.StepModel`` with the packed tiling and combined cells: the bank
    control, valid pipeline, partial-sum memory and output stage are the dense block's."""

    def plan(self, g: PackedGemm) -> list:
        return plan_packed(g.shape[0], g.packing, self.cfg)

    def pass_beats(self, g, p):
        return pass_beats(g, p, self.cfg)

    def pass_width(self, g, p) -> int:
        return p.width

    def empty_weights(self) -> np.ndarray:
        return np.zeros((self.cfg.rows, self.cfg.cols, 2), np.int64)

    def weight_row(self, payload) -> np.ndarray:
        return np.asarray([[cell["weight"], cell["sel"]] for cell in payload], np.int64)

    def column_sums(self, payload, weights) -> np.ndarray:
        lanes = np.asarray(payload, np.int64)  # [rows, alpha]
        picked = np.take_along_axis(lanes, weights[..., 1], axis=1)  # [rows, cols]
        return (picked * weights[..., 0]).sum(axis=0)


# --- vectorised counts ---------------------------------------------------------------------------
def simulate_layer(spec: ConvLayer, packing: cc.Packing, cfg: CombinedConfig, table=None,
                   batch: int = 1, dense=None) -> LayerReport:
    """Closed-form count for one packed layer and ``batch`` images (cycles do not depend on
    activation values). ``dense``: the dense array's report of the same layer, for the
    speedup and energy ratio (computed if not given)."""
    images, runs = systolic.batch_fold(spec, batch)  # fully connected: images as pixels
    m, k, n = spec.gemm
    m *= images
    if (packing.k, packing.n) != (k, n):
        raise ValueError(f"layer {spec.name!r}: packing is {packing.k}x{packing.n}, the layer "
                         f"needs {k}x{n}")
    cfg.fxp.check_reduction(spec.name, k)
    r, c = cfg.rows, cfg.cols
    chunks = ceil_div(m, cfg.acc_depth)
    cycles = layer_cycles(m, packing, cfg)
    tiles = packing.tiles(r, c)
    passes = chunks * tiles
    cell_bytes = 1 + cfg.sel_bits / 8  # weight + select storage per cell
    psum_bytes = cfg.fxp.acc_bits // 8
    # activation lanes actually read per pixel: every column of every group, once per
    # column tile (unused lanes are driven with 0, not read)
    lanes_read = 0
    psum_rw = 0
    for b in packing.blocks:
        n_tiles = ceil_div(b.n1 - b.n0, c)
        lanes_read += n_tiles * sum(len(g) for g in b.groups)
        psum_rw += 2 * (ceil_div(max(1, b.rows), r) - 1) * (b.n1 - b.n0)
    events = {
        "mac": m * packing.cells,
        "mux_select": m * packing.cells if cfg.alpha > 1 else 0,
        "requant": m * n,
        # per pass and cell: weight + select into its bank, then the weight into the cell's
        # selected-weight register (the select is used, not copied)
        "reg_write_byte": passes * r * c * (cell_bytes + 1),
        "sram_read_byte": passes * r * c * cell_bytes + m * lanes_read,
        "sram_write_byte": m * n,
        "small_sram_byte": m * psum_rw * psum_bytes,
        "dram_byte": (spec.input_size + spec.output_size) * images + packing.cells * cell_bytes
        + 4 * n,
    }
    events = {a: v * runs for a, v in events.items()}
    dense = dense or systolic.simulate_layer(spec, cfg.dense(), table, batch)
    rep = LayerReport(spec.name, cycles * runs, spec.macs * batch, m * packing.cells * runs,
                      r * c, events).priced(table)
    s = packing.summary()
    rep.extra = {
        "alpha": cfg.alpha, "gamma": packing.gamma, "group_block": packing.block,
        "columns": k, "nonempty_columns": s["nonempty_columns"],
        "packed_columns": s["packed_columns"], "column_reduction": s["column_reduction"],
        "groups_per_block": s["groups_per_block"],
        "tiles": tiles, "dense_tiles": ceil_div(k, r) * ceil_div(n, c),
        "tile_reduction": ceil_div(k, r) * ceil_div(n, c) / tiles,
        "passes": passes * runs, "chunks": chunks, "batched_images": images,
        "nonzero_weights": s["nnz"], "cells": s["cells"],
        "cell_utilization": s["packing_efficiency"],  # non-zero weights / occupied cells
        # the same non-zero weights on the dense array (every K x N cell occupied)
        "dense_cells": k * n, "dense_cell_utilization": s["nnz"] / (k * n),
        "utilization_gain": s["packing_efficiency"] / max(1e-12, s["nnz"] / (k * n)),
        "macs_nonzero": m * s["nnz"] * runs,
        "dense_cycles": dense.cycles, "dense_energy_pj": dense.energy_pj,
        "speedup_vs_dense": dense.cycles / rep.cycles,
        "energy_saving_vs_dense": dense.energy_pj / rep.energy_pj if rep.energy_pj else 0.0,
    }
    return rep


def shape_only_packing(spec: ConvLayer, index: int, cfg: CombinedConfig,
                       seed: int = SHAPE_ONLY_SEED) -> cc.Packing:
    """A random int8 ``[K, N]`` matrix pruned iid to ``target_sparsity(alpha)``, packed."""
    m, k, n = spec.gemm
    rng = np.random.default_rng([seed, index])
    w = rng.integers(1, cfg.fxp.weight_max + 1, (k, n), dtype=np.int16)
    _draw_where(rng, w, 0.5, lambda part, mask: np.multiply(part, 1 - 2 * mask.view(np.int8),
                                                            out=part))  # negate where drawn
    if cfg.alpha == 1:
        return identity_packing(w)
    _draw_where(rng, w, cc.target_sparsity(cfg.alpha),
                lambda part, mask: np.multiply(part, ~mask, out=part))  # zero where drawn
    return cc.pack(w, cfg.alpha, cfg.gamma, cfg.group_block, window=SHAPE_ONLY_WINDOW)


def _draw_where(rng, w: np.ndarray, p: float, apply, chunk: int = 1 << 20) -> None:
    """``apply(part, rng.random(part.shape, float32) < p)`` over ``w`` in place, chunk by
    chunk: the same numbers as one ``rng.random(w.shape, dtype=np.float32)`` call (float32
    draws do not depend on how the request is split), without a matrix-sized float buffer
    (VGG-16's fc6 is 25088 x 4096)."""
    flat = w.reshape(-1)
    buf = np.empty(min(chunk, flat.size), np.float32)
    mask = np.empty(buf.size, bool)
    for s0 in range(0, flat.size, chunk):
        part = flat[s0:s0 + chunk]
        b, m = buf[:part.size], mask[:part.size]
        rng.random(out=b, dtype=np.float32)
        apply(part, np.less(b, p, out=m))


def imported_packing(w: np.ndarray, cfg: CombinedConfig) -> cc.Packing:
    """An imported model's int8 ``[K, N]`` weights magnitude-pruned to
    ``target_sparsity(alpha)`` (no retraining) and packed, in windows as a shape-only layer."""
    if cfg.alpha == 1:
        return identity_packing(w)
    return cc.pack(cc.magnitude_prune(w, cc.target_sparsity(cfg.alpha)), cfg.alpha, cfg.gamma,
                   cfg.group_block, window=SHAPE_ONLY_WINDOW)


def network_packings(workload, cfg: CombinedConfig, progress=None):
    """(packings per layer, notes, extra figures) for a ``sim.workload.Workload``."""
    if any(s.groups > 1 for s in workload.layers):  # a packing per group: sim/workload.py
        from .workload import split_groups

        return network_packings(split_groups(workload)[0], cfg, progress)
    if workload.real and cfg.alpha == 1:
        packings = [identity_packing(workload.layer_data(i).w.reshape(s.out_ch, -1).T)
                    for i, s in enumerate(workload.layers)]
        return packings, ["alpha = 1: the dense int8 weights, no pruning (the dense array)"], {}
    if workload.real and not workload.trained_digits:  # an imported model's own weights
        s = cc.target_sparsity(cfg.alpha)
        packings = [imported_packing(workload.layer_data(i).w.reshape(sp.out_ch, -1).T, cfg)
                    for i, sp in enumerate(workload.layers)]
        return packings, [
            f"the imported int8 weights magnitude-pruned to {s:.1%} sparsity "
            f"(target_sparsity(alpha={cfg.alpha})) without retraining (accuracy not "
            f"re-measured), gamma={cfg.gamma}, grouped in windows of {SHAPE_ONLY_WINDOW} "
            "columns"], {}
    if workload.real:
        res = cc.joint_optimize(cfg.alpha, cfg.gamma, cfg.group_block)
        layers = cc.joint_quant_layers(res, fxp=cfg.fxp)
        notes = [f"packed weights from the joint prune-combine-retrain optimisation "
                 f"(alpha={cfg.alpha}, gamma={cfg.gamma}, sparsity target "
                 f"{res.sparsity:.1%}): int8 test accuracy {res.accuracy_before:.2%} dense -> "
                 f"{res.accuracy_after:.2%} packed"]
        return cc.joint_packings(res, layers), notes, {
            "accuracy_before": res.accuracy_before, "accuracy_after": res.accuracy_after}
    packings = []
    for i, spec in enumerate(workload.layers):
        packings.append(shape_only_packing(spec, i, cfg))
        if progress:
            progress(f"packing {spec.name}")
    if cfg.alpha == 1:
        return packings, ["alpha = 1: dense random int8 weights, no pruning"], {}
    return packings, [
        f"shape-only network: each layer packs a random int8 matrix pruned iid to "
        f"{cc.target_sparsity(cfg.alpha):.1%} sparsity (target_sparsity(alpha={cfg.alpha})), "
        f"gamma={cfg.gamma}, grouped in windows of {SHAPE_ONLY_WINDOW} columns"], {}


def simulate_network(workload, cfg: CombinedConfig, table=None, progress=None,
                     packings=None) -> NetworkReport:
    """Every layer of a ``sim.workload.Workload`` on the column-combined array."""
    if any(s.groups > 1 for s in workload.layers):  # one group at a time: sim/workload.py
        from .workload import simulate_per_group

        return simulate_per_group(simulate_network, workload, cfg, table, progress,
                                  packings=packings)
    notes, extra = [], {}
    if packings is None:
        packings, notes, extra = network_packings(workload, cfg)
    reports = []
    for spec, packing in zip(workload.layers, packings):
        reports.append(simulate_layer(spec, packing, cfg, table, workload.batch))
        if progress:
            progress(spec.name)
    net = network_figures(reports)
    summary = {k: net[k] for k in ("column_reduction", "tile_reduction", "speedup_vs_dense",
                                   "energy_saving_vs_dense")} | extra
    notes = notes + [f"{workload.description}, {workload.batch} image(s)",
                     "network: " + ", ".join(f"{a} {v:.3g}" for a, v in summary.items()),
                     *systolic.batch_note(reports, workload.batch)]
    # the packed, retrained weights change the network: its int8 test accuracy after
    rep = NetworkReport("combined", cfg.to_dict(), reports, notes,
                        accuracy=extra.get("accuracy_after"))
    rep.summary = summary
    return rep


def network_figures(reports) -> dict:
    """A network's totals over its layers' reports (``simulate_layer``): columns, tiles,
    non-zero weights, occupied cells, cycles and energy, packed and on the dense array, and
    their ratios."""
    def total(key):
        return sum(r.extra[key] for r in reports)

    k, g = total("columns"), total("packed_columns")
    tiles, dense_tiles = total("tiles"), total("dense_tiles")
    nnz, cells, dense_cells = total("nonzero_weights"), total("cells"), total("dense_cells")
    cycles, dense_cycles = sum(r.cycles for r in reports), total("dense_cycles")
    energy, dense_energy = sum(r.energy_pj for r in reports), total("dense_energy_pj")
    return {"columns": k, "packed_columns": g, "column_reduction": k / g,
            "tiles": tiles, "dense_tiles": dense_tiles, "tile_reduction": dense_tiles / tiles,
            "nonzero_weights": nnz, "cells": cells, "packing_efficiency": nnz / cells,
            "dense_cell_utilization": nnz / dense_cells,
            "utilization_gain": (nnz / cells) / (nnz / dense_cells),
            "cycles": cycles, "dense_cycles": dense_cycles, "speedup_vs_dense": dense_cycles / cycles,
            "energy_pj": energy, "dense_energy_pj": dense_energy,
            "energy_saving_vs_dense": dense_energy / energy}


def layer_outputs(data, spec: ConvLayer, fxp, packing: cc.Packing | None = None) -> np.ndarray:
    """The layer's output as the integer reference computes it: the array's outputs
    (``array_outputs``), max-pooled by the host where the layer pools."""
    return max_pool(array_outputs(data, spec, fxp, packing), spec.pool)


def array_outputs(data, spec: ConvLayer, fxp, packing: cc.Packing | None = None) -> np.ndarray:
    """The block's outputs for one layer's ``sim.workload.LayerData`` ([N, H, W] before any
    pooling), computed as the array does: each cell multiplies the lane its select picks.
    Without a ``packing`` the weights are used as they are (alpha = 1)."""
    a = im2col_np(data.x, spec)
    if packing is None:
        packing = identity_packing(data.w.reshape(spec.out_ch, -1).T)
    acc = packing.apply(a).astype(np.int64)
    y = requantize(acc + data.bias, data.mult, data.shift, fxp, spec.relu)
    return y.T.reshape(spec.out_ch, spec.out_h, spec.out_w)


def packing_arrays(p: cc.Packing) -> dict:
    """A packing as plain arrays (for test cases and files): the pruned, conflict-free
    ``[K, N]`` weights and every group's columns (``-1`` padded) with its block."""
    groups = [(b, g) for b, blk in enumerate(p.blocks) for g in blk.groups]
    cols = -np.ones((len(groups), p.alpha), np.int64)
    for i, (_, g) in enumerate(groups):
        cols[i, :len(g)] = g
    return {"pk_weight": p.dense().astype(np.int64), "pk_groups": cols,
            "pk_group_block": np.asarray([b for b, _ in groups], np.int64),
            "pk_params": np.asarray([p.alpha, p.block], np.int64),
            "pk_gamma": np.float64(p.gamma)}


def packing_from_arrays(d: dict) -> cc.Packing:
    alpha, block = (int(v) for v in d["pk_params"])
    nblocks = int(d["pk_group_block"].max()) + 1 if len(d["pk_group_block"]) else 1
    groups = [[] for _ in range(nblocks)]
    for b, row in zip(d["pk_group_block"], d["pk_groups"]):
        groups[int(b)].append(tuple(int(c) for c in row if c >= 0))
    return cc.pack_with_groups(d["pk_weight"], groups, alpha, float(d["pk_gamma"]), block)


# the names of the simulator API that every block's module has (``zeroskip.blocks``)
plan_layer = plan_packed
StepModel = CombinedStepModel
