"""Column combining: the grouping and conflict-pruning rules, the packed matrix, the
column-combined array's simulator (step model vs vectorised count vs the integer torch
reference), alpha = 1 = the dense array, and the joint optimisation's headline figures."""

import json
import math

import numpy as np
import pytest
import torch

from zeroskip.hw.config import CombinedConfig
from zeroskip.models import column_combining as cc
from zeroskip.models.reference import gemm_reference, layer_forward
from zeroskip.models.workloads import fc
from zeroskip.sim import combined as sc
from zeroskip.sim import systolic as ss


def sparse_matrix(k, n, density, seed):
    rng = np.random.default_rng(seed)
    w = rng.integers(-127, 128, (k, n))
    return np.where(rng.random((k, n)) < density, w, 0)


MATRICES = {  # name -> (K, N, density, alpha, gamma)
    "tall-a8-g0.5": (96, 24, 0.2, 8, 0.5),
    "wide-a4-g0.25": (40, 64, 0.3, 4, 0.25),
    "dense-a2-g0": (30, 10, 0.9, 2, 0.0),
    "sparse-a16-g1": (120, 16, 0.05, 16, 1.0),
    "tiny-a3-g0.3": (7, 5, 0.5, 3, 0.3),
}


@pytest.mark.parametrize("name", MATRICES)
def test_grouping_respects_alpha_and_conflict_limit(name):
    k, n, density, alpha, gamma = MATRICES[name]
    w = sparse_matrix(k, n, density, seed=len(name))
    groups = cc.group_columns(w != 0, alpha, gamma)
    limit = math.floor(gamma * n)
    for g in groups:
        assert 1 <= len(g) <= alpha
        counts = (w[list(g)] != 0).sum(axis=0)  # non-zeros per row inside the group
        assert np.maximum(counts - 1, 0).sum() <= limit
    members = sorted(c for g in groups for c in g)
    assert members == [c for c in range(k) if (w[c] != 0).any()], \
        "every non-empty column is in exactly one group, empty ones in none"


@pytest.mark.parametrize("name", MATRICES)
def test_packing_is_conflict_free_and_selects_point_at_the_weights(name):
    k, n, density, alpha, gamma = MATRICES[name]
    w = sparse_matrix(k, n, density, seed=len(name))
    p = cc.pack(w, alpha, gamma)
    pruned = p.dense()
    for b in p.blocks:
        for gi, g in enumerate(b.groups):
            sub = pruned[list(g)]
            assert ((sub != 0).sum(axis=0) <= 1).all(), "more than one weight per (row, group)"
            for j in range(n):
                col = g[b.select[gi, j]]
                assert b.weight[gi, j] == pruned[col, j], "the select does not point at the weight"
                if b.weight[gi, j] != 0:
                    # the survivor is the largest |w| of the original group in that row
                    assert abs(w[col, j]) == np.abs(w[list(g), j]).max()
                    assert w[col, j] == b.weight[gi, j]
    kept = pruned != 0
    assert (pruned[kept] == w[kept]).all() and not (kept & (w == 0)).any()
    assert p.packed_columns == len(p.blocks[0].groups)


@pytest.mark.parametrize("name", MATRICES)
def test_packed_matrix_times_input_equals_pruned_matrix_times_input(name):
    k, n, density, alpha, gamma = MATRICES[name]
    w = sparse_matrix(k, n, density, seed=len(name))
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (13, k))
    for block in (0, 4):
        p = cc.pack(w, alpha, gamma, block)
        expected = torch.from_numpy(a) @ torch.from_numpy(p.dense().astype(np.int64))
        assert (p.apply(a) == expected.numpy()).all()


