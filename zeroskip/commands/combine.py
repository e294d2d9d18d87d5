"""``zeroskip combine``: column combining (Kung et al. 2019) on a network.

On the bundled digits CNN it runs the joint prune - combine - retrain optimisation
(``models.column_combining.joint_optimize``, cached) and reports accuracy before/after and
the packing; on a shape-only network (VGG-16, ...) it packs a random int8 matrix per layer
pruned to ``target_sparsity(alpha)`` and says so. Cycles and energy come from the
column-combined array simulator (``sim.combined``) against the dense array of the same size.
"""

from __future__ import annotations

from zeroskip.hw import config as hwcfg


def add_parser(sub) -> None:
    p = sub.add_parser("combine", help="column combining: prune, pack and retrain a network "
                       "for the column-combined array, report accuracy and packing")
    p.add_argument("--network", default=None, help="digits (joint optimisation; the default) "
                   "or a shape-only network (random pruned matrices)")
    from zeroskip.cli import add_source_options

    add_source_options(p)  # --model: its own weights, pruned without retraining
    p.add_argument("--alpha", type=int, default=8, help="max original columns per packed "
                   "column (default 8)")
    p.add_argument("--gamma", type=float, default=0.5, help="allowed conflicts per group as a "
                   "fraction of the rows (default 0.5)")
    p.add_argument("--block", type=int, default=0, help="group each block of this many output "
                   "channels separately (row split; 0 = one global grouping)")
    p.add_argument("--rows", type=int, default=None, help="array rows (default: preset)")
    p.add_argument("--cols", type=int, default=None, help="array columns (default: preset)")
    p.add_argument("--preset", default="default", help="combined-array preset for the array size")
    p.add_argument("--energy-table", help="JSON file overriding per-action energies (pJ)")
    p.add_argument("--json", help="also write the figures as JSON to this file")
    p.set_defaults(func=cmd_combine)


def _cfg(args, block: int):
    import dataclasses

    from zeroskip.cli import CliError

    presets = hwcfg.COMBINED_PRESETS
    if args.preset not in presets:
        raise CliError(f"unknown preset {args.preset!r} for combined; choose one of: "
                       f"{', '.join(presets)}")
    over = {k: v for k, v in (("rows", args.rows), ("cols", args.cols)) if v is not None}
    return dataclasses.replace(presets[args.preset], alpha=args.alpha, gamma=args.gamma,
                               group_block=block, **over)


def _layer_figures(rep) -> dict:
    e = rep.extra
    keys = ("columns", "nonempty_columns", "packed_columns", "column_reduction",
            "groups_per_block", "tiles", "dense_tiles", "tile_reduction", "nonzero_weights",
            "cells", "cell_utilization", "dense_cell_utilization", "utilization_gain",
            "dense_cycles", "speedup_vs_dense", "dense_energy_pj",
            "energy_saving_vs_dense")
    return {"name": rep.name, "cycles": rep.cycles, "energy_pj": rep.energy_pj,
            **{k: e[k] for k in keys}}


def run_combine(network: str, cfg, table=None, progress=None, wl=None) -> dict:
    """All figures of one column-combining run (what ``zeroskip combine`` prints); ``wl``: a
    workload already loaded (``--model``, ``--topology``) instead of ``network``."""
    from zeroskip.models import column_combining as cc
    from zeroskip.sim import combined, workload

    wl = wl or workload.load(network)
    network = wl.name
    if wl.real and not wl.trained_digits:  # an imported model: its weights, no retraining
        packings, notes, _ = combined.network_packings(wl, cfg)
        acc = {"accuracy_before": None, "accuracy_after": None, "accuracy_drop_pp": None}
        source = f"{wl.description}; {notes[0]}; no accuracy figures"
    elif wl.real:
        from zeroskip.models.digits import load_data

        res = cc.joint_optimize(cfg.alpha, cfg.gamma, cfg.group_block, progress=progress)
        layers = cc.joint_quant_layers(res, fxp=cfg.fxp)
        packings = cc.joint_packings(res, layers)
        acc = {"accuracy_before": res.accuracy_before, "accuracy_after": res.accuracy_after,
               "accuracy_drop_pp": 100 * (res.accuracy_before - res.accuracy_after),
               "accuracy_pruned_no_retrain": res.accuracy_pruned_no_retrain,
               "float_accuracy_before": res.float_before,
               "float_accuracy_after": res.float_after}
        source = (f"joint prune-combine-retrain of the trained digits CNN: magnitude pruning "
                  f"in {cc.PRUNE_STEPS} steps to {res.sparsity:.1%} sparsity, regrouping and "
                  f"conflict pruning at each step, masked retraining in between and "
                  f"{cc.FINAL_EPOCHS} epochs after; int8 ('kl') accuracy on the "
                  f"{len(load_data().y_test)} test images")
    else:
        packings = []
        for i, spec in enumerate(wl.layers):
            if progress:
                progress(f"packing {spec.name}")
            packings.append(combined.shape_only_packing(spec, i, cfg))
        acc = {"accuracy_before": None, "accuracy_after": None, "accuracy_drop_pp": None}
        source = (f"shape-only network: no trained weights, each layer packs a random int8 "
                  f"matrix pruned iid to {cc.target_sparsity(cfg.alpha):.1%} sparsity "
                  f"(target_sparsity(alpha={cfg.alpha})); no accuracy figures")
    report = combined.simulate_network(wl, cfg, table, packings=packings)
    net = combined.network_figures(report.layers)
    return {"network": network, "alpha": cfg.alpha, "gamma": cfg.gamma,
            "block": cfg.group_block, "array": f"{cfg.rows}x{cfg.cols}",
            "sparsity_target": cc.target_sparsity(cfg.alpha), "weights": source,
            **{k: net[k] for k in ("column_reduction", "tile_reduction")}, **acc,
            "network_figures": net,
            "layers": [_layer_figures(l) for l in report.layers],
            "report": report.to_dict()}


