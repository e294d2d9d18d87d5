"""SnaPEA early termination: reordering, the exact and predictive cut-off rule against slow
independent oracles and the integer torch reference, and the vectorised simulator against
the step-per-cycle model."""

import numpy as np
import pytest
import torch

from zeroskip.hw.config import SnaPEAConfig
from zeroskip.models.reference import layer_forward
from zeroskip.models.snapea import LayerParams, reorder, snapea_layer_forward, termination
from zeroskip.models.workloads import ConvLayer, fc
from tb.cases import random_layer


def slow_oracle(a_row, w, bias, spec_n=0, th=0, check_every=1):
    """One window, one kernel, tap by tap, from the written rule (independent of the code)."""
    nz = [i for i in range(len(w)) if w[i] != 0]
    if spec_n:
        spec = sorted(nz, key=lambda i: (-abs(w[i]), i))[:spec_n]
    else:
        spec = []
    rest = [i for i in nz if i not in spec]
    pos = sorted([i for i in rest if w[i] > 0], key=lambda i: (-w[i], i))
    neg = sorted([i for i in rest if w[i] < 0], key=lambda i: (w[i], i))
    order = spec + pos + neg or [0]
    acc = int(bias)
    for j, i in enumerate(order):
        acc += int(a_row[i]) * int(w[i])
        done = j + 1
        if spec_n and done == len(spec) and acc < th:
            return done, "predicted"
        remaining_nonpos = all(w[q] <= 0 for q in order[done:])
        if remaining_nonpos and done % check_every == 0 and acc < 0 and done < len(order):
            return done, "exact"
    return len(order), "full"