def naive_grouping(nz, alpha, gamma):
    """The documented greedy, written out with plain loops (an independent oracle)."""
    k, n = nz.shape
    limit = math.floor(gamma * n)
    groups = [[c] for c in range(k) if nz[c].any()]
    open_ = list(range(len(groups)))
    closed = []

    def counts(g):
        return [sum(int(nz[c][r]) for c in g) for r in range(n)]

    while open_:
        seed = max(open_, key=lambda i: (sum(counts(groups[i])), -i))
        open_.remove(seed)
        while True:
            best = None
            for h in open_:
                merged = groups[seed] + groups[h]
                cnt = counts(merged)
                if len(merged) > alpha or sum(max(0, x - 1) for x in cnt) > limit:
                    continue
                empty = sum(1 for x in cnt if x == 0)
                if best is None or empty < best[0]:
                    best = (empty, h)
            if best is None:
                break
            groups[seed] = groups[seed] + groups[best[1]]
            open_.remove(best[1])
        closed.append(tuple(sorted(groups[seed])))
    return sorted(closed)


@pytest.mark.parametrize("seed", range(6))
def test_grouping_follows_the_documented_greedy_and_tie_breaks(seed):
    rng = np.random.default_rng(seed)
    k, n = int(rng.integers(5, 30)), int(rng.integers(3, 12))
    nz = rng.random((k, n)) < rng.uniform(0.1, 0.5)
    alpha, gamma = int(rng.integers(2, 6)), float(rng.choice([0.0, 0.2, 0.5]))
    assert cc.group_columns(nz, alpha, gamma) == naive_grouping(nz, alpha, gamma)


@pytest.mark.parametrize("case", ["windows-3words", "blocks-windows", "window-past-k"])
def test_windowed_and_blocked_grouping_is_the_greedy_on_each_window_and_block(case):
    """The batched run (every window of every block at once, rows as 64-bit bitsets) against
    the plain-loop oracle applied to each window of each block on its own."""
    k, n, window, block, alpha, gamma = {"windows-3words": (45, 150, 16, 0, 4, 0.3),
                                         "blocks-windows": (50, 70, 20, 24, 8, 0.5),
                                         "window-past-k": (30, 9, 64, 4, 3, 0.25)}[case]
    rng = np.random.default_rng(len(case))
    nz = rng.random((k, n)) < 0.3
    nz[rng.random(k) < 0.2] = False  # some empty columns
    expected = []
    for n0 in range(0, n, block or n):
        sub, groups = nz[:, n0:n0 + (block or n)], []
        for c0 in range(0, k, window):
            groups += [tuple(c0 + c for c in g)
                       for g in naive_grouping(sub[c0:c0 + window], alpha, gamma)]
        expected.append(sorted(groups))
    if not block:
        assert cc.group_columns(nz, alpha, gamma, window) == expected[0]
    w = np.where(nz, rng.integers(1, 128, (k, n)), 0)  # no zero among the non-zeros
    assert [b.groups for b in cc.pack(w, alpha, gamma, block, window).blocks] == expected


def test_conflict_pruning_keeps_the_largest_magnitude_and_the_lowest_column_on_ties():
    w = np.array([[3, -5, 0, 2, -128],
                  [-3, 5, 0, 0, 7],
                  [4, 5, 0, -2, 0]], np.int16)
    packed, select, keep = cc.conflict_prune(w, [(0, 1, 2)])
    assert packed.tolist() == [[4, -5, 0, 2, -128]]
    assert select.tolist() == [[2, 0, 0, 0, 0]]
    assert keep.tolist() == [[False, True, False, True, True], [False] * 5,
                             [True, False, False, False, False]]
    # groups of different sizes side by side (unused lanes never win)
    packed, select, _ = cc.conflict_prune(w, [(1,), (0, 2)])
    assert packed.tolist() == [[-3, 5, 0, 0, 7], [4, -5, 0, 2, -128]]
    assert select.tolist() == [[0, 0, 0, 0, 0], [1, 0, 0, 0, 0]]