def _print(result: dict, title: str) -> None:
    from rich.table import Table

    from zeroskip.cli import _console

    t = Table(title=title)
    for col in ("layer", "columns", "non-empty", "packed", "col. red.", "tiles", "dense tiles",
                "cell util.", "cycles", "speedup", "energy saving"):
        t.add_column(col, justify="left" if col == "layer" else "right")
    net = dict(result["network_figures"], name="total", nonempty_columns="",
               cell_utilization=result["network_figures"]["packing_efficiency"])
    for l in result["layers"] + [net]:
        t.add_row(l["name"], f"{l['columns']}", f"{l['nonempty_columns']}",
                  f"{l['packed_columns']}", f"{l['column_reduction']:.2f}x", f"{l['tiles']}",
                  f"{l['dense_tiles']}", f"{l['cell_utilization']:.1%}", f"{l['cycles']:,}",
                  f"{l['speedup_vs_dense']:.2f}x", f"{l['energy_saving_vs_dense']:.2f}x")
    _console().print(t)


def cmd_combine(args) -> None:
    from zeroskip.cli import _progress, check_out_file, write_json
    from zeroskip.sim.energy import load_table

    table = load_table(args.energy_table)
    out = check_out_file(args.json) if args.json else None
    cfg = _cfg(args, args.block)
    from zeroskip.cli import check_source_args, load_source

    wl = None if check_source_args(args) == "network" else load_source(args)
    network = wl.name if wl else args.network or "digits"
    with _progress() as prog:
        task = prog.add_task("column combining", total=None)
        result = run_combine(network, cfg, table, wl=wl,
                             progress=lambda msg: prog.update(task, description=msg))
        # the row split against one global grouping (or per-tile grouping against the
        # chosen global one), same alpha, gamma and array; on the digits net only (grouping
        # every 'cols'-wide block of a shape-only network's FC layers separately takes long)
        runs = [result]
        if result["accuracy_before"] is not None:
            other = 0 if args.block else cfg.cols
            prog.update(task, description=f"comparison: block={other}")
            runs.append(run_combine(network, _cfg(args, other), table))
    keys = ("column_reduction", "tile_reduction", "accuracy_after", "accuracy_drop_pp")
    result["block_comparison"] = {f"block={r['block']}": {k: r[k] for k in keys}
                                  | _subset(r["network_figures"]) for r in runs}
    _print(result, f"column combining on {network}: alpha={cfg.alpha}, gamma={cfg.gamma}, "
                   f"block={cfg.group_block}, {cfg.rows}x{cfg.cols} array")
    print(f"weights: {result['weights']}")
    if result["accuracy_before"] is not None:
        print(f"accuracy: {result['accuracy_before']:.2%} dense int8 -> "
              f"{result['accuracy_after']:.2%} packed int8 after retraining "
              f"({result['accuracy_drop_pp']:.2f} pp lost; "
              f"{result['accuracy_pruned_no_retrain']:.2%} before the last retraining)")
    print(f"columns: {result['network_figures']['columns']} -> "
          f"{result['network_figures']['packed_columns']} "
          f"({result['column_reduction']:.2f}x fewer); tiles: "
          f"{result['network_figures']['dense_tiles']} -> {result['network_figures']['tiles']} "
          f"({result['tile_reduction']:.2f}x fewer); packing efficiency "
          f"{result['network_figures']['packing_efficiency']:.1%} (the same weights fill "
          f"{result['network_figures']['dense_cell_utilization']:.1%} of the dense array's "
          f"cells: {result['network_figures']['utilization_gain']:.2f}x utilisation gain)")
    for name, r in result["block_comparison"].items():
        acc = "" if r["accuracy_after"] is None else \
            f", accuracy {r['accuracy_after']:.2%} ({r['accuracy_drop_pp']:.2f} pp lost)"
        print(f"grouping {name}: {r['column_reduction']:.2f}x columns, "
              f"{r['tile_reduction']:.2f}x tiles, packing efficiency "
              f"{r['packing_efficiency']:.1%}{acc}")
    if out:
        write_json(out, result)


def _subset(net: dict) -> dict:
    return {k: net[k] for k in ("packed_columns", "tiles", "packing_efficiency",
                                "speedup_vs_dense", "energy_saving_vs_dense")}