def kernel_set(rng, k):
    """Random kernels including the corner cases: zero weights, all-positive, all-negative,
    all-zero, and a single non-zero weight."""
    w = rng.integers(-128, 128, (10, k))
    w[rng.random(w.shape) < 0.2] = 0
    w[1] = np.abs(w[1]) + 1  # all positive
    w[2] = -np.abs(w[2]) - 1  # all negative
    w[3] = 0  # all zero
    w[4] = 0
    w[4, k // 2] = -5
    return w


def test_snapea_reordering_is_a_permutation_of_the_nonzero_weights():
    rng = np.random.default_rng(0)
    w = kernel_set(rng, 27)
    for params in (None, LayerParams(rng.integers(0, 12, 10), np.zeros(10, int))):
        o = reorder(w, params)
        for n in range(len(w)):
            idx = o.index[n, :o.taps[n]]
            nz = np.flatnonzero(w[n])
            if len(nz):
                assert sorted(idx.tolist()) == nz.tolist()
            else:
                assert o.taps[n] == 1
            assert (o.weight[n, :o.taps[n]] == w[n, idx]).all()
            # after exact_from every weight is <= 0, and the tap before it is positive
            assert (o.weight[n, o.exact_from[n]:o.taps[n]] <= 0).all()
        # reordering in chunks of kernels (as for large FC layers) gives the same order
        c = reorder(w, params, chunk_terms=3 * w.shape[1])
        for name in ("index", "weight", "taps", "exact_from", "spec_n", "threshold"):
            assert (getattr(c, name) == getattr(o, name)).all(), name
        if params is None:
            # exact order: positives (descending) then negatives (most negative first)
            ws = o.weight[0, :o.taps[0]]
            p = ws[:o.exact_from[0]]
            assert (p > 0).all() and (np.diff(p) <= 0).all()
            assert (np.diff(ws[o.exact_from[0]:]) >= 0).all()


@pytest.mark.parametrize("path", ["blocked", "tail-walk", "cumsum"])
@pytest.mark.parametrize("check_every", [1, 3])
@pytest.mark.parametrize("mode", ["exact", "predictive"])
def test_snapea_termination_point_matches_slow_oracle(mode, check_every, path):
    """Both vectorised paths (per-kernel walk of the non-positive tail for many windows,
    all partial sums at once for few) against the tap-by-tap oracle."""
    rng = np.random.default_rng(check_every)
    k = 18
    w = kernel_set(rng, k)
    a = rng.integers(0, 256, (40, k))
    a[rng.random(a.shape) < 0.4] = 0
    a[0] = 0
    bias = rng.integers(-20000, 20000, len(w))
    bias[5] = -3  # small negative bias: negative before the negative phase
    bias[6] = -100000  # very negative bias
    params = None
    if mode == "predictive":
        params = LayerParams(rng.integers(0, 8, len(w)), rng.integers(-5000, 5000, len(w)))
    o = reorder(w, params)
    t = termination(a, w.T, bias, o, check_every, few_windows=10**6 if path == "cumsum" else 0,
                    method="walk" if path == "tail-walk" else "blocked")
    for n in range(len(w)):
        for i in range(len(a)):
            sn = 0 if params is None else int(params.spec_n[n])
            th = 0 if params is None else int(params.threshold[n])
            macs, how = slow_oracle(a[i], w[n], bias[n], sn, th, check_every)
            assert t.macs[i, n] == macs, (n, i)
            assert t.exact[i, n] == (how == "exact"), (n, i)
            assert t.predicted[i, n] == (how == "predicted"), (n, i)


@pytest.mark.parametrize("amax,wmax,k,runs", [
    (255, 127, 300, 1),  # one float32 product
    (255, 128, 3000, 6),  # K cut into runs that each keep every partial sum below 2**24
    (65535, 32767, 40, None),  # 16-bit data: float64
])
def test_exact_matmul_is_exact_in_float32_where_provable(amax, wmax, k, runs, monkeypatch):
    """``exact_matmul`` against int64 arithmetic, with the inputs at their extremes (all
    products of one sign, so a float32 partial sum past 2**24 would be rounded), and the
    number of float32 runs it uses (None: the float64 fallback)."""
    from zeroskip.models import snapea

    rng = np.random.default_rng(k)
    a = np.full((50, k), amax, np.int64)
    a[rng.random(a.shape) < 0.1] = int(amax * 0.9)
    w = rng.choice([-wmax, wmax, 1], (k, 9))
    w[:, 0] = wmax
    used = []
    real = torch.Tensor.__matmul__
    monkeypatch.setattr(torch.Tensor, "__matmul__",
                        lambda x, y: used.append(x.dtype) or real(x, y))
    got = snapea.exact_matmul(a, w)
    assert got.dtype == np.int64 and (got == a @ w).all()
    if runs is None:
        assert used == [torch.float64]
    else:
        assert used == [torch.float32] * runs


@pytest.mark.parametrize("check_every", [1, 2, 5])
@pytest.mark.parametrize("mode", ["exact", "predictive"])
def test_snapea_blocked_termination_equals_full_partial_sums(mode, check_every):
    """The block-sum path (default for many windows) against every partial sum computed at
    once (``_termination_by_cumsum``) on random layers with negative biases, zero weights,
    all-positive/all-negative/all-zero kernels, and run counts below and above the tail
    length; the tail walk as a third implementation."""
    from zeroskip.models.snapea import _termination_blocked, _termination_by_cumsum

    for seed in range(3):
        rng = np.random.default_rng(100 + seed)
        k = int(rng.integers(5, 60))
        w = kernel_set(rng, k)
        a = rng.integers(0, 256, (300, k))
        a[rng.random(a.shape) < 0.5] = 0
        bias = rng.integers(-30000, 30000, len(w))
        bias[5], bias[6] = -1, -10**6
        params = None
        if mode == "predictive":
            params = LayerParams(rng.integers(0, 8, len(w)), rng.integers(-5000, 5000, len(w)))
        o = reorder(w, params)
        ref = termination(a, w.T, bias, o, check_every, few_windows=10**6)
        walk = termination(a, w.T, bias, o, check_every, few_windows=0, method="walk")
        # the few-window path's suffix shortcut against every partial sum checked
        every = _termination_by_cumsum(a, bias, o, check_every, True)
        for name in ("macs", "exact", "predicted", "acc"):
            assert (getattr(every, name) == getattr(ref, name)).all(), name
        for blocks in (1, 3, 8, 64):
            got = _termination_blocked(a, w.T, bias, o, check_every, True, blocks=blocks,
                                       chunk_bytes=1 << 14, gather_terms=64)
            for name in ("macs", "exact", "predicted", "acc"):
                assert (getattr(got, name) == getattr(ref, name)).all(), (name, blocks)
                assert (getattr(walk, name) == getattr(ref, name)).all(), name
        assert ref.exact.any()


def test_snapea_run_layer_counts_every_window_by_default():
    """No sampling unless asked for: on a medium layer (more windows than the all-partial-
    sums threshold) ``run_layer``'s per-window MAC counts equal a per-window, per-kernel
    count from every partial sum, and the cycles follow from all of them."""
    from zeroskip.models.reference import im2col
    from zeroskip.sim.snapea import layer_cycles, run_layer

    spec = ConvLayer("c", 16, 24, 24, 24, k=3, pad=1)
    layer, x = random_layer(spec, seed=7, density=0.5)
    cfg = SnaPEAConfig(lanes=8)
    run = run_layer(x.numpy(), spec, layer.weight.numpy(), layer.bias.numpy(),
                    layer.mult.numpy(), layer.shift.numpy(), cfg)
    assert run.sample == 1 and run.t.macs.shape == (spec.out_h * spec.out_w, spec.out_ch)
    o = reorder(layer.weight.numpy())
    a = im2col(x, spec).numpy()
    ref = termination(a, layer.weight_matrix.numpy(), layer.bias.numpy(), o, cfg.check_every,
                      few_windows=10**6)
    assert (run.t.macs == ref.macs).all() and run.t.exact.sum() > 0
    assert run.cyc == layer_cycles(spec, cfg, ref.macs, ref.zeroed, o.taps)
    # taps issued and discarded after an early stop count as multiplier work
    assert run.events["mac"] == int(ref.macs.sum()) + run.cyc["squashed"]


def test_snapea_exact_mode_never_changes_an_output():
    for seed, spec in enumerate([ConvLayer("c", 6, 8, 7, 7, k=3, pad=1),
                                 ConvLayer("s", 4, 5, 9, 9, k=3, stride=2),
                                 fc("f", 40, 9)]):
        layer, x = random_layer(spec, seed=seed, density=0.5)
        # mix negative and positive biases
        ref = layer_forward(x, layer)
        assert torch.equal(snapea_layer_forward(x, layer), ref)
        from zeroskip.models.reference import im2col
        from zeroskip.models.snapea import block_outputs
        a = im2col(x, spec).numpy()
        o = reorder(layer.weight.numpy())
        t = termination(a, layer.weight_matrix.numpy(), layer.bias.numpy(), o)
        got = block_outputs(t, layer.mult.numpy(), layer.shift.numpy(), layer.fxp)
        assert (got == ref.reshape(spec.out_ch, -1).T.numpy()).all()
        assert t.exact.any()


SIM_CONFIGS = [SnaPEAConfig(lanes=1, max_taps=64, act_depth=128, max_windows=8),
               SnaPEAConfig(lanes=3, max_taps=64, act_depth=200, max_windows=12, check_every=2),
               SnaPEAConfig(lanes=4, max_taps=512, act_depth=4096, max_windows=64),
               # kernels in segments, rows in column tiles
               SnaPEAConfig(lanes=3, max_taps=7, act_depth=60, max_windows=5, check_every=3)]
SIM_SHAPES = [ConvLayer("c", 4, 5, 7, 6, k=3, pad=1), ConvLayer("s", 2, 4, 9, 9, k=3, stride=2),
              fc("f", 30, 7), ConvLayer("p", 3, 2, 3, 3, k=1)]


def _step_model_and_count_agree(layer, x, cfg, params, terminate):
    """Run a layer on the step model and the vectorised count: both give the reference's
    outputs, the same cycles and the same MACs. Returns (count, step stats, commands)."""
    from zeroskip.sim.snapea import StepModel, layer_commands, run_layer

    spec = layer.spec
    w, b, m, s = (t.numpy() for t in (layer.weight, layer.bias, layer.mult, layer.shift))
    cmds = layer_commands(x.numpy(), spec, w, b, m, s, cfg, params, terminate)
    out, stats = StepModel(cfg).run(cmds, spec.out_h * spec.out_w, spec.out_ch)
    run = run_layer(x.numpy(), spec, w, b, m, s, cfg, params, terminate)
    ref = snapea_layer_forward(x, layer, params).reshape(spec.out_ch, -1).T.numpy()
    assert (out == ref).all() and (run.outputs == ref).all()
    assert run.cyc["cycles"] == stats["cycles"]
    assert int(run.t.macs.sum()) == stats["macs"]
    return run, stats, cmds


@pytest.mark.parametrize("mode", ["exact", "predictive", "dense"])
@pytest.mark.parametrize("cfg", SIM_CONFIGS,
                         ids=lambda c: f"l{c.lanes}t{c.max_taps}a{c.act_depth}w{c.max_windows}"
                         f"k{c.check_every}")
@pytest.mark.parametrize("spec", SIM_SHAPES, ids=lambda s: s.name)
def test_snapea_vectorised_simulator_matches_step_model_and_reference(spec, cfg, mode):
    layer, x = random_layer(spec, seed=3, fxp=cfg.fxp, density=0.5)
    rng = np.random.default_rng(1)
    params = None
    if mode == "predictive":
        params = LayerParams(rng.integers(0, 8, spec.out_ch), rng.integers(-4000, 4000, spec.out_ch))
    run, stats, _ = _step_model_and_count_agree(layer, x, cfg, params, mode != "dense")
    if mode == "dense":
        assert run.cyc["cycles"] == run.base_cyc["cycles"]
    else:
        assert run.cyc["cycles"] <= run.base_cyc["cycles"]


def test_snapea_exact_mode_on_digits_keeps_outputs_and_saves_macs(digits):
    """Real activations of the trained net: every eligible layer's block outputs equal the
    integer reference and some windows stop early."""
    from zeroskip.sim.snapea import run_layer

    cfg = SnaPEAConfig(lanes=4)
    for i, layer in enumerate(digits.layers):
        x = digits.inputs[i][0]
        spec = layer.spec
        term = i > 0 and spec.relu
        run = run_layer(x.numpy(), spec, layer.weight.numpy(), layer.bias.numpy(),
                        layer.mult.numpy(), layer.shift.numpy(), cfg, None, term)
        from dataclasses import replace
        nopool = replace(layer, spec=replace(spec, pool=1))
        ref = layer_forward(x, nopool).reshape(spec.out_ch, -1).T.numpy()
        assert (run.outputs == ref).all(), spec.name
        if term:
            assert run.t.exact.any() and run.cyc["cycles"] < run.base_cyc["cycles"]


def test_snapea_sampled_estimate_is_close_to_exact_count():
    """The window sampling used for very large layers estimates MACs and cycles closely."""
    from zeroskip.sim.snapea import run_layer

    spec = ConvLayer("c", 8, 16, 20, 20, k=3, pad=1)
    layer, x = random_layer(spec, seed=4, density=0.5)
    args = (x.numpy(), spec, layer.weight.numpy(), layer.bias.numpy(), layer.mult.numpy(),
            layer.shift.numpy(), SnaPEAConfig(lanes=4))
    exact = run_layer(*args, limit=None)
    est = run_layer(*args, limit=spec.macs // 4)
    assert est.sample == 4
    assert abs(est.cyc["cycles"] / exact.cyc["cycles"] - 1) < 0.03
    assert abs(est.events["mac"] / exact.events["mac"] - 1) < 0.03


def test_snapea_config_and_driver_errors_name_the_fix():
    from zeroskip.sim.snapea import plan_layer

    with pytest.raises(ValueError, match="lanes must be"):
        SnaPEAConfig(lanes=0)
    with pytest.raises(ValueError, match="--act-depth 576 or more"):
        plan_layer(ConvLayer("big", 64, 8, 30, 30, k=3, pad=1), SnaPEAConfig(act_depth=500))


def test_snapea_tiles_cover_every_window_once_and_fit_the_buffers():
    """Whole rows where they fit, equal column tiles where a row's input does not; every
    tile's input fits the input buffer and its windows the banks."""
    from zeroskip.sim.snapea import plan_layer

    for spec, cfg in [(ConvLayer("c", 64, 8, 224, 224, k=3, pad=1), SnaPEAConfig()),
                      (ConvLayer("s", 3, 8, 227, 227, k=11, stride=4), SnaPEAConfig()),
                      (ConvLayer("t", 4, 4, 7, 8, k=3, pad=1),
                       SnaPEAConfig(act_depth=60, max_windows=5))]:
        tiles = plan_layer(spec, cfg)
        seen = np.zeros(spec.out_h * spec.out_w, int)
        for t in tiles:
            seen[t.pixels(spec.out_w)] += 1
            assert spec.in_ch * t.in_rows * t.in_cols <= cfg.act_depth
            assert t.windows <= cfg.max_windows
        assert (seen == 1).all()
    wide = plan_layer(ConvLayer("c", 64, 8, 224, 224, k=3, pad=1), SnaPEAConfig())
    assert {t.width for t in wide} == {112}  # 64 x 3 x 226 inputs do not fit 32768


def test_snapea_default_runs_vgg16_fc6_in_segments():
    """VGG-16's fc6 kernels (25088 taps) exceed the default weight buffers (512): the
    driver splits them into segments and the simulator counts them."""
    from zeroskip.models.workloads import vgg16
    from zeroskip.sim.snapea import layer_cycles, segments

    cfg = SnaPEAConfig()
    fc6 = next(l for l in vgg16() if l.name == "fc6")
    n = -(-25088 // cfg.max_taps)
    assert cfg.max_taps < 25088 and len(segments(fc6.gemm[1], cfg)) == n
    taps = np.full(fc6.out_ch, fc6.gemm[1])
    cyc = layer_cycles(fc6, cfg, taps[None], np.zeros((1, fc6.out_ch), bool), taps)
    assert cyc["segments"] == n * fc6.out_ch // cfg.lanes
    assert cyc["compute_cycles"] == taps.sum() // cfg.lanes


def test_snapea_tuner_respects_the_budget_on_validation(digits):
    """The optimiser's choice keeps validation accuracy within the budget and saves MACs
    against exact mode; a larger budget never saves fewer."""
    from zeroskip.models.snapea_tune import digits_tuner

    tuner = digits_tuner()
    saved = []
    for budget in (0.0, 3.0):
        r = tuner.tune(budget)
        assert r.calib_acc >= r.calib_acc_exact - budget / 100 - 1e-9
        assert tuner.accuracy(r.params) == r.calib_acc
        saved.append(r.macs_exact - r.macs)
    assert 0 < saved[0] <= saved[1]


@pytest.mark.parametrize("mode", ["exact", "predictive", "dense"])
@pytest.mark.parametrize("cfg", [SnaPEAConfig(lanes=8, max_taps=7, act_depth=400, max_windows=64,
                                              check_every=2),
                                 SnaPEAConfig(lanes=6, max_taps=64, act_depth=400,
                                              max_windows=64)],
                         ids=["segments", "one-segment"])
def test_snapea_idle_lanes_take_bands_of_the_tile(cfg, mode):
    """A group with fewer kernels than lanes: the idle lanes compute the same kernels on other
    bands of the tile's rows (lane ``b * kernels + j``). Outputs, MACs and cycles of the
    step model, the vectorised count and the reference agree, the group's time is the
    slowest band's, and the lanes do not idle."""
    from zeroskip.sim.snapea import bands_of, plan_layer

    spec = ConvLayer("b", 3, 2, 8, 8, k=3, pad=1)
    layer, x = random_layer(spec, seed=9, fxp=cfg.fxp, density=0.5)
    rng = np.random.default_rng(2)
    params = (LayerParams(rng.integers(1, 8, 2), rng.integers(-4000, 4000, 2))
              if mode == "predictive" else None)
    tiles = plan_layer(spec, cfg)
    assert all(bands_of(t, 2, cfg) > 1 for t in tiles)
    run, stats, cmds = _step_model_and_count_agree(layer, x, cfg, params, mode != "dense")
    assert {c.lanes_used for c in cmds} == {2 * bands_of(tiles[0], 2, cfg)}
    assert run.cyc["squashed"] == stats["squashed"]


def test_snapea_index_is_counted_as_stored_once_per_batch():
    """The weight/index stream in DRAM: a header of two tap counts per kernel, then per tap
    the weight and the tap's position in the kernel at the narrowest width; read from DRAM
    for the first image of a batch only, and its index share priced."""
    from zeroskip.sim.snapea import index_bits, index_stream_bits, run_layer, simulate_layer
    from zeroskip.sim.workload import LayerData

    spec = ConvLayer("c", 16, 8, 6, 6, k=3, pad=1)  # K = 144: 8-bit positions
    layer, x = random_layer(spec, seed=3, density=0.5)
    cfg = SnaPEAConfig(lanes=4)
    assert index_bits(spec) == 8 and index_bits(fc("f", 129, 3)) == 8
    o = reorder(layer.weight.numpy())
    bits, idx = index_stream_bits(spec, o, cfg.fxp)
    assert idx == int(o.taps.sum()) * 8
    assert bits == 8 * 2 * 8 + int(o.taps.sum()) * (8 + 8)
    args = (x.numpy(), spec, layer.weight.numpy(), layer.bias.numpy(), layer.mult.numpy(),
            layer.shift.numpy(), cfg)
    first, later = run_layer(*args), run_layer(*args, weights_from_dram=False)
    assert (first.events["dram_byte"] - later.events["dram_byte"]
            == -(-bits // 8) + 4 * spec.out_ch)
    assert later.index_events["dram_byte"] == 0 < first.index_events["dram_byte"]
    datas = [LayerData(x.numpy(), *(t.numpy() for t in (layer.weight, layer.bias, layer.mult,
                                                         layer.shift)))] * 2
    rep = simulate_layer(spec, datas, cfg)
    assert 0 < rep.extra["index_energy_share"] < 1


def test_snapea_tuning_uses_training_images_only():
    """Profiling, tuning and validation images are disjoint parts of the training split
    (after the quantiser's calibration images); the validation check is a 90 % upper bound,
    so a budget of 0 never passes it and a few changed classes in 400 pass 3 %."""
    from zeroskip.models import digits
    from zeroskip.models.snapea_tune import (PROFILE_IMAGES, digits_split, holds,
                                             upper_bound)

    tune, val = digits_split()
    n = len(digits.load_data().y_train)
    first = max(PROFILE_IMAGES, digits.CALIBRATION_IMAGES)
    assert len(set(tune) | set(val)) == len(tune) + len(val)
    assert min(tune.min(), val.min()) >= first and max(tune.max(), val.max()) < n
    assert upper_bound(0.0, 400) > 0 and upper_bound(0.01, 400) > 0.01
    stats = {"accuracy": 0.995, "accuracy_exact": 1.0, "agreement": 0.995, "images": 400}
    assert holds(stats, 3.0) and not holds(stats, 0.5)
    assert not holds({**stats, "accuracy": 1.0, "agreement": 1.0}, 0.0)


def test_snapea_dispatch_study_orders_the_schemes():
    """``dispatch_study``: its static figure is the block's cycle count, a queue of
    (window, kernel) pairs is never slower than static dispatch nor faster than perfect
    balance, dropping the squash never costs cycles, and the fixed cycles bound the saving."""
    from zeroskip.sim import workload
    from zeroskip.sim.snapea import dispatch_study, simulate_network

    layers = [ConvLayer("a", 3, 6, 8, 8, pad=1), ConvLayer("b", 6, 12, 8, 8, pad=1),
              ConvLayer("c", 12, 5, 8, 8, pad=1)]
    wl = workload.shape_only("small", layers)
    cfg = SnaPEAConfig(lanes=8, act_depth=2048, max_windows=64)
    got = dispatch_study(wl, cfg)
    sims = [simulate_network(wl, cfg, mode=m, systolic=False) for m in ("dense", "exact")]
    assert got["static"]["cycles_dense"] == sims[0].totals()["cycles"]
    assert got["static"]["cycles"] == sims[1].totals()["cycles"]
    for q in ("squash", "no_squash"):
        queue, balanced = got[f"queue_{q}"], got[f"balanced_{q}"]
        assert balanced["cycles"] <= queue["cycles"] <= got["static"]["cycles"]
        assert balanced["cycles_dense"] <= queue["cycles_dense"]
        # at best every saved MAC is a saved cycle of a lane, the fixed cycles unchanged
        bound = balanced["macs_saved"] * (1 - got["fixed_share"])
        assert balanced["cycles_saved"] <= bound + 1e-3
    assert got["queue_no_squash"]["cycles"] <= got["queue_squash"]["cycles"]
    assert got["queue_squash"]["macs_saved"] > 0 and 0 < got["fixed_share"] < 1
