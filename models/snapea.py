"""SnaPEA (Akhlaghi et al., ISCA 2018): offline weight reordering, the early-termination rule
in torch, and the (Th, n) optimiser.

The rule, shared bit for bit by ``hw.snapea`` (RTL), ``sim.snapea`` (simulators) and the
torch reference here:

- **Order.** Zero weights are dropped (a kernel with no non-zero weight keeps one zero tap so
  every window still gets its bias). Exact mode: positive weights first (largest first), then
  negative weights most negative first, so the partial sum falls as fast as possible. With
  speculation ``n > 0`` the first ``n`` taps are the kernel's ``n`` largest-|w| non-zero
  weights (largest first, ties by position), then the remaining positives, then the
  remaining negatives. An index buffer maps each tap to its (channel, ky, kx) input offset.
- **Accumulate.** The accumulator starts at the bias; one tap per MAC.
- **Exact termination.** ``exact_from`` is the number of taps after which every remaining
  weight is <= 0. After tap ``j`` (0-based) with ``j + 1 >= exact_from`` and
  ``(j + 1) % check_every == 0``, a negative partial sum ends the window with output 0: the
  inputs are unsigned (post-ReLU), so the remaining terms are <= 0 and the final sum, hence
  its ReLU, is 0. A negative bias is harmless: no check runs before ``exact_from``.
- **Predictive termination.** After tap ``n - 1`` (when ``n > 0``), a partial sum below
  ``Th`` ends the window with output 0 (a prediction; may be wrong).

Only ReLU layers whose input is a post-ReLU activation use it: the first layer (image input,
mean-subtracted in the paper) and layers without ReLU run dense.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from zeroskip.hw.fixedpoint import requantize
from zeroskip.models.reference import QuantLayer, conv_acc



@dataclass
class KernelOrder:
    """Reordered taps of every kernel of a layer (padded to the longest kernel with -1).

    ``index[k, j]``: position (flattened channel, ky, kx) of kernel ``k``'s ``j``-th tap;
    ``weight[k, j]``: its weight; ``taps[k]``: number of taps; ``exact_from[k]``: taps after
    which all remaining weights are <= 0; ``spec_n[k]``/``threshold[k]``: the prediction
    (``spec_n == 0``: none).
    """

    index: np.ndarray
    weight: np.ndarray
    taps: np.ndarray
    exact_from: np.ndarray
    spec_n: np.ndarray
    threshold: np.ndarray

    @property
    def kernels(self) -> int:
        return len(self.taps)


@dataclass
class LayerParams:
    """Predictive-mode parameters of one layer: per kernel speculation length and threshold."""

    spec_n: np.ndarray  # int [N]; 0 = exact mode for that kernel
    threshold: np.ndarray  # int [N], compared with the partial sum (bias included)

    def __post_init__(self):
        self.spec_n = np.asarray(self.spec_n, np.int64)
        self.threshold = np.asarray(self.threshold, np.int64)
        if self.spec_n.shape != self.threshold.shape:
            raise ValueError("spec_n and threshold must have one entry per kernel")
        if (self.spec_n < 0).any():
            raise ValueError(f"spec_n must be >= 0, not {int(self.spec_n.min())}")

    def to_dict(self) -> dict:
        return {"spec_n": self.spec_n.tolist(), "threshold": self.threshold.tolist()}


def reorder(weight: np.ndarray, params: LayerParams | None = None,
            chunk_terms: int = 1 << 23) -> KernelOrder:
    """Reorder the kernels of ``weight`` ([N, K] or [N, C, k, k]) for early termination.

    Kernels are reordered in chunks of about ``chunk_terms`` weights (bounds the sort's
    temporaries for VGG-16's fc6) and padded to the longest kernel."""
    w = np.asarray(weight).reshape(len(weight), -1)
    n_k, k = w.shape
    step = max(1, chunk_terms // max(1, k))
    if n_k <= step:
        return _reorder(w, params)
    if params is not None and len(params.spec_n) != n_k:
        raise ValueError(f"{len(params.spec_n)} prediction parameters for {n_k} kernels")
    # every chunk writes its rows of the padded result in place (no concatenation copy)
    width = int(np.maximum((w != 0).sum(1), 1).max())
    index = np.empty((n_k, width), np.int32)
    weight_o = np.empty((n_k, width), _narrow_dtype(w))
    parts = [_reorder(w[i:i + step], None if params is None else LayerParams(
        params.spec_n[i:i + step], params.threshold[i:i + step]),
        out=(index[i:i + step], weight_o[i:i + step])) for i in range(0, n_k, step)]
    # exact_from counts from the start; the padding after the last tap changes nothing
    return KernelOrder(index, weight_o, np.concatenate([p.taps for p in parts]),
                       np.concatenate([p.exact_from for p in parts]),
                       np.concatenate([p.spec_n for p in parts]),
                       np.concatenate([p.threshold for p in parts]))


def _narrow_dtype(w: np.ndarray):
    big = max(int(w.max(initial=0)), -int(w.min(initial=0)))
    return np.int16 if big < 1 << 13 else np.int64


def _narrow(w: np.ndarray) -> np.ndarray:
    """``w`` as int16 when its values allow (the big FC layers' reordering is memory-bound)."""
    return w.astype(_narrow_dtype(w), copy=False)


def _reorder(w: np.ndarray, params: LayerParams | None, out=None) -> KernelOrder:
    """``reorder`` of one chunk of kernels; ``out``: (index, weight) arrays of the chunk's
    rows, as wide as the longest kernel of the layer, to write the result into."""
    w = _narrow(w)
    n_k, k = w.shape
    spec_n = np.zeros(n_k, np.int64) if params is None else params.spec_n.copy()
    thr = np.zeros(n_k, np.int64) if params is None else params.threshold.copy()
    if len(spec_n) != n_k:
        raise ValueError(f"{len(spec_n)} prediction parameters for {n_k} kernels")
    nnz = (w != 0).sum(1)
    spec_n = np.minimum(spec_n, nnz)
    # single small-integer sort keys with a stable sort (ties by position; numpy radix-sorts
    # 16-bit keys), so reordering VGG-16's fc6 (4096 x 25088) takes seconds, not a minute
    half = 1 << int(np.abs(w).max(initial=1)).bit_length()  # > every |w|
    key_t = np.int16 if 8 * half < 1 << 15 else np.int64
    wk = w.astype(key_t)
    # positives descending (3h - w, in 2h..3h), then negatives most negative first and the
    # zeros last (5h + w: negatives in 4h..5h, zeros at 5h); speculation taps by |w|
    # descending (h - |w|, below h)
    key = np.where(wk > 0, key_t(3 * half) - wk, key_t(5 * half) + wk)
    if (spec_n > 0).any():
        # rank of every weight by |w| (largest first, ties by position), zeros last
        mag_key = np.where(w == 0, key_t(2 * half), key_t(half) - np.abs(wk))
        mag_order = np.argsort(mag_key, axis=-1, kind="stable")
        mag_rank = np.empty_like(mag_order)
        np.put_along_axis(mag_rank, mag_order, np.arange(k)[None].repeat(n_k, 0), axis=-1)
        spec = (mag_rank < spec_n[:, None]) & (w != 0)
        key = np.where(spec, key_t(half) - np.abs(wk), key)
    order = np.argsort(key, axis=-1, kind="stable")
    taps = np.maximum(nnz, 1)
    width = int(taps.max()) if out is None else out[0].shape[1]
    index = np.empty((n_k, width), np.int32) if out is None else out[0]
    index[:] = order[:, :width]
    weight_o = np.take_along_axis(w, index, axis=1)
    valid = np.arange(width)[None] < taps[:, None]
    index[~valid] = -1
    weight_o[~valid] = 0
    if out is not None:
        out[1][:] = weight_o
        weight_o = out[1]
    # taps after the last positive one: from there on the partial sum can only fall
    positive = weight_o > 0
    exact_from = np.where(positive.any(1), width - positive[:, ::-1].argmax(1), 0)
    return KernelOrder(index, weight_o, taps, exact_from, spec_n, thr)


def kernel_masks(order: KernelOrder, k: int, taps_of=None) -> np.ndarray:
    """[K, N] 0/1 matrix: column ``n`` marks the first ``taps_of[n]`` taps of kernel ``n``."""
    n_k = order.kernels
    upto = order.taps if taps_of is None else np.asarray(taps_of)
    mask = np.zeros((k, n_k), np.int64)
    width = order.index.shape[1]
    j = np.arange(width)[None]
    sel = (j < upto[:, None]) & (order.index >= 0)
    kk, jj = np.nonzero(sel)
    mask[order.index[kk, jj], kk] = 1
    return mask


def _gemm(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Exact integer [M, K] @ [K, N] (``exact_matmul``)."""
    return exact_matmul(a, np.asarray(w))


F32_EXACT = 1 << 24  # every integer of magnitude <= 2**24 is a float32


class ExactWeights:
    """The right-hand side of ``exact_matmul``, converted once: the integer matrix [K, N],
    its float32 copy and each row's largest magnitude."""

    def __init__(self, w, wmax=None):
        self.w = np.asarray(w)  # integers, or float32 holding integers below 2**24
        self.wmax = (np.asarray(wmax, np.int64) if wmax is not None
                     else np.abs(self.w).max(1).astype(np.int64) if self.w.size
                     else np.zeros(len(self.w), np.int64))
        self.w32 = torch.from_numpy(np.ascontiguousarray(self.w, np.float32))
        self._w64 = None

    @property
    def w64(self) -> torch.Tensor:
        if self._w64 is None:
            self._w64 = self.w32.double()
        return self._w64


def exact_matmul(a: np.ndarray, w, dtype=np.int64) -> np.ndarray:
    """Exact integer ``a`` [M, K] @ ``w`` [K, N] (an array or ``ExactWeights``) ->
    ``dtype`` (int32 only when the caller knows that every sum of a subset of the terms
    fits), in float32 BLAS where that is provably exact, else float64 (exact below 2**53,
    as every value here is).

    float32 is exact when every partial sum BLAS may form, in any order, is an integer of
    magnitude <= 2**24: each is a sum of a subset of the terms ``a[r, k] * w[k, n]``, so it
    suffices that ``sum_k |a[r, k]| * max_n |w[k, n]| <= 2**24`` for every row of a run of
    K (then every product is below 2**24 too). K is cut into the fewest consecutive runs
    that meet that bound (one for most layers: post-ReLU inputs are sparse and small) and
    the runs' results are summed as int64; float64 when that takes more than 8 runs
    (16-bit data)."""
    a = np.asarray(a)
    ew = w if isinstance(w, ExactWeights) else ExactWeights(w)
    m, k = a.shape
    cuts = None
    mag = a if a.min(initial=0) >= 0 else np.abs(a.astype(np.int64))
    top = int(ew.wmax.max(initial=0))
    if int(mag.sum(1, dtype=np.int64).max(initial=0)) * top <= F32_EXACT:
        cuts = [0, k]  # the whole of K in one run (a cruder bound, checked first)
    elif int(mag.max(initial=0)) * top <= F32_EXACT:
        reach = np.cumsum(mag * ew.wmax[None], axis=1)  # [M, K]
        cuts, start = [0], 0
        while start < k and len(cuts) <= 9:
            base = reach[:, start - 1:start] if start else 0
            over = (reach[:, start:] - base).max(0) > F32_EXACT
            start += int(over.argmax()) if over.any() else k - start
            cuts.append(start)
    tdt = torch.int32 if np.dtype(dtype) == np.int32 else torch.int64
    if cuts is None or len(cuts) > 9:
        r = torch.from_numpy(np.ascontiguousarray(a, np.float64)) @ ew.w64
        return r.round_().to(tdt).numpy()
    a32 = torch.from_numpy(np.ascontiguousarray(a, np.float32))
    if len(cuts) == 2:
        return (a32 @ ew.w32).to(tdt).numpy()
    out = torch.zeros((m, ew.w.shape[1]), dtype=tdt)
    for k0, k1 in zip(cuts, cuts[1:]):
        out += (a32[:, k0:k1] @ ew.w32[k0:k1]).to(tdt)
    return out.numpy()


@dataclass
class Termination:
    """Per (window, kernel) outcome: ``macs`` performed and how the window ended."""

    macs: np.ndarray  # int64 [M, N]
    exact: np.ndarray  # bool [M, N]: stopped early by the exact sign check
    predicted: np.ndarray  # bool [M, N]: stopped by the prediction (output forced to 0)
    acc: np.ndarray  # int64 [M, N]: the full accumulator (bias included)

    @property
    def zeroed(self) -> np.ndarray:
        """Windows whose output the block forces to 0."""
        return self.exact | self.predicted


FEW_WINDOWS = 16


def termination(a: np.ndarray, weight_matrix: np.ndarray, bias: np.ndarray, order: KernelOrder,
                check_every: int = 1, terminate: bool = True,
                few_windows: int = FEW_WINDOWS, method: str = "blocked") -> Termination:
    """Vectorised termination points of every window ([M, K] unsigned im2col rows ``a``) of
    every kernel (``weight_matrix`` [K, N]); no loop over windows or MACs.

    Exact checks only run from tap ``exact_from - 1`` on, where the partial sum can only fall,
    so a window terminates at the first check position whose partial sum is negative (only
    windows whose full sum is negative can). ``method="blocked"`` (default) locates it with
    block-sum matmuls and a short gather (``_termination_blocked``); ``"walk"`` walks the
    tail per kernel (``_termination_walk``, a second implementation kept as a cross-check).
    With at most ``few_windows`` windows (FC layers, single images) every partial sum of
    every kernel is computed at once instead (``_termination_few_windows``), in kernel chunks;
    ``_termination_by_cumsum`` is the same without the shortcut, a reference for the tests.
    """
    a = np.asarray(a, np.int64)
    m, k = a.shape
    if m <= few_windows:
        return _termination_few_windows(a, bias, order, check_every, terminate)
    if method == "blocked":
        return _termination_blocked(a, weight_matrix, bias, order, check_every, terminate)
    if method != "walk":
        raise ValueError(f"method must be blocked or walk, not {method!r}")
    return _termination_walk(a, weight_matrix, bias, order, check_every, terminate)


def _termination_walk(a, weight_matrix, bias, order: KernelOrder, check_every: int,
                      terminate: bool) -> Termination:
    """Per kernel, walk the non-positive tail of the windows whose full sum is negative in
    growing blocks of taps (an independent second implementation of the exact path)."""
    m, k = a.shape
    n_k = order.kernels
    bias = np.asarray(bias, np.int64)
    full = _gemm(a, weight_matrix) + bias
    taps = order.taps
    macs = np.broadcast_to(taps, (m, n_k)).copy()
    exact = np.zeros((m, n_k), bool)
    pred = np.zeros((m, n_k), bool)
    if not terminate:
        return Termination(macs, exact, pred, full)
    wm = np.asarray(weight_matrix, np.int64)
    if (order.spec_n > 0).any():
        p_n = _gemm(a, wm * kernel_masks(order, k, order.spec_n)) + bias
        pred = (order.spec_n > 0)[None] & (p_n < order.threshold[None])
    p_e = _gemm(a, wm * kernel_masks(order, k, order.exact_from)) + bias
    ce = int(check_every)
    e = order.exact_from
    # partial sums of the tail fit int32 when the accumulator does (checked), halving traffic
    small = fxp_fits_int32(a, order, full, p_e)
    a_t = a.astype(np.int32) if small else a
    j0 = -(-np.maximum(e, 1) // ce) * ce - 1  # first check position at or after tap e-1
    for n in range(n_k):
        if j0[n] > taps[n] - 1:
            continue  # no check before the end: the window runs to completion
        live = full[:, n] < 0
        if not live.any():
            continue
        early = live & (p_e[:, n] < 0)  # already negative when the checks start
        macs[early, n] = j0[n] + 1
        exact[early, n] = True
        rows = np.nonzero(live & ~early)[0]
        if len(rows) == 0:
            continue
        # walk the non-positive tail in growing blocks; windows leave once they stop (most
        # stop early, which is the point), so the work follows the MACs actually performed
        cur = p_e[rows, n]
        start, t_n, step = int(e[n]), int(taps[n]), 16
        while len(rows) and start < t_n:
            end = min(start + step, t_n)
            idx = order.index[n, start:end]
            wt = order.weight[n, start:end].astype(a_t.dtype)
            psum = np.cumsum(np.take(a_t[rows], idx, axis=1) * wt, axis=1, dtype=a_t.dtype)
            psum += cur[:, None]
            j = np.arange(start, end)
            neg = (psum < 0) & ((j + 1) % ce == 0)[None]
            hit = neg.any(1)
            macs[rows[hit], n] = j[neg[hit].argmax(1)] + 1
            exact[rows[hit], n] = True
            rows, cur = rows[~hit], psum[~hit, -1]
            start, step = end, step * 2
    # the prediction wins unless an exact stop came strictly before it
    pred &= ~(exact & (macs < order.spec_n[None]))
    macs = np.where(pred, order.spec_n[None], macs)
    exact &= ~pred
    # reaching the last tap is not an early stop
    exact &= macs < taps[None]
    return Termination(macs, exact, pred, full)


def _run_columns(order: KernelOrder, k: int, spec_on: bool, blocks: int):
    """The right-hand side of ``_termination_blocked``'s matmul, float32 [K, groups * N]:
    per kernel its taps before ``exact_from`` (group 0), its speculation taps (group 1,
    with ``spec_on``), then its non-positive tail (taps ``exact_from .. taps``) cut into
    ``blocks`` runs of ``length[n]`` consecutive taps; each column holds the kernel's weights
    at those taps.
    Returns (the matrix, the runs' ``length`` [N])."""
    n_k, width = order.index.shape
    e, taps = order.exact_from, order.taps
    first = 2 if spec_on else 1
    length = np.maximum(1, -(-(taps - e) // blocks))
    out = np.zeros((k, first + blocks, n_k), np.float32)
    j = np.arange(width)[None]
    inside = (j < taps[:, None]) & (order.index >= 0)
    group = np.where(j < e[:, None], 0, first + (j - e[:, None]) // length[:, None])
    kk, jj = np.nonzero(inside)
    out[order.index[kk, jj], group[kk, jj], kk] = order.weight[kk, jj]
    if spec_on:
        kk, jj = np.nonzero(inside & (j < order.spec_n[:, None]))
        out[order.index[kk, jj], 1, kk] = order.weight[kk, jj]
    return out.reshape(k, -1), length


def _termination_blocked(a, weight_matrix, bias, order: KernelOrder, check_every: int,
                         terminate: bool, blocks: int = 8, chunk_bytes: int = 1 << 26,
                         gather_terms: int = 1 << 21) -> Termination:
    """Exact termination points of every (window, kernel) pair with BLAS matmuls and a short
    gather, no loop over windows, kernels or MACs.

    One exact integer matmul (``exact_matmul``) gives, per pair, the partial
    sum ``p_e`` after the ``exact_from`` taps (the last positive one), the speculation prefix
    sum, and the sums of ``blocks`` runs of consecutive taps of the non-positive tail (the
    full sum is ``p_e`` plus the runs). After ``exact_from`` the partial sum can only fall, so the first
    negative partial sum lies in the first run whose cumulative sum is negative; only that
    run's (at most ``ceil(tail / blocks)``) terms are gathered and summed for the pairs that
    terminate. The stop is the first check position (a multiple of ``check_every``, at or
    after ``exact_from``, at least 1) at or after it, or none if that lies past the last tap.
    Rows are processed in chunks of about ``chunk_bytes`` of matmul output.
    """
    m, k = a.shape
    n_k = order.kernels
    bias = np.asarray(bias, np.int64)
    taps, e, ce = order.taps, order.exact_from, int(check_every)
    wm = np.asarray(weight_matrix, np.int64)
    spec_on = terminate and bool((order.spec_n > 0).any())
    # terminating: the full sum is p_e plus the runs' sums, no column of its own
    if terminate:
        wcat, length = _run_columns(order, k, spec_on, blocks)
        wcat = ExactWeights(wcat, np.abs(wm).max(1, initial=0))
    else:
        wcat = ExactWeights(wm)
    macs = np.broadcast_to(taps, (m, n_k)).copy()
    exact = np.zeros((m, n_k), bool)
    pred = np.zeros((m, n_k), bool)
    full = np.empty((m, n_k), np.int64)
    first_check = -(-np.maximum(e, 1) // ce) * ce  # MACs at the first check
    if terminate:
        # taps padded by one run of zero weights so a run's gather never leaves the row
        lmax = int(length.max())
        jj = np.arange(lmax)
        wpad = order.index.shape[1] + lmax
        idx_flat = np.pad(np.maximum(order.index, 0), ((0, 0), (0, lmax))).ravel()
        w_flat = np.pad(order.weight.astype(np.int64), ((0, 0), (0, lmax))).ravel()
        # partial sums fit int32 when |bias| + max(a) * sum|w| does (halves the traffic)
        dt = _psum_dtype(a, bias, order)
        idx_flat = idx_flat.astype(dt if m * k < 1 << 31 else np.int64)
        w_flat = w_flat.astype(dt)
    else:
        dt = np.int64
    bias_dt = bias.astype(dt)
    rows = max(1, chunk_bytes // (8 * wcat.w.shape[1] + 8 * k))
    for r0 in range(0, m, rows):
        r1 = min(m, r0 + rows)
        xa = a[r0:r1]
        # every sum the matmul forms is a partial sum minus the bias: within ``bound``
        s = exact_matmul(xa, wcat, dt).reshape(r1 - r0, -1, n_k)
        if not terminate:
            full[r0:r1] = s[:, 0] + bias
            continue
        p_e = s[:, 0] + bias_dt
        if spec_on:
            p_n = s[:, 1] + bias_dt
            pred[r0:r1] = (order.spec_n > 0)[None] & (p_n < order.threshold[None])
        run_sums = s[:, 2 if spec_on else 1:]  # [rows, blocks, N]
        # MACs when the partial sum first turns negative (exact_from if it already is)
        t_neg = np.where(p_e < 0, e[None], taps[None])
        cum = p_e[:, None] + np.cumsum(run_sums, axis=1, dtype=dt)  # after each run
        full[r0:r1] = cum[:, -1]
        live = (full[r0:r1] < 0) & (p_e >= 0)
        first_run = (cum < 0).argmax(1)  # [rows, N]; valid where live
        ri, ni = np.nonzero(live)
        if len(ri):
            bi = first_run[ri, ni]
            before = np.where(bi > 0, cum[ri, np.maximum(bi - 1, 0), ni], p_e[ri, ni])
            xflat = xa.astype(dt).ravel()
            step = max(1, gather_terms // lmax)
            for p0 in range(0, len(ri), step):
                sl = slice(p0, p0 + step)
                r, n = ri[sl], ni[sl]
                start = e[n] + bi[sl] * length[n]
                # flat positions of the run's taps; running past the run's end (into the next
                # run or the zero padding) cannot move the first negative partial sum: the
                # run's own cumulative sum is already negative
                pos = (n * wpad + start)[:, None] + jj[None]
                xv = np.take(xflat, (r * k)[:, None] + np.take(idx_flat, pos))
                xv *= np.take(w_flat, pos)
                psum = np.cumsum(xv, axis=1, dtype=dt)
                psum += before[sl].astype(dt)[:, None]
                t_neg[r, n] = start + (psum < 0).argmax(1) + 1
        stop = np.maximum(t_neg if ce == 1 else -(-t_neg // ce) * ce, first_check[None])
        hit = (live | (p_e < 0)) & (stop <= taps[None])
        macs[r0:r1] = np.where(hit, stop, taps[None])
        exact[r0:r1] = hit
    if not terminate:
        return Termination(macs, exact, pred, full)
    pred &= ~(exact & (macs < order.spec_n[None]))
    macs = np.where(pred, order.spec_n[None], macs)
    exact &= ~pred
    exact &= macs < taps[None]
    return Termination(macs, exact, pred, full)


def _psum_dtype(a, bias, order: KernelOrder):
    """int32 when every partial sum of every kernel fits it (|bias| + max|a| * sum|w|), else
    int64; the crude bound (the longest kernel at the largest |w|) first, as it is cheap."""
    w = order.weight
    top = max(int(w.max(initial=0)), -int(w.min(initial=0)))
    head = int(np.abs(np.asarray(bias)).max(initial=0))
    amax = int(np.abs(np.asarray(a)).max(initial=0))
    if head + amax * top * w.shape[1] < (1 << 31) - 1:
        return np.int32
    bound = head + amax * int(np.abs(w).sum(1, dtype=np.int64).max(initial=0))
    return np.int32 if bound < (1 << 31) - 1 else np.int64


def _termination_few_windows(a, bias, order: KernelOrder, check_every: int,
                             terminate: bool, chunk_terms: int = 1 << 24) -> Termination:
    """Every partial sum ``bias + cumsum(a[:, index] * weight)`` [M, kernels, taps] at once
    (int32 when every partial sum fits), in chunks of kernels. From tap ``exact_from - 1`` on
    the partial sum can only fall (the inputs are unsigned, the remaining weights <= 0), so
    its negative taps there are a suffix: the first one is found by counting the others, and
    the stop is the first check position at or after it; the prediction is the one partial
    sum at tap ``spec_n - 1``."""
    m = a.shape[0]
    n_k, width = order.index.shape
    bias = np.asarray(bias, np.int64)
    dt = _psum_dtype(a, bias, order)
    a_t = np.asarray(a).astype(dt)
    macs = np.empty((m, n_k), np.int64)
    exact = np.zeros((m, n_k), bool)
    pred = np.zeros((m, n_k), bool)
    acc = np.empty((m, n_k), np.int64)
    ce = int(check_every)
    j = np.arange(width)
    step = max(1, chunk_terms // max(1, m * width))
    for k0 in range(0, n_k, step):
        sl = slice(k0, min(n_k, k0 + step))
        kn = np.arange(sl.stop - k0)
        idx = np.maximum(order.index[sl], 0)
        psum = a_t[:, idx]
        psum *= order.weight[sl].astype(dt)[None]
        np.cumsum(psum, axis=2, dtype=dt, out=psum)
        psum += bias[sl].astype(dt)[None, :, None]
        taps, e = order.taps[sl], order.exact_from[sl]
        acc[:, sl] = psum[:, kn, taps - 1]
        if not terminate:
            macs[:, sl] = taps[None]
            continue
        lo = np.maximum(e - 1, 0)
        tail = (j[None] >= lo[:, None]) & (j[None] < taps[:, None])  # [kernels, taps]
        neg = psum < 0
        neg &= tail[None]
        first = neg.argmax(2)  # the first negative tap (0-based) of the suffix, if any
        t_neg = np.where(neg[:, kn, first] if m == 1 else np.take_along_axis(
            neg, first[..., None], axis=2)[..., 0], first, taps[None])
        stop = -(-(t_neg + 1) // ce) * ce  # MACs at the first check at or after it
        hit_e = stop <= taps[None]
        spec = order.spec_n[sl]
        hit_p = (spec > 0)[None] & (psum[:, kn, np.maximum(spec - 1, 0)]
                                    < order.threshold[sl][None])
        # at the same tap the stop counts as predicted
        p_wins = hit_p & (~hit_e | (spec[None] <= stop))
        pred[:, sl] = p_wins
        exact[:, sl] = hit_e & ~p_wins
        macs[:, sl] = np.where(p_wins, spec[None], np.where(hit_e, stop, taps[None]))
    exact &= macs < order.taps[None]
    return Termination(macs, exact, pred, acc)


def _termination_by_cumsum(a, bias, order: KernelOrder, check_every: int,
                           terminate: bool, chunk_terms: int = 1 << 24) -> Termination:
    """Every partial sum ``bias + cumsum(a[:, index] * weight)`` [M, kernels, taps] at once,
    in chunks of kernels; the first stopping tap per (window, kernel) by ``argmax``."""
    m = a.shape[0]
    n_k, width = order.index.shape
    bias = np.asarray(bias, np.int64)
    macs = np.empty((m, n_k), np.int64)
    exact = np.zeros((m, n_k), bool)
    pred = np.zeros((m, n_k), bool)
    acc = np.empty((m, n_k), np.int64)
    j = np.arange(width)
    step = max(1, chunk_terms // max(1, m * width))
    for k0 in range(0, n_k, step):
        sl = slice(k0, min(n_k, k0 + step))
        idx = np.maximum(order.index[sl], 0)
        psum = np.cumsum(a[:, idx] * order.weight[sl][None], axis=2) + bias[sl][None, :, None]
        taps = order.taps[sl][None, :, None]
        inside = j[None, None] < taps
        acc[:, sl] = np.take_along_axis(psum, (taps - 1).repeat(m, 0), axis=2)[..., 0]
        stop_e = (inside & (psum < 0) & ((j + 1) % check_every == 0)[None, None]
                  & (j + 1 >= order.exact_from[sl][None, :, None]) & terminate)
        spec = order.spec_n[sl][None, :, None]
        stop_p = (inside & (j + 1 == spec) & (spec > 0)
                  & (psum < order.threshold[sl][None, :, None]) & terminate)
        stop = stop_e | stop_p
        hit = stop.any(2)
        first = stop.argmax(2)
        macs[:, sl] = np.where(hit, first + 1, order.taps[sl][None])
        p_first = np.take_along_axis(stop_p, first[..., None], axis=2)[..., 0]
        pred[:, sl] = hit & p_first
        exact[:, sl] = hit & ~p_first
    exact &= macs < order.taps[None]
    return Termination(macs, exact, pred, acc)


def fxp_fits_int32(a, order, full, p_e) -> bool:
    bound = int(np.abs(p_e).max(initial=0)) + int(a.max(initial=0)) * int(
        np.abs(order.weight).sum(1).max(initial=0))
    return bound < (1 << 31) - 1


def block_outputs(t: Termination, mult, shift, fxp, relu: bool = True) -> np.ndarray:
    """[M, N] outputs of the block: requantised full sums, 0 where the window stopped early."""
    y = requantize(t.acc, np.asarray(mult, np.int64), np.asarray(shift, np.int64), fxp, relu)
    return np.where(t.zeroed, 0, y)


# --- the torch reference of the cut-off rule ---------------------------------------------

def spec_weight(layer: QuantLayer, params: LayerParams) -> torch.Tensor:
    """The layer's weights masked to each kernel's speculation taps (same shape); cached on
    ``params`` per weight tensor."""
    cache = params.__dict__.setdefault("_spec_weight", {})
    key = id(layer.weight)
    if key in cache and cache[key][0] is layer.weight:
        return cache[key][1]
    order = reorder(layer.weight.numpy(), params)
    k = layer.weight[0].numel()
    mask = kernel_masks(order, k, order.spec_n).T.reshape(layer.weight.shape)
    cache[key] = (layer.weight, layer.weight * torch.from_numpy(mask))
    return cache[key][1]


def snapea_layer_forward(x: torch.Tensor, layer: QuantLayer,
                         params: LayerParams | None = None) -> torch.Tensor:
    """conv -> bias -> requantise (ReLU) with SnaPEA's cut-off -> max-pool, in torch.

    Exact mode (``params`` None) returns exactly ``models.reference.layer_forward``; with
    ``params`` the outputs whose speculative partial sum (first ``n`` taps + bias) is below
    ``Th`` are 0.
    """
    s = layer.spec
    acc = conv_acc(x, layer)
    y = requantize(acc, layer.mult[:, None, None], layer.shift[:, None, None], layer.fxp,
                   relu=s.relu)
    if params is not None and (params.spec_n > 0).any():
        if not s.relu:
            raise ValueError(f"layer {s.name!r} has no ReLU: it cannot terminate early")
        xb = x if x.dim() == 4 else x[None]
        p_n = F.conv2d(xb.double(), spec_weight(layer, params).double(), layer.bias.double(),
                       stride=s.stride, padding=s.pad).round().long()
        if x.dim() == 3:
            p_n = p_n[0]
        thr = torch.from_numpy(params.threshold)[:, None, None]
        on = torch.from_numpy(params.spec_n > 0)[:, None, None]
        y = torch.where(on & (p_n < thr), torch.zeros_like(y), y)
    if s.pool > 1:
        y = F.max_pool2d(y.double(), s.pool).long()
    return y


def snapea_network_forward(x: torch.Tensor, layers: list[QuantLayer],
                           params: list | None = None) -> list[torch.Tensor]:
    """``models.reference.network_forward`` with per-layer SnaPEA parameters (None = exact)."""
    params = params or [None] * len(layers)
    acts = [x]
    for layer, p in zip(layers, params):
        if layer.spec.kind == "fc":
            x = x.reshape(*x.shape[:-3], -1, 1, 1)
        x = snapea_layer_forward(x, layer, p)
        acts.append(x)
    return acts


def eligible(layers) -> list[bool]:
    """Layers that may terminate early: ReLU layers fed by a ReLU layer (not the first)."""
    specs = [getattr(l, "spec", l) for l in layers]
    return [i > 0 and s.relu and specs[i - 1].relu for i, s in enumerate(specs)]