def test_block_grouping_groups_each_block_of_output_channels_on_its_own():
    w = sparse_matrix(48, 20, 0.25, seed=3)
    p = cc.pack(w, 4, 0.5, block=8)
    assert [(b.n0, b.n1) for b in p.blocks] == [(0, 8), (8, 16), (16, 20)]
    for b in p.blocks:
        assert b.groups == cc.group_columns(w[:, b.n0:b.n1] != 0, 4, 0.5)


def test_alpha1_packing_is_the_identity():
    w = sparse_matrix(20, 6, 0.3, seed=4)
    p = cc.pack(w, 1, 0.0)
    assert p.blocks[0].groups == [(c,) for c in range(20)]
    assert (p.dense() == w).all() and (p.blocks[0].select == 0).all()


def test_bad_parameters_raise_value_errors_naming_them():
    with pytest.raises(ValueError, match="alpha"):
        cc.group_columns(np.ones((3, 3), bool), 0, 0.5)
    with pytest.raises(ValueError, match="gamma"):
        cc.pack(np.ones((3, 3)), 2, 1.5)
    with pytest.raises(ValueError, match="alpha must be"):
        CombinedConfig(alpha=0)
    with pytest.raises(ValueError, match="gamma"):
        CombinedConfig(gamma=-0.1)


# --- simulator ---------------------------------------------------------------------------------
def packed_gemm(m, k, n, alpha, gamma, block, seed):
    rng = np.random.default_rng(seed)
    w = sparse_matrix(k, n, 0.3, seed)
    a = np.where(rng.random((m, k)) < 0.6, rng.integers(0, 256, (m, k)), 0)
    bias = rng.integers(-5000, 5000, n)
    mult = rng.integers(1 << 14, 1 << 15, n)
    shift = rng.integers(20, 24, n)
    return sc.PackedGemm(a, cc.pack(w, alpha, gamma, block), bias, mult, shift, seed % 2 == 0)


SIM_CASES = {  # name -> (rows, cols, acc_depth, m, k, n, alpha, gamma, block)
    "4x3-a4": (4, 3, 24, 30, 27, 5, 4, 0.5, 0),
    "2x2-a8-chunks": (2, 2, 8, 20, 40, 3, 8, 0.5, 0),
    "8x8-a2-block": (8, 8, 16, 16, 64, 20, 2, 0.25, 8),
    "3x5-a4-block3": (3, 5, 32, 9, 33, 11, 4, 0.4, 3),
}


@pytest.mark.parametrize("name", SIM_CASES)
def test_combined_step_model_matches_reference_and_vectorised_cycles(name):
    r, c, depth, m, k, n, alpha, gamma, block = SIM_CASES[name]
    cfg = CombinedConfig(rows=r, cols=c, acc_depth=depth, alpha=alpha, gamma=gamma,
                         group_block=block)
    g = packed_gemm(m, k, n, alpha, gamma, block, seed=len(name))
    out, trace = sc.CombinedStepModel(cfg).run(g)
    ref = gemm_reference(g.a, g.packing.dense(), g.bias, g.mult, g.shift, cfg.fxp, g.relu)
    assert (out == ref & cfg.fxp.act_max).all()
    assert trace["cycles"] == sc.layer_cycles(m, g.packing, cfg)
    # stalls change cycles, not results
    out2, trace2 = sc.CombinedStepModel(cfg).run(g, 0.7, 0.6, seed=2)
    assert (out2 == out).all() and trace2["cycles"] > trace["cycles"]


