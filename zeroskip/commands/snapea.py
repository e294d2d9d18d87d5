"""SnaPEA subcommands: ``zeroskip snapea-tune`` (the (Th, n) optimiser's trade-off curve on
the digits net) and the ``--mode``/``--budget`` options of ``zeroskip sim snapea``."""

from __future__ import annotations

import time

DEFAULT_BUDGETS = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0)


def add_parser(sub) -> None:
    t = sub.add_parser("snapea-tune", help="SnaPEA: choose predictive (Th, n) per kernel on "
                       "the digits net under accuracy budgets; print the trade-off curve")
    t.add_argument("--budget", type=float, action="append",
                   help="accuracy-loss budget in percentage points (repeatable; default "
                   f"{', '.join(f'{b:g}' for b in DEFAULT_BUDGETS)})")
    t.add_argument("--check-every", type=int, default=1, help="MACs between sign checks")
    t.add_argument("--json", help="also write the curve (and chosen parameters) as JSON")
    t.set_defaults(func=cmd_tune)

    s = sub.choices["sim"]
    s.add_argument("--mode", choices=("exact", "predictive", "dense"), default=None,
                   help="snapea only: exact (default), predictive (needs --budget, digits), "
                   "or dense (termination off: the block's baseline)")
    s.add_argument("--budget", type=float, default=None,
                   help="snapea --mode predictive: accuracy-loss budget, percentage points")
    plain = s.get_default("func")
    s.set_defaults(func=lambda args: cmd_sim(args, plain))


def _tuned(budget: float, check_every: int):
    from zeroskip.models.snapea_tune import digits_tuner

    tuner = digits_tuner(check_every)
    return tuner, tuner.tune(budget)


def cmd_tune(args) -> None:
    from rich.table import Table

    from zeroskip.models import digits
    from zeroskip.models.snapea_tune import digits_test_accuracy, digits_tuner
    from zeroskip.cli import _console, check_out_file, write_json

    out = check_out_file(args.json) if args.json else None
    budgets = args.budget or list(DEFAULT_BUDGETS)
    for b in budgets:
        if not 0 <= b <= 100:
            raise ValueError(f"--budget must be in 0..100 percentage points, not {b!r}")
    from zeroskip.hw.config import SnaPEAConfig
    SnaPEAConfig(check_every=args.check_every)  # validates
    t0 = time.perf_counter()
    w = digits.load_workload("kl")
    tuner = digits_tuner(args.check_every, w)
    rows = []
    exact_held = digits_test_accuracy(w.layers, None, "held_out")
    exact_all = digits_test_accuracy(w.layers, None)
    for b in budgets:
        r = tuner.tune(b)
        rows.append({**r.to_dict(),
                     "held_out_acc": digits_test_accuracy(w.layers, r.params, "held_out"),
                     "test_acc": digits_test_accuracy(w.layers, r.params),
                     "params": {w.layers[i].spec.name: p.to_dict()
                                for i, p in enumerate(r.params) if p is not None}})
    dt = time.perf_counter() - t0
    t = Table(title=f"SnaPEA predictive mode on the digits net: MACs vs accuracy "
                    f"({dt:.1f} s; exact mode: validation {tuner.acc_exact:.2%}, held-out "
                    f"{exact_held:.2%}, test {exact_all:.2%})")
    for col in ("budget", "validation acc", "held-out acc", "test acc", "MACs vs exact",
                "MACs saved", "layers (n/nnz, miss rate)"):
        t.add_column(col, justify="left" if col.startswith("layers") else "right")
    for r in rows:
        choice = ", ".join(f"{k} ({f:g}, {e:g})" for k, (f, e) in r["choice"].items()) or "-"
        t.add_row(f"{r['budget_pct']:g} %", f"{r['calib_acc']:.2%}", f"{r['held_out_acc']:.2%}",
                  f"{r['test_acc']:.2%}", f"{r['macs']:,} / {r['macs_exact']:,}",
                  f"{r['macs_saved_vs_exact']:.1%}", choice)
    _console().print(t)
    print("note: MACs are the block's MACs on the profiling windows (64 calibration images, "
          "all layers, exact termination included) relative to exact mode; validation = half "
          "of the test split, held-out = the other half (never used for tuning)")
    if out:
        write_json(out, {"exact": {"validation_acc": tuner.acc_exact, "held_out_acc": exact_held,
                                   "test_acc": exact_all}, "curve": rows})


