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

    sim = sub.choices["sim"]
    s = sim.block_parsers["snapea"]
    s.add_argument("--mode", choices=("exact", "predictive", "dense"), default=None,
                   help="exact (default), predictive (needs --budget, digits), or dense "
                   "(termination off: the block's baseline)")
    s.add_argument("--budget", type=float, default=None, metavar="PP",
                   help="--mode predictive: the accuracy loss allowed, in percentage points")
    plain = sim.get_default("func")
    sim.set_defaults(func=lambda args: cmd_sim(args, plain))


def _tuned(budget: float, check_every: int, workload=None):
    from zeroskip.models.snapea_tune import honest_tuning

    return honest_tuning(budget, check_every, workload)


def cmd_tune(args) -> None:
    from rich.table import Table

    import torch

    from zeroskip.models import digits
    from zeroskip.models.snapea_tune import (Validator, digits_split, digits_tuner,
                                             honest_tuning)
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
    _, val = digits_split()
    v = torch.from_numpy(val)
    validator = Validator(w.layers, w.data.x_train[v], w.data.y_train[v])
    rows = []
    for b in budgets:
        h = honest_tuning(b, args.check_every, w, tuner, validator)
        rows.append({**h.to_dict(),
                     "params": {w.layers[i].spec.name: p.to_dict()
                                for i, p in enumerate(h.params) if p is not None}})
    dt = time.perf_counter() - t0
    exact_test = rows[0]["accuracy_test_exact"] if rows else float("nan")
    t = Table(title=f"SnaPEA predictive mode on the digits net: MACs vs accuracy "
                    f"({dt:.1f} s; exact mode: test {exact_test:.2%})")
    for col in ("budget", "margin", "tuning agreement", "validation agreement",
                "validation acc", "test acc", "test loss", "MACs vs exact", "MACs saved",
                "layers (n/nnz, miss rate)"):
        t.add_column(col, justify="left" if col.startswith("layers") else "right")
    for r in rows:
        choice = ", ".join(f"{k} ({f:g}, {e:g})" for k, (f, e) in r["choice"].items()) or "-"
        t.add_row(f"{r['budget_pct']:g} %", f"{r['margin']:g}", f"{r['calib_agreement']:.2%}",
                  f"{r['validation']['agreement']:.2%}", f"{r['validation']['accuracy']:.2%}",
                  f"{r['accuracy_test']:.2%}",
                  f"{(r['accuracy_test_exact'] - r['accuracy_test']) * 100:.2f} pp",
                  f"{r['macs']:,} / {r['macs_exact']:,}", f"{r['macs_saved_vs_exact']:.1%}",
                  choice)
    _console().print(t)
    print(f"note: (Th, n) from training images only: thresholds profiled on training images "
          f"0..63, the budget checked on {len(tuner.y_acc)} tuning images, the margin (share "
          f"of the budget held back) chosen on {len(val)} validation images (90 % upper "
          f"bounds within the budget); test = the whole test split ({len(w.data.y_test)} "
          "images), never used for tuning. MACs: the profiling windows, relative to exact mode")
    if out:
        write_json(out, {"exact": {"test_acc": exact_test}, "curve": rows})


def cmd_sim(args, plain) -> None:
    """``zeroskip sim``: SnaPEA gets its modes; every other block runs unchanged."""
    from zeroskip.cli import CliError

    if args.block != "snapea":
        return plain(args)
    from zeroskip.cli import (_console, check_out_file, check_source_args, config_from_args,
                              load_source, print_layer_table, print_workload_notes, write_json)
    from zeroskip.sim import snapea
    from zeroskip.sim.energy import load_table

    mode = args.mode or "exact"
    if mode != "predictive" and args.budget is not None:
        raise CliError("--budget applies to --mode predictive only")
    cfg = config_from_args("snapea", args)
    table = load_table(args.energy_table)
    out = check_out_file(args.json) if args.json else None
    kind = check_source_args(args)
    if mode == "predictive":
        if kind != "network" or (args.network or "digits") != "digits":
            raise CliError("predictive mode needs calibration data to choose (Th, n): use "
                           "--network digits")
        if args.budget is None:
            raise CliError("--mode predictive needs --budget PP (the accuracy loss allowed, in "
                           "percentage points, e.g. --budget 1)")
        if not 0 <= args.budget <= 100:
            raise CliError(f"--budget must be in 0..100 percentage points, not {args.budget:g}")
    wl = load_source(args)
    params, tuning = None, None
    if mode == "predictive":
        honest = _tuned(args.budget, cfg.check_every)
        params, tuning = honest.params, honest.to_dict()
    t0 = time.perf_counter()
    report = snapea.simulate_network(wl, cfg, table, mode=mode, params=params)
    dt = time.perf_counter() - t0
    print_layer_table(report, f"snapea ({mode}) on {wl.name} ({dt:.2f} s)")
    print_snapea_table(report, _console())
    for note in report.notes:
        print(f"note: {note}")
    print_workload_notes(wl)
    if report.accuracy is not None:
        print(f"note: test accuracy {report.accuracy:.2%}")
    if tuning:
        print(f"note: predictive parameters for a {tuning['budget_pct']:g} % budget "
              f"(margin {tuning['margin']:g}, chosen at {tuning['tuned_budget_pct']:g} % on "
              f"{len(tuning['tuning_images']['tuning'])} tuning images, checked on "
              f"{len(tuning['tuning_images']['validation'])} validation images, all from the "
              f"training split): {tuning['choice']} (layer: (n / non-zero weights, miss rate))")
        print(f"note: test split ({tuning['test_images']} images, never used for tuning): "
              f"{tuning['accuracy_test']:.2%} against exact mode's "
              f"{tuning['accuracy_test_exact']:.2%}")
    if out:
        d = report.to_dict()
        if tuning:
            d["tuning"] = tuning
            d.update({k: tuning[k] for k in ("tuning_images", "test_images",
                                             "accuracy_test")})
        write_json(out, d)


def print_snapea_table(report, console) -> None:
    from rich.table import Table

    t = Table(title="early termination per layer (against this block with termination off)")
    for col in ("layer", "mode", "windows", "stopped exact", "stopped predicted", "MACs done",
                "of block dense", "lane util", "lane balance", "speedup", "energy saving", "on-chip",
                "index energy"):
        t.add_column(col, justify="left" if col in ("layer", "mode") else "right")
    for l in report.layers:
        e = l.extra
        t.add_row(l.name, e["mode"], f"{e['windows']:,}",
                  f"{e['windows_terminated_exact'] / e['windows']:.1%}",
                  f"{e['windows_terminated_predicted'] / e['windows']:.1%}",
                  f"{l.macs_performed:,}", f"{l.macs_performed / e['macs_block_dense']:.1%}",
                  f"{e['lane_utilization']:.1%}", f"{e['lane_balance']:.1%}",
                  f"{e['speedup_vs_no_termination']:.2f}x",
                  f"{e['energy_saving_vs_no_termination']:.2f}x",
                  f"{e['onchip_energy_saving_vs_no_termination']:.2f}x", f"{e['index_energy_share']:.1%}")
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