@pytest.mark.parametrize("seed", range(10))
def test_combined_step_model_equals_vectorised_count_on_random_plans(seed):
    """Random array sizes, depths, alpha, gamma and grouping blocks, and pixel counts that
    give full chunks and last chunks of 1 or 2 pixels: the step model's outputs are the
    reference, its cycles the vectorised count, and stalls only add cycles."""
    rng = np.random.default_rng(100 + seed)
    r, c, depth = (int(v) for v in rng.integers(1, 6, 3))
    alpha = int(rng.choice([1, 2, 4, 8]))
    m = int(rng.choice([1, 2, depth, depth + 1, depth + 2, int(rng.integers(1, 3 * depth + 3))]))
    k, n = int(rng.integers(1, 5 * r + 3)), int(rng.integers(1, 3 * c + 2))
    gamma, block = float(rng.choice([0.0, 0.5, 1.0])), int(rng.choice([0, 2]))
    cfg = CombinedConfig(rows=r, cols=c, acc_depth=depth, alpha=alpha, gamma=gamma,
                         group_block=block)
    g = packed_gemm(m, k, n, alpha, gamma, block, seed=seed)
    ref = gemm_reference(g.a, g.packing.dense(), g.bias, g.mult, g.shift, cfg.fxp, g.relu)
    out, trace = sc.CombinedStepModel(cfg).run(g)
    assert (out == ref & cfg.fxp.act_max).all()
    assert trace["cycles"] == sc.layer_cycles(m, g.packing, cfg)
    out2, trace2 = sc.CombinedStepModel(cfg).run(g, 0.6, 0.5, seed=seed)
    assert (out2 == out).all() and trace2["cycles"] >= trace["cycles"]


def test_combined_alpha1_step_model_is_the_dense_step_model():
    cfg = CombinedConfig(rows=4, cols=3, acc_depth=24, alpha=1)
    rng = np.random.default_rng(9)
    w = rng.integers(-128, 128, (27, 5))
    a = rng.integers(0, 256, (30, 27))
    q = dict(bias=rng.integers(-5000, 5000, 5), mult=np.full(5, 20000), shift=np.full(5, 22))
    dense_out, dense_tr = ss.StepModel(cfg.dense()).run(ss.Gemm(a, w, **q), 0.8, 0.7, 1)
    out, tr = sc.CombinedStepModel(cfg).run(sc.PackedGemm(a, sc.identity_packing(w), **q),
                                            0.8, 0.7, 1)
    assert (out == dense_out).all()
    for port in ("cmd", "weights", "acts", "out", "cycles"):
        assert tr[port] == dense_tr[port], port


def test_combined_alpha1_network_simulation_is_the_dense_array(digits):
    from zeroskip.sim import workload

    wl = workload.load("digits", images=2)
    cfg = CombinedConfig(alpha=1)
    dense = ss.simulate_network(wl, cfg.dense())
    comb = sc.simulate_network(wl, cfg)
    for d, c in zip(dense.layers, comb.layers):
        assert c.cycles == d.cycles and c.macs_performed == d.macs_performed
        assert c.extra["speedup_vs_dense"] == 1.0
    for i, spec in enumerate(wl.layers):
        data = wl.layer_data(i)
        assert (sc.layer_outputs(data, spec, cfg.fxp) ==
                ss.layer_outputs(data, spec, cfg.fxp)).all()


def test_combined_layer_outputs_equal_torch_reference_on_pruned_weights(digits):
    from dataclasses import replace

    from zeroskip.sim.workload import LayerData

    layer = digits.layers[2]  # conv3
    x = digits.inputs[2][0]
    p = cc.prune_and_pack(layer.weight_matrix.numpy(), 8, 0.5)
    w = torch.from_numpy(np.ascontiguousarray(p.dense().T.reshape(tuple(layer.weight.shape))))
    pruned = replace(layer, spec=replace(layer.spec, pool=1), weight=w.long())
    data = LayerData(x.numpy(), w.numpy(), layer.bias.numpy(), layer.mult.numpy(),
                     layer.shift.numpy())
    got = sc.layer_outputs(data, pruned.spec, layer.fxp, packing=p)
    assert (got == layer_forward(x, pruned).numpy()).all()


