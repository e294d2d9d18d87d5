"""Column combining (Kung, McDanel & Zhang, ASPLOS 2019, arXiv 1811.04770).

Orientation. The paper's *filter matrix* has one row per output filter and one column per
input. Our arrays run the GEMM ``out[M, N] = act[M, K] @ W[K, N]`` with the reduction K on
the array ROWS and the output channels N on the array COLUMNS (``hw.systolic``), so a
paper *column* is one of our K indices and a paper *row* one of our N output channels. All
functions here take ``W`` as the ``[K, N]`` GEMM matrix; "column" always means a K index
(the paper's word), "row" an output channel.

Column definition. A column is one **input channel x kernel position** (K = C * k * k, the
order of ``models.reference.im2col``), not a whole input channel: the array multiplies one
im2col term per cell, so each K index is one activation lane and each packed cell can pick
any of them. Grouping whole channels would force the k*k taps of a channel into the same
group and lose most of the packing freedom for 3x3 convs (the paper's nets are mostly 1x1
pointwise convs, where the two definitions coincide).

Grouping (``group_columns``), deterministic:
  1. every non-empty column starts alone, groups in column order;
  2. the *seed* is the open group with the most non-zeros (ties: lowest first column);
  3. the seed absorbs, one at a time, the open group that keeps it feasible
     (at most ``alpha`` columns; conflicts ``sum_rows max(0, nnz_in_row - 1) <= floor(gamma *
     rows)``) and leaves the fewest empty rows, i.e. the densest packed column (ties: lowest
     first column); when no open group is feasible the seed is closed and step 2 repeats.
  The packed groups are then ordered by their first column.
Conflict pruning (``conflict_prune``): in every (row, group) only the largest-|w| weight
survives (ties: lowest column), so each packed cell holds one weight and the index
(``ceil(log2 alpha)`` bits) of the column inside its group it came from: its select.

``alpha == 1`` is the dense array: every column, empty or not, is its own group.

Block column combining (the paper's row split): with ``block`` output channels per block
(e.g. the array width ``cols``), each block of rows is grouped on its own, so each column
tile of the array gets its own grouping; ``block=0`` is one global grouping.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
from dataclasses import dataclass, field

import numpy as np

# the joint-optimisation schedule (changing it changes the cache key)
PRUNE_STEPS = 6
EPOCHS_PER_STEP = 4
FINAL_EPOCHS = 30
RETRAIN_LR = 1e-3
DENSITY_FACTOR = 2.0  # target density = DENSITY_FACTOR / alpha (see target_sparsity)
RECIPE = (f"cc-v1-steps{PRUNE_STEPS}-ep{EPOCHS_PER_STEP}-final{FINAL_EPOCHS}-lr{RETRAIN_LR}"
          f"-df{DENSITY_FACTOR}")


def target_sparsity(alpha: int) -> float:
    """Final pruning target tied to alpha: keep ``DENSITY_FACTOR / alpha`` of the weights, so
    a full group of ``alpha`` columns has about ``DENSITY_FACTOR`` non-zeros per row before
    conflict pruning (alpha = 1: no pruning)."""
    if alpha <= 1:
        return 0.0
    return max(0.0, 1.0 - DENSITY_FACTOR / alpha)


def check_params(alpha, gamma, block=0) -> None:
    if not isinstance(alpha, (int, np.integer)) or isinstance(alpha, bool) or not 1 <= alpha <= 64:
        raise ValueError(f"alpha must be an integer in 1..64 (columns per group), not {alpha!r}")
    if not isinstance(gamma, (int, float)) or not 0.0 <= float(gamma) <= 1.0:
        raise ValueError(f"gamma must be a number in 0..1 (allowed conflicts per row), "
                         f"not {gamma!r}")
    if not isinstance(block, (int, np.integer)) or block < 0:
        raise ValueError(f"block must be an integer >= 0 (0 = one global grouping), "
                         f"not {block!r}")


# --- grouping --------------------------------------------------------------------------------
def group_columns(nonzero: np.ndarray, alpha: int, gamma: float,
                  window: int | None = None) -> list[tuple[int, ...]]:
    """Group the columns (K indices) of a ``[K, N]`` non-zero pattern; see the module doc.

    ``window``: group each run of ``window`` consecutive columns on its own (groups never
    span two windows). Only used to bound the quadratic cost on the very large random
    layers of the shape-only networks; ``None`` (the default) groups all columns together.
    """
    check_params(alpha, gamma)
    nz = np.asarray(nonzero, bool)
    if nz.ndim != 2:
        raise ValueError(f"group_columns expects a [K, N] pattern, not shape {nz.shape}")
    return _group_blocks(nz, [(0, nz.shape[1])], alpha, gamma, window)[0]


def _group_blocks(nz: np.ndarray, bounds, alpha: int, gamma: float,
                  window: int | None) -> list[list[tuple[int, ...]]]:
    """``group_columns(nz[:, n0:n1], alpha, gamma, window)`` for every ``(n0, n1)`` of
    ``bounds``, all blocks and windows in one batched run of the greedy."""
    k = nz.shape[0]
    if alpha == 1:
        return [[(i,) for i in range(k)] for _ in bounds]
    step = window if window and window < k else max(k, 1)
    wins = -(-k // step)
    width = max(n1 - n0 for n0, n1 in bounds)
    words = max(1, -(-width // 64))
    # one batch entry per (block, window): its non-empty columns, left-aligned, as bitsets
    occ_rows, hits_rows, ent_rows, pos_rows, cols_rows = [], [], [], [], []
    for b, (n0, n1) in enumerate(bounds):
        sub = nz[:, n0:n1]
        hits = np.count_nonzero(sub, axis=1)
        cols = np.flatnonzero(hits)
        win = cols // step
        first = np.searchsorted(win, np.arange(wins))  # first non-empty column of a window
        bits = np.zeros((cols.size, words * 8), np.uint8)
        bits[:, :-(-(n1 - n0) // 8)] = np.packbits(sub, axis=1, bitorder="little")[cols]
        occ_rows.append(bits.view(np.uint64))
        hits_rows.append(hits[cols])
        ent_rows.append(b * wins + win)
        pos_rows.append(np.arange(cols.size) - first[win])
        cols_rows.append(cols)
    ent, pos = np.concatenate(ent_rows), np.concatenate(pos_rows)
    cols = np.concatenate(cols_rows)
    g = int(pos.max()) + 1 if pos.size else 1
    occ = np.zeros((len(bounds) * wins, g, words), np.uint64)
    occ[ent, pos] = np.concatenate(occ_rows)
    hits = np.zeros((len(bounds) * wins, g), np.int64)
    hits[ent, pos] = np.concatenate(hits_rows)
    limit = np.repeat([int(np.floor(gamma * (n1 - n0))) for n0, n1 in bounds], wins)
    # a few entries at a time: each step reads all their bitsets, which should stay in cache
    per = max(1, (1 << 17) // (g * words))
    owner = np.concatenate([_greedy(occ[e:e + per], hits[e:e + per], alpha, limit[e:e + per])
                            for e in range(0, len(occ), per)] or [np.zeros((0, g), np.int64)])
    # groups: (entry, owner) pairs, members in column order, groups ordered by first column
    key = ent * g + owner[ent, pos]
    order = np.lexsort((cols, key))
    key, members = key[order], cols[order]
    start = np.r_[0, np.flatnonzero(np.diff(key)) + 1] if key.size else np.zeros(0, np.int64)
    end = np.r_[start[1:], key.size]
    members = members.tolist()  # (one Python list: per-group slices of it are cheap)
    out = [[] for _ in bounds]
    for s, e, b in zip(start.tolist(), end.tolist(), (key[start] // g // wins).tolist()):
        out[b].append(tuple(members[s:e]))
    return [sorted(o) for o in out]


def _greedy(occ: np.ndarray, hits: np.ndarray, alpha: int, limit: np.ndarray) -> np.ndarray:
    """The documented greedy on a batch of independent column sets, one step of each per
    iteration. ``occ [B, G, words]``: each column's rows as a bitset (columns in column
    order, unused slots all-zero with ``hits`` 0); ``hits [B, G]`` its non-zero count;
    ``limit [B]`` the conflict limit. Returns ``[B, G]``: the seed column each column was
    grouped with (-1: unused slot).

    Only the seed ever grows: every other open group is still a single column, so the
    merged group's conflicts are ``conflicts(seed) + |rows(seed) & rows(c)|`` and its
    occupied rows ``|rows(seed)| + hits(c) - |rows(seed) & rows(c)|``, one AND and
    popcount per candidate.
    """
    nb, g, _ = occ.shape
    is_open = hits > 0
    slot = np.broadcast_to(np.arange(g), (nb, g))  # current position -> original slot
    order = np.argsort(-hits, axis=1, kind="stable")  # seed order: most non-zeros, lowest
    owner = np.full((nb, g), -1, np.int64)  # by original slot
    seed = np.full(nb, -1, np.int64)  # original slot of the seed
    rows = np.zeros(occ.shape[::2], np.uint64)  # the seed's occupied rows
    nnz = np.zeros(nb, np.int64)
    rows_hit = np.zeros(nb, np.int64)
    size = np.zeros(nb, np.int64)
    live = is_open.any(axis=1)
    while live.any():
        pick = np.flatnonzero(live & (seed < 0))
        if pick.size:
            avail = np.take_along_axis(is_open[pick], order[pick], axis=1)
            has = avail.any(axis=1)
            live[pick[~has]] = False
            pick = pick[has]
            s = order[pick, avail[has].argmax(axis=1)]
            is_open[pick, s] = False
            seed[pick] = owner[pick, slot[pick, s]] = slot[pick, s]
            rows[pick] = occ[pick, s]
            nnz[pick] = rows_hit[pick] = hits[pick, s]
            size[pick] = 1
        act = np.flatnonzero(live & (seed >= 0))
        full = size[act] >= alpha
        seed[act[full]] = -1
        act = act[~full]
        if not act.size:
            continue
        everyone = act.size == nb  # no copies while every entry is still grouping
        o, r = (occ, rows) if everyone else (occ[act], rows[act])
        inter = np.bitwise_count(o & r[:, None, :]).sum(axis=2, dtype=np.int64)
        ok = (is_open if everyone else is_open[act]) & (
            inter <= (limit[act] - nnz[act] + rows_hit[act])[:, None])
        gain = np.where(ok, (hits if everyone else hits[act]) - inter, -1)  # -1: infeasible
        h = gain.argmax(axis=1)  # most new rows = fewest empty; ties: the lowest column
        merge = gain[np.arange(act.size), h] >= 0
        seed[act[~merge]] = -1
        m, h = act[merge], h[merge]
        rows[m] |= occ[m, h]
        rows_hit[m] = np.bitwise_count(rows[m]).sum(axis=1, dtype=np.int64)
        nnz[m] += hits[m, h]
        size[m] += 1
        is_open[m, h] = False
        owner[m, slot[m, h]] = seed[m]
        # drop the columns that are no longer open once they are a quarter of the width
        # (stable: the open columns keep their column order, so the tie-breaks hold)
        width = int(is_open.sum(axis=1).max())
        if 0 < width <= occ.shape[1] * 3 // 4:
            keep = np.argsort(~is_open, axis=1, kind="stable")[:, :width]
            occ = np.take_along_axis(occ, keep[:, :, None], axis=1)
            hits, is_open, slot = (np.take_along_axis(x, keep, axis=1)
                                   for x in (hits, is_open, slot))
            order = np.argsort(np.where(is_open, -hits, 1), axis=1, kind="stable")
    return owner


def group_conflicts(nonzero: np.ndarray, group) -> int:
    """``sum_rows max(0, nnz_in_row_in_group - 1)`` of one group of columns."""
    c = np.asarray(nonzero, bool)[list(group)].sum(axis=0)
    return int(np.maximum(c - 1, 0).sum())


def conflict_prune(w: np.ndarray, groups) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep the largest-|w| weight per (row, group).

    Returns ``(packed [G, N], select [G, N], keep [K, N] bool)``: ``packed[g, n]`` is the
    surviving weight of group ``g`` for output ``n`` (0 if none) and ``select[g, n]`` the
    position inside ``groups[g]`` of the column it came from (0 if none)."""
    w = np.asarray(w)
    packed, select, src = _prune_groups(w, groups)
    keep = np.zeros(w.shape, bool)
    gi, ci = np.nonzero(packed)
    keep[src[gi, ci], ci] = True
    return packed, select, keep