def cmd_sim(args, plain) -> None:
    """``zeroskip sim``: SnaPEA gets its modes; every other block runs unchanged."""
    from zeroskip.cli import CliError

    if args.block != "snapea":
        if args.mode is not None or args.budget is not None:
            raise CliError("--mode and --budget apply to block snapea only")
        return plain(args)
    from zeroskip.cli import (_console, check_out_file, check_workload_args, config_from_args,
                              load_workload, print_layer_table, write_json)
    from zeroskip.sim import snapea
    from zeroskip.sim.energy import load_table

    mode = args.mode or "exact"
    if mode != "predictive" and args.budget is not None:
        raise CliError("--budget applies to --mode predictive only")
    cfg = config_from_args("snapea", args)
    table = load_table(args.energy_table)
    out = check_out_file(args.json) if args.json else None
    check_workload_args(args.network, args.images)
    if mode == "predictive" and args.network != "digits":
        raise CliError("predictive mode needs calibration data to choose (Th, n): use "
                       "--network digits")
    wl = load_workload(args.network, args.images)
    params, tuning = None, None
    if mode == "predictive":
        if not wl.real:
            raise CliError("predictive mode needs calibration data to choose (Th, n): use "
                           "--network digits")
        if args.budget is None:
            raise CliError("--mode predictive needs --budget PP (the accuracy loss allowed, in "
                           "percentage points, e.g. --budget 1)")
        budget = args.budget
        tuner, res = _tuned(budget, cfg.check_every)
        params, tuning = res.params, res.to_dict()
    t0 = time.perf_counter()
    report = snapea.simulate_network(wl, cfg, table, mode=mode, params=params)
    dt = time.perf_counter() - t0
    print_layer_table(report, f"snapea ({mode}) on {args.network} ({dt:.2f} s)")
    print_snapea_table(report, _console())
    for note in report.notes:
        print(f"note: {note}")
    if report.accuracy is not None:
        print(f"note: test accuracy {report.accuracy:.2%}")
    if tuning:
        print(f"note: predictive parameters for a {tuning['budget_pct']:g} % budget: "
              f"{tuning['choice']} (layer: (n / non-zero weights, miss rate))")
    if out:
        d = report.to_dict()
        if tuning:
            d["tuning"] = tuning
        write_json(out, d)


def print_snapea_table(report, console) -> None:
    from rich.table import Table

    t = Table(title="early termination per layer (against this block with termination off)")
    for col in ("layer", "mode", "windows", "stopped exact", "stopped predicted", "MACs done",
                "of block dense", "lane util", "lane balance", "speedup", "energy ratio", "on-chip",
                "index energy"):
        t.add_column(col, justify="left" if col in ("layer", "mode") else "right")
    for l in report.layers:
        e = l.extra
        t.add_row(l.name, e["mode"], f"{e['windows']:,}",
                  f"{e['windows_terminated_exact'] / e['windows']:.1%}",
                  f"{e['windows_terminated_predicted'] / e['windows']:.1%}",
                  f"{l.macs_performed:,}", f"{l.macs_performed / e['macs_block_dense']:.1%}",
                  f"{e['lane_utilization']:.1%}", f"{e['lane_balance']:.1%}",
                  f"{e['speedup']:.2f}x", f"{e['energy_ratio']:.2f}x",
                  f"{e['onchip_energy_ratio']:.2f}x", f"{e['index_energy_share']:.1%}")
    c = sum(l.extra["baseline_cycles"] for l in report.layers)
    e = sum(l.extra["baseline_energy_pj"] for l in report.layers)
    o = sum(l.extra["baseline_onchip_energy_pj"] for l in report.layers)
    tot = report.totals()
    onchip = tot["energy_pj"] - tot["energy_breakdown_pj"]["dram"]
    t.add_row("total", "", f"{sum(l.extra['windows'] for l in report.layers):,}",
              f"{sum(l.extra['windows_terminated_exact'] for l in report.layers) / sum(l.extra['windows'] for l in report.layers):.1%}",
              f"{sum(l.extra['windows_terminated_predicted'] for l in report.layers) / sum(l.extra['windows'] for l in report.layers):.1%}",
              f"{tot['macs_performed']:,}",
              f"{tot['macs_performed'] / sum(l.extra['macs_block_dense'] for l in report.layers):.1%}",
              "", "", f"{c / tot['cycles']:.2f}x", f"{e / tot['energy_pj']:.2f}x",
              f"{o / onchip:.2f}x",
              f"{sum(l.extra['index_energy_pj'] for l in report.layers) / tot['energy_pj']:.1%}")
    console.print(t)