def test_combined_simulation_counts_fewer_tiles_and_select_overhead():
    spec = fc("f", 64, 16)
    p = cc.pack(sparse_matrix(64, 16, 0.15, seed=5), 8, 0.5)
    cfg = CombinedConfig(rows=8, cols=8, alpha=8)
    rep = sc.simulate_layer(spec, p, cfg)
    assert rep.extra["tiles"] == p.tiles(8, 8) < rep.extra["dense_tiles"] == 16
    assert rep.events["mux_select"] == rep.events["mac"] == p.cells
    assert rep.extra["speedup_vs_dense"] > 1 and rep.extra["energy_saving_vs_dense"] > 1
    assert rep.extra["cell_utilization"] == p.nnz / p.cells


def test_shape_only_network_packs_random_pruned_matrices():
    from zeroskip.sim import workload

    wl = workload.load("alexnet")
    wl.layers = wl.layers[2:4]  # two small layers keep this fast
    cfg = CombinedConfig(alpha=8, gamma=0.5)
    rep = sc.simulate_network(wl, cfg)
    assert any("random int8 matrix pruned iid to 75.0%" in n for n in rep.notes)
    assert rep.summary["column_reduction"] > 1


def test_shape_only_weight_draws_do_not_depend_on_the_chunk_size():
    """The chunked in-place draws give the matrix of one whole-matrix ``rng.random`` call."""
    k, n, p = 37, 29, 0.75
    rng = np.random.default_rng(5)
    w0 = rng.integers(1, 128, (k, n), dtype=np.int16)
    expected = np.where(rng.random((k, n), dtype=np.float32) < 0.5, -w0, w0)
    expected[rng.random((k, n), dtype=np.float32) < p] = 0
    rng = np.random.default_rng(5)
    w = rng.integers(1, 128, (k, n), dtype=np.int16)
    sc._draw_where(rng, w, 0.5, lambda part, m: np.multiply(part, 1 - 2 * m.view(np.int8),
                                                            out=part), chunk=100)
    sc._draw_where(rng, w, p, lambda part, m: np.multiply(part, ~m, out=part), chunk=7)
    assert (w == expected).all()


# --- the joint optimisation on the digits CNN ---------------------------------------------------
def test_joint_optimisation_packs_3x_with_at_most_1pp_accuracy_loss():
    """The issue's acceptance figure: alpha = 8, gamma = 0.5 on the bundled digits CNN."""
    res = cc.joint_optimize(8, 0.5)
    layers = cc.joint_quant_layers(res)
    packings = cc.joint_packings(res, layers)
    for p, q in zip(packings, layers):
        # conflict-free after retraining and quantisation, every group within alpha
        assert all(len(g) <= 8 for b in p.blocks for g in b.groups)
        assert (p.dense() == q.weight_matrix.numpy()).all()
    columns = sum(p.k for p in packings)
    packed = sum(p.packed_columns for p in packings)
    assert columns / packed >= 3
    assert res.accuracy_before - res.accuracy_after <= 0.01
    # the accuracy is the quantised net's own: recompute it independently
    from zeroskip.models import digits

    data = digits.load_data()
    assert digits.int_accuracy(layers, data.x_test, data.y_test) == res.accuracy_after


def test_combine_cli_writes_the_figures(tmp_path):
    from zeroskip.cli import main

    out = tmp_path / "c.json"
    assert main(["combine", "--network", "digits", "--alpha", "8", "--gamma", "0.5",
                 "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    for key in ("column_reduction", "tile_reduction", "accuracy_before", "accuracy_after",
                "accuracy_drop_pp", "layers", "block_comparison"):
        assert key in d
    assert d["column_reduction"] >= 3 and d["accuracy_drop_pp"] <= 1.0
    assert [l["name"] for l in d["layers"]] == ["conv1", "conv2", "conv3", "fc1", "fc2"]


def test_combine_cli_rejects_bad_alpha_in_one_line(capsys):
    from zeroskip.cli import main

    assert main(["combine", "--alpha", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("zeroskip: error:") and "alpha" in err and err.count("\n") == 1