def _prune_groups(w: np.ndarray, groups):
    """``conflict_prune`` without the ``[K, N]`` mask: ``(packed, select, src)``, ``src``
    the original column of each survivor (meaningless where ``packed`` is 0)."""
    k, n = w.shape
    packed = np.zeros((len(groups), n), w.dtype)
    select = np.zeros((len(groups), n), np.int64)
    if not groups:
        return packed, select, select
    lanes = _lane_matrix(groups, -1)  # [G, width], -1 on unused lanes
    src = np.zeros((len(groups), n), np.int64)
    cols = np.arange(n)
    # running max of |w| over the lanes; strict ">" keeps the lowest position on ties
    # (np.argmax's rule); an unused lane reads 0 and so never wins a row where a weight
    # survives. Blocks of groups that stay in cache, arithmetic instead of masked writes (the
    # masks are random).
    step = max(1, (1 << 16) // max(1, n))
    for g0 in range(0, len(groups), step):
        ln = lanes[g0:g0 + step]
        best = np.abs(w[ln[:, 0]])  # a group is never empty
        pos = np.zeros(best.shape, np.int8)  # alpha <= 64
        for j in range(1, ln.shape[1]):
            v = np.abs(w[ln[:, j]])
            v *= (ln[:, j] >= 0)[:, None]
            upd = v > best
            np.maximum(best, v, out=best)
            pos += upd * (j - pos)
        nzrow = best > 0
        pos = pos.astype(np.int64)
        col = np.maximum(np.take_along_axis(ln, pos, axis=1), 0)
        select[g0:g0 + step] = pos * nzrow
        packed[g0:g0 + step] = w[col, cols] * nzrow
        src[g0:g0 + step] = col
    return packed, select, src


def _lane_matrix(groups, fill: int) -> np.ndarray:
    """``[G, max group size]`` columns of each group, ``fill`` on unused lanes."""
    sizes = np.fromiter(map(len, groups), np.int64, len(groups))
    out = np.full((len(groups), int(sizes.max(initial=0))), fill, np.int64)
    row = np.repeat(np.arange(len(groups)), sizes)
    out[row, np.arange(row.size) - np.repeat(np.cumsum(sizes) - sizes, sizes)] = \
        np.fromiter(itertools.chain.from_iterable(groups), np.int64, row.size)
    return out


# --- packed layers -----------------------------------------------------------------------------
@dataclass
class PackedBlock:
    """One grouping block: output channels ``n0:n1`` packed into ``len(groups)`` rows."""

    n0: int
    n1: int
    groups: list[tuple[int, ...]]
    weight: np.ndarray  # [G, n1-n0]
    select: np.ndarray  # [G, n1-n0], index into the group

    @property
    def rows(self) -> int:
        return len(self.groups)


@dataclass
class Packing:
    """A ``[K, N]`` matrix after grouping and conflict pruning, in one or more blocks."""

    k: int
    n: int
    alpha: int
    gamma: float
    block: int
    blocks: list[PackedBlock] = field(default_factory=list)

    @property
    def packed_columns(self) -> int:
        """Packed array rows (paper: packed columns), summed over the blocks' groups
        weighted by their width: equals the number of groups for a global grouping."""
        return int(round(sum(b.rows * (b.n1 - b.n0) for b in self.blocks) / max(1, self.n)))

    @property
    def nonempty_columns(self) -> int:
        """Original columns with at least one surviving weight."""
        used = np.zeros(self.k, bool)
        one = np.uint64(1)
        for bi, b in enumerate(self.blocks):
            # per group, a bitmask of the lanes holding a surviving weight (alpha <= 64),
            # a few groups at a time so the temporaries stay in cache
            lane_bits = np.zeros(b.rows, np.uint64)
            step = max(1, (1 << 16) // max(1, b.n1 - b.n0))
            for g0 in range(0, b.rows, step):
                bits = np.left_shift(one, b.select[g0:g0 + step].astype(np.uint64))
                bits *= b.weight[g0:g0 + step] != 0
                lane_bits[g0:g0 + step] = np.bitwise_or.reduce(bits, axis=1)
            hit = (lane_bits[:, None] >> np.arange(self.alpha, dtype=np.uint64)) & one
            used[self.lanes(bi)[hit.astype(bool)]] = True
        return int(used.sum())

    def dense(self) -> np.ndarray:
        """The pruned, conflict-free ``[K, N]`` matrix the packing represents."""
        dt = self.blocks[0].weight.dtype if self.blocks else np.int64
        w = np.zeros((self.k, self.n), dt)
        for b in self.blocks:
            for g, members in enumerate(b.groups):
                cols = np.arange(b.n0, b.n1)
                src = np.asarray(members)[b.select[g]]
                nzc = b.weight[g] != 0
                w[src[nzc], cols[nzc]] = b.weight[g][nzc]
        return w

    def mask(self) -> np.ndarray:
        return self.dense() != 0

    def lanes(self, b: int) -> np.ndarray:
        """``[G, alpha]`` original column of each lane of block ``b``'s groups (-1: unused)."""
        blk = self.blocks[b]
        out = -np.ones((blk.rows, self.alpha), np.int64)
        lanes = _lane_matrix(blk.groups, -1)
        out[:, :lanes.shape[1]] = lanes
        return out

    def apply(self, a: np.ndarray) -> np.ndarray:
        """``a [M, K] @ packed`` the way the array computes it: each cell multiplies the
        lane its select picks by its weight."""
        a = np.asarray(a)
        out = np.zeros((a.shape[0], self.n), np.result_type(a, self.blocks[0].weight)
                       if self.blocks else np.int64)
        for bi, b in enumerate(self.blocks):
            lanes = self.lanes(bi)  # [G, alpha]
            src = np.take_along_axis(lanes, b.select, axis=1)  # [G, nb] column per cell
            src = np.where(src < 0, 0, src)
            # gathered[m, g, j] = a[m, src[g, j]]
            gathered = a[:, src]
            out[:, b.n0:b.n1] = np.einsum("mgj,gj->mj", gathered, b.weight)
        return out

    @property
    def cells(self) -> int:
        """Occupied array cells: packed rows x output channels, over the blocks."""
        return int(sum(b.rows * (b.n1 - b.n0) for b in self.blocks))

    @property
    def nnz(self) -> int:
        return int(sum(np.count_nonzero(b.weight) for b in self.blocks))

    def tiles(self, rows: int, cols: int) -> int:
        """Weight tiles of a ``rows x cols`` array (one pass per tile and pixel chunk)."""
        return int(sum(-(-max(1, b.rows) // rows) * -(-(b.n1 - b.n0) // cols)
                       for b in self.blocks))

    def summary(self) -> dict:
        return {"columns": self.k, "nonempty_columns": self.nonempty_columns,
                "packed_columns": self.packed_columns,
                "column_reduction": self.k / max(1, self.packed_columns),
                "nnz": self.nnz, "cells": self.cells,
                "packing_efficiency": self.nnz / max(1, self.cells),
                "groups_per_block": [b.rows for b in self.blocks]}


def pack_with_groups(w: np.ndarray, block_groups: list, alpha: int, gamma: float,
                     block: int = 0) -> Packing:
    """Pack ``w [K, N]`` with given groupings (one list of groups per block)."""
    w = np.asarray(w)
    k, n = w.shape
    bounds = _block_bounds(n, block)
    if len(block_groups) != len(bounds):
        raise ValueError(f"{len(block_groups)} groupings for {len(bounds)} blocks")
    p = Packing(k, n, alpha, float(gamma), block)
    for (n0, n1), groups in zip(bounds, block_groups):
        groups = [tuple(map(int, g)) for g in groups]
        if any(len(g) > alpha for g in groups):
            raise ValueError(f"a group has more than alpha={alpha} columns")
        if not groups:  # an all-zero block still needs one (zero) row to emit its bias
            groups = [(0,)]
        packed, select, _ = _prune_groups(w[:, n0:n1], groups)
        p.blocks.append(PackedBlock(n0, n1, groups, packed, select))
    return p


def _block_bounds(n: int, block: int) -> list[tuple[int, int]]:
    if not block or block >= n:
        return [(0, n)]
    return [(n0, min(n, n0 + block)) for n0 in range(0, n, block)]


def pack(w: np.ndarray, alpha: int, gamma: float, block: int = 0,
         window: int | None = None) -> Packing:
    """Group the non-zero columns of ``w [K, N]`` and conflict-prune them into a Packing."""
    check_params(alpha, gamma, block)
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"pack expects a [K, N] matrix, not shape {w.shape}")
    groups = _group_blocks(w != 0, _block_bounds(w.shape[1], block), alpha, gamma, window)
    return pack_with_groups(w, groups, alpha, gamma, block)


def magnitude_prune(w: np.ndarray, sparsity: float) -> np.ndarray:
    """Zero the smallest-|w| fraction ``sparsity`` of ``w`` (ties: keep the earlier index)."""
    w = np.asarray(w)
    flat = np.abs(w).ravel()
    drop = int(round(sparsity * flat.size))
    if drop <= 0:
        return w.copy()
    order = np.argsort(flat, kind="stable")  # smallest first; stable = deterministic ties
    out = w.copy().ravel()
    out[order[:drop]] = 0
    return out.reshape(w.shape)


def prune_and_pack(w: np.ndarray, alpha: int, gamma: float, sparsity: float | None = None,
                   block: int = 0) -> Packing:
    """Magnitude prune to ``sparsity`` (default: ``target_sparsity(alpha)``) and pack."""
    s = target_sparsity(alpha) if sparsity is None else sparsity
    return pack(magnitude_prune(w, s), alpha, gamma, block)


# --- joint prune - combine - retrain on the digits CNN -------------------------------------------
def _layer_matrix(mod) -> np.ndarray:
    """A torch conv/linear weight as the GEMM's ``[K, N]`` matrix (float numpy)."""
    w = mod.weight.detach().numpy()
    return w.reshape(w.shape[0], -1).T


def _mask_tensor(mask_kn: np.ndarray, mod):
    import torch

    return torch.from_numpy(mask_kn.T.reshape(mod.weight.shape).astype(np.float32))


@dataclass
class JointResult:
    alpha: int
    gamma: float
    block: int
    sparsity: float
    float_before: float
    float_after: float
    accuracy_before: float  # int8 test accuracy of the dense net
    accuracy_after: float  # int8 test accuracy of the packed, retrained net
    accuracy_pruned_no_retrain: float  # int8 accuracy right after the last prune, no retrain
    groups: dict  # layer name -> list (blocks) of lists of groups
    state: dict  # retrained float state_dict
    masks: dict  # layer name -> [K, N] bool


def joint_optimize(alpha: int = 8, gamma: float = 0.5, block: int = 0, progress=None,
                   use_cache: bool = True) -> JointResult:
    """Iterative magnitude pruning to ``target_sparsity(alpha)`` in ``PRUNE_STEPS`` equal
    steps; at each step every layer is regrouped from scratch on its pruned pattern and
    conflict-pruned, then the net retrains with the masks for ``EPOCHS_PER_STEP`` epochs;
    ``FINAL_EPOCHS`` more after the last step. Deterministic (one thread, fixed seeds);
    cached under ``zeroskip.cache_dir()``."""
    import torch

    from zeroskip.models import digits

    check_params(alpha, gamma, block)
    key = hashlib.sha1(json.dumps([digits.RECIPE, RECIPE, alpha, float(gamma), block])
                       .encode()).hexdigest()[:12]
    path = digits.cache_dir() / f"{key}-combined.pt"
    # the result shipped with the package, else the cache (digits.bundled: the same on every
    # machine, where retraining is not bit-identical across CPUs)
    for source in ([digits.bundled(path.name), path] if use_cache else []):
        if source is None or not source.exists():
            continue
        try:
            d = torch.load(source, weights_only=False)
            return JointResult(**d)
        except Exception:  # stale or truncated: recompute over it
            pass
    data = digits.load_data()
    base = digits.trained_model()
    model = copy.deepcopy(base)
    specs = [s.name for s in _specs()]
    mods = dict(zip(specs, model.compute_layers()))
    before_f = digits.float_accuracy(model, data.x_test, data.y_test)
    before_i = digits.int_accuracy(digits.quantize_model(model, data.x_calib), data.x_test,
                                   data.y_test)
    target = target_sparsity(alpha)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    masks_kn, groups = {}, {}
    try:
        steps = PRUNE_STEPS if target > 0 else 1
        for step in range(1, steps + 1):
            s = target * step / steps
            for name, mod in mods.items():
                w = _layer_matrix(mod)
                p = prune_and_pack(w, alpha, gamma, s, block)
                masks_kn[name] = p.mask()
                groups[name] = [list(b.groups) for b in p.blocks]
                with torch.no_grad():
                    mod.weight.mul_(_mask_tensor(masks_kn[name], mod))
            if progress:
                progress(f"prune step {step}/{steps}: sparsity {s:.0%}, retraining")
            if step == steps:
                masks = {n: _mask_tensor(m, mods[n]) for n, m in masks_kn.items()}
                pruned_i = digits.int_accuracy(digits.quantize_model(model, data.x_calib,
                                                                     masks=masks),
                                               data.x_test, data.y_test)
            masks = {n: _mask_tensor(m, mods[n]) for n, m in masks_kn.items()}
            epochs = EPOCHS_PER_STEP + (FINAL_EPOCHS if step == steps else 0)
            digits.train(model, data, epochs=epochs, masks=masks, lr=RETRAIN_LR,
                         seed=digits.SEED + step)
    finally:
        torch.set_num_threads(threads)
    masks = {n: _mask_tensor(m, mods[n]) for n, m in masks_kn.items()}
    after_f = digits.float_accuracy(model, data.x_test, data.y_test, masks)
    after_i = digits.int_accuracy(digits.quantize_model(model, data.x_calib, masks=masks),
                                  data.x_test, data.y_test)
    res = JointResult(alpha, float(gamma), block, target, before_f, after_f, before_i, after_i,
                      pruned_i, groups, {k: v.clone() for k, v in model.state_dict().items()},
                      masks_kn)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # parallel test workers may race here
    torch.save(res.__dict__, tmp)
    tmp.replace(path)
    return res


def _specs():
    from zeroskip.models.workloads import digits_layers
    return digits_layers()


def joint_model(res: JointResult):
    """The retrained float net of a ``JointResult`` and its masks as torch tensors."""
    from zeroskip.models import digits

    model = digits.DigitsNet()
    model.load_state_dict(res.state)
    mods = dict(zip([s.name for s in _specs()], model.compute_layers()))
    masks = {n: _mask_tensor(m, mods[n]) for n, m in res.masks.items()}
    return model.eval(), masks


def joint_quant_layers(res: JointResult, rule: str = "kl", fxp=None):
    """The packed net quantised: ``QuantLayer`` list with pruned, conflict-free weights."""
    from zeroskip.models import digits

    model, masks = joint_model(res)
    data = digits.load_data()
    return digits.quantize_model(model, data.x_calib, rule, fxp, masks=masks)


def joint_packings(res: JointResult, layers) -> list[Packing]:
    """Packings of the quantised layers with the groupings found by the joint optimisation
    (the integer weights' non-zeros are a subset of the masks, so nothing more is pruned)."""
    out = []
    for q in layers:
        w = q.weight_matrix.numpy()
        p = pack_with_groups(w, res.groups[q.spec.name], res.alpha, res.gamma, res.block)
        if not np.array_equal(p.dense(), w):
            raise RuntimeError(f"layer {q.spec.name}: the quantised weights are not "
                               f"conflict-free under the stored grouping")
        out.append(p)
    return out
