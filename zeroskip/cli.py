"""``zeroskip``: generate Verilog, simulate networks, run the main job.

Every subcommand lists and accepts the blocks whose record (``zeroskip.blocks``) has the part
it needs; block options are generated from each block's config dataclass, so a new block or a
new config field is a new CLI choice or option with no change here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from zeroskip import blocks as registry
from zeroskip import write_atomic
from zeroskip.hw import config as hwcfg
from zeroskip.models.workloads import NETWORKS
from zeroskip.sim.compare import DEFAULT_MAC_UNITS


class CliError(Exception):
    pass


class OneLineParser(argparse.ArgumentParser):
    """argparse with errors as one line on stderr (exit 2), naming where the help is."""

    def error(self, message):
        self.exit(2, f"zeroskip: error: {message} (see '{self.prog} --help')\n")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _field_help(f, default) -> str:
    """A config field's option help: what it is (its ``help`` metadata, else its range's
    ``why``), its range and the default preset's value."""
    bounds = f.metadata.get("bounds")
    what = f.metadata.get("help") or (bounds.why if bounds and bounds.why else
                                       f.name.replace("_", " "))
    parts = [what]
    if bounds is not None:
        rng = f"{bounds.lo}..{bounds.hi}" if bounds.hi is not None else f">= {bounds.lo}"
        parts.append(f"{rng}{', a power of two' if bounds.power_of_two else ''}")
    parts.append(f"default {default}")
    return "; ".join(parts)


def add_config_options(p: argparse.ArgumentParser, block: str) -> None:
    """``--preset`` and an option for every field of ``block``'s config and of the
    fixed-point contract, each with what it is, its range and the default preset's value."""
    rec = registry.get_block(block)
    p.add_argument("--preset", default="default", choices=list(rec.presets), metavar="NAME",
                   help=f"start from a named configuration: {', '.join(rec.presets)} "
                        "(default: default; 'zeroskip presets' lists them)")
    base = rec.default
    for cls, values in ((type(base), base), (hwcfg.FixedPointConfig, base.fxp)):
        for f in dataclasses.fields(cls):
            if f.name == "fxp":
                continue
            kind = {int: int, float: float, "int": int, "float": float,
                    "int | None": int}.get(f.type, None)
            default = getattr(values, f.name)
            if f.type in (bool, "bool"):
                p.add_argument(_flag(f.name), type=lambda s: s.lower() in ("1", "true", "yes"),
                               default=None, metavar="BOOL", help=_field_help(f, default))
            else:
                p.add_argument(_flag(f.name), type=kind or str, default=None,
                               metavar=f.name.upper(), help=_field_help(f, default))


def add_block_subcommand(sub, name: str, help: str, part: str, options, func):
    """``zeroskip NAME BLOCK [options]``: one parser per block whose record has ``part``, each
    with the subcommand's own ``options(parser)`` and only that block's config options.
    The block parsers are kept in ``parser.block_parsers`` for a block's own extras."""
    p = sub.add_parser(name, help=help, description=help)
    blocks = p.add_subparsers(dest="block", required=True, metavar="BLOCK",
                              help=f"one of: {', '.join(registry.names(part))}")
    p.block_parsers = {}
    for block in registry.names(part):
        rec = registry.get_block(block)
        bp = blocks.add_parser(block, help=rec.summary, description=f"{help}: {rec.summary}")
        options(bp)
        add_config_options(bp, block)
        p.block_parsers[block] = bp
    p.set_defaults(func=func)
    return p


def config_from_args(block: str, args) -> object:
    presets = registry.get_block(block).presets
    if args.preset not in presets:
        raise CliError(f"unknown preset {args.preset!r} for {block}; "
                       f"choose one of: {', '.join(presets) or '(none)'}")
    base = presets[args.preset]
    fxp_over = {f.name: getattr(args, f.name) for f in dataclasses.fields(base.fxp)
                if getattr(args, f.name, None) is not None}
    if "acc_bits" in fxp_over and "bias_bits" not in fxp_over:
        fxp_over["bias_bits"] = None  # follows the accumulator width
    over = {f.name: getattr(args, f.name) for f in dataclasses.fields(base)
            if f.name != "fxp" and getattr(args, f.name, None) is not None}
    fxp = dataclasses.replace(base.fxp, **fxp_over)
    return dataclasses.replace(base, fxp=fxp, **over)


def _console():
    import shutil

    from rich.console import Console
    if not sys.stdout.isatty():  # piped or logged: never cut a number to fit a width
        return Console(width=400)
    return Console(width=max(shutil.get_terminal_size((140, 40)).columns, 120))


def print_layer_table(report, title: str) -> None:
    from rich.table import Table

    t = Table(title=title)
    for col in ("layer", "cycles", "MACs", "MACs done", "util", "energy µJ", "compute",
                "buffers", "DRAM"):
        t.add_column(col, justify="left" if col == "layer" else "right")
    d = report.to_dict()
    rows = d["layers"] + [dict(d["totals"], name="total")]
    for l in rows:
        b = l["energy_breakdown_pj"]
        t.add_row(l["name"], f"{l['cycles']:,}", f"{l['macs_dense']:,}",
                  f"{l['macs_performed']:,}", f"{l['utilization']:.1%}",
                  f"{l['energy_pj'] / 1e6:.3f}", f"{b['compute'] / 1e6:.3f}",
                  f"{b['buffers'] / 1e6:.3f}", f"{b['dram'] / 1e6:.3f}")
    _console().print(t)


DEFAULT_IMAGES = 8


def check_workload_args(network: str | None, images: int | None) -> int:
    """The number of digits images to run, after checking ``--network`` and ``--images``."""
    from zeroskip.models.digits import CALIBRATION_IMAGES

    network = network or "digits"
    if network not in NETWORKS:
        raise CliError(f"unknown network {network!r}; choose one of: {', '.join(NETWORKS)}")
    if images is None:
        return DEFAULT_IMAGES
    if network != "digits":
        raise CliError(f"--images applies to --network digits only ({network} runs one input "
                       "from the seeded activation model); leave it out")
    if not 1 <= images <= CALIBRATION_IMAGES:
        raise CliError(f"--images must be in 1..{CALIBRATION_IMAGES} (the digits calibration "
                       f"images), not {images}")
    return images


def load_workload(network: str | None, images: int | None = None):
    from zeroskip.sim import workload

    network = network or "digits"
    images = check_workload_args(network, images)
    with _progress() as prog:
        task = prog.add_task(f"loading {network}", total=None)

        def train_progress(epoch, epochs):
            prog.update(task, description=f"training digits CNN (epoch {epoch}/{epochs})",
                        total=epochs, completed=epoch)
        w = workload.load(network, images=images, progress=train_progress)
        prog.update(task, description=f"loaded {network}", total=1, completed=1)
    return w


MODEL_OPTIONS = ("weights", "calib", "input_size", "mean", "std")


def add_source_options(p: argparse.ArgumentParser, topology: bool = True) -> None:
    """``--model`` (and its weights, calibration images and input size) and ``--topology``,
    beside ``--network``."""
    from zeroskip.models.workloads import ZOO_MODELS as MODELS

    p.add_argument("--model", help="your network: an .onnx file, a TorchScript (.pt) or "
                   "torch.export (.pt2) file, module:function returning a torch.nn.Module, or "
                   f"one of {', '.join(MODELS)} (seeded random weights unless --weights)")
    p.add_argument("--weights", help="--model: a state dict (.pth) for a PyTorch model")
    p.add_argument("--calib", help="--model: calibration and input images, an .npy / .npz "
                   "float N x C x H x W array or a folder of PNG / JPEG files (default: seeded "
                   "random images)")
    p.add_argument("--input-size", metavar="C,H,W", help="--model: input size where the model "
                   "does not fix it (and for a --calib folder)")
    p.add_argument("--mean", help="--calib folder: per-channel mean, e.g. 0.485,0.456,0.406")
    p.add_argument("--std", help="--calib folder: per-channel std, e.g. 0.229,0.224,0.225")
    if topology:
        p.add_argument("--topology", metavar="FILE.csv", help="layer shapes from a SCALE-Sim "
                       "topology file (conv or GEMM format) with the seeded activation model")


def check_source_args(args) -> str:
    """Which way in (``network``, ``model`` or ``topology``), after checking the options."""
    given = [o for o in ("network", "model", "topology") if getattr(args, o, None)]
    if len(given) > 1:
        raise CliError(f"give one of --network, --model, --topology, not "
                       f"{' and '.join(_flag(g) for g in given)}")
    kind = given[0] if given else "network"
    if kind != "model":
        for o in MODEL_OPTIONS:
            if getattr(args, o, None):
                raise CliError(f"{_flag(o)} applies to --model only")
    if kind == "network":
        check_workload_args(getattr(args, "network", None), getattr(args, "images", None))
    elif kind == "topology" and getattr(args, "images", None) is not None:
        raise CliError("--images applies to --network digits and --model (a topology runs "
                       "one input from the seeded activation model); leave it out")
    elif kind == "model" and getattr(args, "images", None) is not None and args.images < 1:
        raise CliError(f"--images must be at least 1, not {args.images}")
    return kind


def load_source(args, images: int | None = None):
    """The workload of ``--network``, ``--model`` or ``--topology``."""
    kind = check_source_args(args)
    images = images or getattr(args, "images", None)
    if kind == "network":
        return load_workload(args.network, images)
    if kind == "topology":
        from zeroskip.models import topology

        return topology.load_workload(args.topology)
    from zeroskip.models import importer

    with _progress() as prog:
        prog.add_task(f"importing {args.model} (export, calibration, integer graph)", total=None)
        return importer.load_workload(args.model, args.weights, args.calib, args.input_size,
                                      args.mean, args.std, images=images or 1)


def print_workload_notes(wl) -> None:
    for note in wl.notes:
        print(f"note: {note}")


def _progress():
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    return Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                    transient=True)


def simulate(block: str, cfg, wl, table):
    mod = registry.get_block(block, "simulator").part("simulator")
    with _progress() as prog:
        task = prog.add_task(f"{block}: simulating {wl.name}", total=len(wl.layers))
        report = mod.simulate_network(
            wl, cfg, table, progress=lambda name: prog.update(
                task, advance=1, description=f"{block}: {name}"))
    return report


def cmd_gen(args) -> None:
    from zeroskip.hw.gen import generate

    cfg = config_from_args(args.block, args)
    vpath = generate(cfg, check_out_dir(args.out))
    print(f"wrote {vpath} and {vpath.with_suffix('.json')}")


def cmd_sim(args) -> None:
    from zeroskip.sim.energy import load_table

    cfg = config_from_args(args.block, args)
    table = load_table(args.energy_table)
    out = check_out_file(args.json) if args.json else None
    wl = load_source(args)
    t0 = time.perf_counter()
    report = simulate(args.block, cfg, wl, table)
    dt = time.perf_counter() - t0
    print_layer_table(report, f"{args.block} on {wl.name} ({dt:.2f} s)")
    for note in report.notes:
        print(f"note: {note}")
    print_workload_notes(wl)
    if out:
        d = report.to_dict()
        if wl.notes:
            d["workload_notes"] = wl.notes
        write_json(out, d)


def print_comparison(rows: list[dict], title: str) -> None:
    from rich.table import Table

    t = Table(title=title)
    for col in ("block", "cycles", "speedup", "MAC util", "energy µJ", "energy saving",
                "compute", "buffers", "DRAM", "accuracy"):
        t.add_column(col, justify="left" if col == "block" else "right")
    for r in rows:
        acc = r.get("accuracy")
        t.add_row(r["block"], f"{r['cycles']:,}", f"{r.get('speedup_vs_dense') or 0:.2f}x",
                  f"{r['utilization']:.1%}", f"{r['energy_pj'] / 1e6:.3f}",
                  f"{r.get('energy_saving_vs_dense') or 0:.2f}x",
                  f"{r['energy_compute_pj'] / 1e6:.3f}", f"{r['energy_buffers_pj'] / 1e6:.3f}",
                  f"{r['energy_dram_pj'] / 1e6:.3f}", "-" if acc is None else f"{acc:.2%}")
    _console().print(t)


def print_area(rows: list[dict], title: str) -> None:
    """The equal-area view: LUT4 / FF / DP16KD / Fmax and throughput per 1,000 LUT4."""
    from rich.table import Table

    t = Table(title=title)
    for col in ("block", "MAC units", "LUT4", "FF", "DP16KD", "Fmax MHz", "images/s",
                "images/s per 1k LUT4"):
        t.add_column(col, justify="left" if col == "block" else "right")
    missing = []
    for r in rows:
        if not r["synthesised"]:
            missing.append(r["block"])
            t.add_row(r["block"], str(r["mac_units"]), *["not synthesised"] + [""] * 5)
            continue
        fmax = r.get("fmax_mhz")
        t.add_row(r["block"], str(r["mac_units"]), f"{r['luts']:,}", f"{r['ffs']:,}",
                  f"{r['brams']:g}", "-" if fmax is None else f"{fmax:.2f}",
                  f"{r['images_per_s']:,.0f}" if "images_per_s" in r else "-",
                  f"{r['images_per_s_per_1k_lut4']:,.1f}" if "images_per_s" in r else "-")
    _console().print(t)
    if missing:
        print(f"note: not synthesised yet: {', '.join(missing)}; 'zeroskip run --synth' "
              "synthesises them (minutes each) and keeps the results")


def write_json(path: Path, obj) -> None:
    """Write a report as JSON (strict: no NaN or infinity) under a temporary name, then move
    it into place, and say so."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(obj, indent=2, allow_nan=False))
    print(f"wrote {path}")


def check_out_dir(path, option: str = "-o") -> Path:
    """An output folder: it may exist, but not as a file."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise CliError(f"{option} {str(p)!r} is a file, not a folder; give a folder name")
    return p


def check_out_file(path, option: str = "--json") -> Path:
    """An output file: it may exist, but not as a folder, and its folder must not be a file."""
    p = Path(path)
    if p.is_dir():
        raise CliError(f"{option} {str(p)!r} is a folder; give a file name, e.g. "
                       f"{str(p / 'report.json')!r}")
    for parent in p.parents:
        if parent.exists() and not parent.is_dir():
            raise CliError(f"{option} {str(p)!r}: {str(parent)!r} is a file, not a folder")
    return p


def print_layer_comparison(reports: dict, title: str) -> None:
    """One row per layer: each block's cycles, MAC utilisation and energy side by side."""
    from rich.table import Table

    t = Table(title=title)
    t.add_column("layer")
    for block in reports:
        t.add_column(f"{block}\ncycles", justify="right")
        t.add_column("util", justify="right")
        t.add_column("µJ", justify="right")
    per_block = [r.to_dict() for r in reports.values()]
    names = [l["name"] for l in per_block[0]["layers"]] + ["total"]
    for i, name in enumerate(names):
        cells = []
        for d in per_block:
            l = d["layers"][i] if name != "total" else d["totals"]
            cells += [f"{l['cycles']:,}", f"{l['utilization']:.0%}", f"{l['energy_pj'] / 1e6:.2f}"]
        t.add_row(name, *cells)
    _console().print(t)


def cmd_run(args) -> None:
    """The main job: every block on the network, one comparison, report files, Verilog."""
    from zeroskip.sim import compare
    from zeroskip.sim.energy import load_table

    configs = compare.equal_configs(_mac_units_arg(args.macs), _block_presets(args.preset))
    out = check_out_dir(args.out)
    table = load_table(args.energy_table)
    wl = load_source(args)
    print(f"workload: {wl.description}")
    print_workload_notes(wl)
    print(f"hardware: {compare.hardware_line(configs)}")
    t0 = time.perf_counter()
    with _progress() as prog:
        task = prog.add_task("simulating", total=len(configs) * len(wl.layers))
        reports = compare.run_blocks(wl, table, configs=configs, progress=lambda b, name:
                                     prog.update(task, advance=1, description=f"{b}: {name}"))
    dt = time.perf_counter() - t0
    if args.per_layer:
        for block, rep in reports.items():
            print_layer_table(rep, f"{block} on {wl.name}")
    print_layer_comparison(reports, f"{wl.name}: per layer")
    rows = compare.comparison_rows(reports)
    units = sorted({r["mac_units"] for r in rows})
    hardware = (f"every block on {units[0]} MAC units" if len(units) == 1 else
                "MAC units differ: " + ", ".join(f"{r['block']} {r['mac_units']}" for r in rows))
    print_comparison(rows, f"{wl.name}: {hardware} ({wl.batch} image(s), simulated in "
                           f"{dt:.2f} s)")
    for block, rep in reports.items():
        for note in rep.notes[1:]:
            print(f"note ({block}): {note}")
    from zeroskip.commands import fpga

    with _progress() as prog:
        task = prog.add_task("area: reading the synthesis cache", total=None)
        area = fpga.area_rows(configs, reports, wl.batch, compute=args.synth,
                              progress=lambda b: prog.update(
                                  task, description=f"area: synthesising {b} for "
                                                    f"{fpga.AREA_TARGET} (minutes)"))
    print_area(area, f"{wl.name}: the same blocks by area ({fpga.AREA_TARGET} "
                     f"{fpga.TARGETS[fpga.AREA_TARGET]['device']}, AXI4-Stream tops)")
    report = compare.report_dict(wl, reports)
    if wl.notes:
        report["workload_notes"] = wl.notes
    if getattr(wl, "graph", None) is not None:
        report["ran_where"] = wl.graph.where()
    report["area"] = area
    # an interrupted run must not leave an earlier run's report looking like this one's:
    # the old report goes first, every file is written under a temporary name and moved,
    # and report.json, written last, says the run completed
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").unlink(missing_ok=True)
    # the Verilog of the configs compared, from the Verilog cache (keyed by config, RTL
    # sources and Amaranth); --verilog generates what is not cached yet (minutes per block)
    verilog = {}
    with _progress() as prog:
        task = prog.add_task("Verilog: reading the cache", total=None)
        for block in registry.names("rtl"):
            if args.verilog:
                prog.update(task, description=f"Verilog: {block} (minutes when not cached)")
            path, hit = fpga.cached_verilog(configs.get(block, registry.get_block(block).default),
                                            out / "verilog", args.verilog)
            if path is None:  # an earlier run's file must not pass for this run's
                for suffix in (".v", ".json"):
                    (out / "verilog" / f"zeroskip_{block}{suffix}").unlink(missing_ok=True)
            verilog[block] = None if path is None else {"file": str(path), "from_cache": hit}
    report["verilog"] = verilog
    compare.write_csv(reports, out / "report.csv")
    pngs = compare.plot(reports, out, wl.name, area=area, images=wl.batch)
    report["complete"] = True
    write_atomic(out / "report.json", json.dumps(report, indent=2, allow_nan=False))
    written = [b for b, v in verilog.items() if v]
    print(f"wrote {out / 'report.json'}, {out / 'report.csv'}, "
          f"{', '.join(p.name for p in pngs)}"
          + (f" and {out / 'verilog'}/ ({', '.join(written)})" if written else ""))
    missing = [b for b, v in verilog.items() if not v]
    if missing:
        print(f"note: Verilog not generated yet: {', '.join(missing)}; 'zeroskip run "
              "--verilog' generates it (minutes each) and keeps it")


def _mac_units_arg(value: str) -> int | None:
    """``--macs N`` (every block on N MAC units) or ``--macs preset`` (each preset as it is)."""
    if value == "preset":
        return None
    try:
        n = int(value)
    except ValueError:
        raise CliError(f"--macs takes a number of MAC units or 'preset', not {value!r}") from None
    if n < 1:
        raise CliError(f"--macs must be at least 1, not {n}")
    return n


def _block_presets(values: list[str] | None) -> dict[str, str]:
    """``--preset BLOCK=NAME`` (repeatable) as ``{block: name}``."""
    chosen = {}
    for v in values or []:
        block, sep, name = v.partition("=")
        if not sep or not block or not name:
            raise CliError(f"--preset takes BLOCK=NAME (e.g. snapea=check4), not {v!r}")
        chosen[block] = name
    return chosen


def _verify_simulator(args):
    """``--sim`` (else ``$ZEROSKIP_SIM``, else Icarus) as the RTL simulator of this run,
    after checking that it is installed: a context manager, the choice ends with the run."""
    import os

    from tb import runner

    sim = args.sim or os.environ.get(runner.SIM_ENV) or "icarus"
    return runner.using_simulator(runner.check_simulator(sim))


def _check_band(band: int | None) -> None:
    if band is not None and band < 1:
        raise CliError(f"--band must be at least 1 (input rows), not {band}")


def cmd_verify(args) -> None:
    """Run a block's RTL (Icarus or Verilator + cocotb) on layers of the digits net with real
    activations (or of ``--model``, or of a named network on the activation model)."""
    cfg = config_from_args(args.block, args)
    check = _checkout_part(args.block, "verifier")
    from zeroskip.models.digits import CALIBRATION_IMAGES
    from zeroskip.models.workloads import NETWORKS, network_layers

    _check_band(args.band)
    if getattr(args, "model", None):
        return _verify_model(args, cfg, check)
    check_source_args(args)  # --weights & co. without --model
    network = args.network or "digits"
    if network not in NETWORKS:
        raise CliError(f"unknown network {network!r}; choose one of: {', '.join(NETWORKS)}")
    if network == "digits" and not 0 <= args.image < CALIBRATION_IMAGES:
        raise CliError(f"--image must be in 0..{CALIBRATION_IMAGES - 1} (a digits calibration "
                       f"image), not {args.image}")
    if network != "digits" and args.image != 0:
        raise CliError(f"--image applies to --network digits ({network} runs one input from "
                       f"the seeded activation model); leave it out")
    names = [l.name for l in network_layers(network)]
    chosen = args.layer or names
    for n in chosen:
        if n not in names:
            raise CliError(f"unknown layer {n!r}; {network} has: {', '.join(names)}")
    if args.build:
        # the RTL simulator runs in its own folder: a relative path would point elsewhere
        build_root = check_out_dir(args.build, "--build").resolve()
    with _verify_simulator(args):
        if network == "digits":
            wl = load_workload("digits", images=args.image + 1)
        else:
            wl = _model_layers(load_workload(network), chosen)
        _verify_layers(args, cfg, check, wl, chosen, build_root if args.build else None)


def _model_layers(wl, chosen):
    """A network known by its shapes: the chosen layers as quantised layers with the seeded
    activation model's weights and input (``sim.workload``), as ``zeroskip sim`` runs them."""
    import torch

    from zeroskip.models.reference import QuantLayer

    quant, inputs = [None] * len(wl.layers), [None] * len(wl.layers)
    for i, spec in enumerate(wl.layers):
        if spec.name in chosen:
            d = wl.layer_data(i)
            quant[i] = QuantLayer(spec, *(torch.from_numpy(a) for a in (d.w, d.bias, d.mult,
                                                                        d.shift)))
            inputs[i] = torch.from_numpy(d.x)[None]
    return dataclasses.replace(wl, quant=quant, real_inputs=inputs)


def _band(q, x, rows: int | None):
    """``--band N``: the layer on the first ``N`` rows of its input (every channel), padded as
    the layer is; the whole layer when it has at most ``N`` rows."""
    if rows is None or rows >= q.spec.in_h:
        return q, x
    spec = dataclasses.replace(q.spec, in_h=rows)
    if spec.pool > 1 and spec.out_h % spec.pool:
        raise CliError(f"--band {rows}: layer {spec.name} pools {spec.pool}x{spec.pool}, so its "
                       f"band needs a multiple of {spec.pool} output rows, not {spec.out_h}")
    return dataclasses.replace(q, spec=spec), x[:, :rows]


def _verify_model(args, cfg, check) -> None:
    """``zeroskip verify --model``: layers of an imported model on its calibration images."""
    if args.image < 0:
        raise CliError(f"--image must be at least 0, not {args.image}")
    if args.network:
        raise CliError("give one of --network, --model, not both")
    build_root = check_out_dir(args.build, "--build").resolve() if args.build else None
    sim_choice = _verify_simulator(args)  # checked now, before the model is loaded
    from zeroskip.models.importer import ImagesOutOfRange

    try:
        wl = load_source(args, images=args.image + 1)
    except ImagesOutOfRange as e:
        raise CliError(f"--image must be in 0..{e.available - 1} (a calibration image), not "
                       f"{args.image}") from None
    names = [l.name for l in wl.layers]
    chosen = args.layer or names
    for n in chosen:
        if n not in names and n.rpartition(".group")[0] not in names:
            raise CliError(f"unknown layer {n!r}; {wl.name} has: {', '.join(names)}")
    if wl.grouped:  # the RTL runs a grouped conv one group at a time, as the simulators do
        from zeroskip.sim.workload import split_groups

        groups = {s.name: [s.group_layer(g).name for g in range(s.groups)] for s in wl.layers}
        wl = split_groups(wl)[0]
        chosen = [g for n in chosen for g in groups.get(n, [n])]
        if not set(chosen) <= {s.name for s in wl.layers}:
            raise CliError(f"unknown group in {', '.join(args.layer)}; a grouped conv's "
                           "groups are NAME.group0, NAME.group1, ...")
    if args.block == "combined" and cfg.alpha != 1:
        # the block's verifier packs the digits net's jointly optimised layers; an imported
        # model's are its own weights, pruned and packed as the simulator does
        from tb.combined_cases import verify_packed

        from zeroskip.sim.combined import imported_packing

        def check(cfg, q, x, build_dir):
            return verify_packed(cfg, q, x, imported_packing(q.weight_matrix.numpy(), cfg),
                                 build_dir)
    with sim_choice:
        _verify_layers(args, cfg, check, wl, chosen, build_root)


def _verify_layers(args, cfg, check, wl, chosen, build_root) -> None:
    import tempfile

    from tb.runner import simulator as sim_name

    names = [l.name for l in wl.layers]
    band = getattr(args, "band", None)
    cut = {n: _band(wl.quant[names.index(n)], wl.real_inputs[names.index(n)][args.image], band)
           for n in chosen}
    for n in chosen:  # what the simulator refuses, the RTL is not run on
        q = cut[n][0]
        cfg.fxp.check_reduction(n, q.spec.gemm[1], int(q.bias.abs().max()))
    if not args.build:
        build_root = Path(tempfile.mkdtemp(prefix="zeroskip-verify-"))
    failed = 0
    for n in chosen:
        i = names.index(n)
        t0 = time.perf_counter()
        q, x = cut[n]
        what = n if q.spec.in_h == wl.layers[i].in_h else (
            f"{n} (input rows 0..{q.spec.in_h - 1} of {wl.layers[i].in_h}, every channel)")
        try:
            res = check(cfg, q, x, build_root / n)
        except AssertionError as e:
            failed += 1
            print(f"{what}: FAILED: {str(e).splitlines()[0]}")
            continue
        print(f"{what}: {res['outputs']} outputs bit-exact vs the integer reference; RTL took "
              f"{res['cycles']:,} cycles = simulator prediction ({time.perf_counter() - t0:.1f} s "
              f"on {sim_name()})")
    if failed:
        raise CliError(f"{failed} of {len(chosen)} layers failed RTL verification (build and "
                       f"logs in {build_root})")
    if args.build:
        print(f"build and logs in {build_root}")
    else:  # a temporary folder: nothing to keep once every layer passed
        import shutil

        shutil.rmtree(build_root, ignore_errors=True)


def _checkout_part(block: str, part: str):
    """A part of a block that lives in a checkout's tb/ (the cocotb testbenches, which stay out
    of the wheel): the checkout that ``zeroskip.hw`` was installed from (editable) goes on
    ``sys.path``."""
    root = Path(hwcfg.__file__).resolve().parents[1]
    if (root / "tb" / "__init__.py").exists() and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        return registry.get_block(block, part).part(part)
    except ModuleNotFoundError as e:
        if e.name not in ("tb", "cocotb", "cocotb_tools"):
            raise
        raise CliError(f"zeroskip verify needs the cocotb testbenches (tb/) of a zeroskip "
                       f"checkout and the test extras ({e.name} is missing): run it from a "
                       f"checkout set up with 'bash scripts/setup.sh --rtl'") from None


def cmd_digits(args) -> None:
    """Train (or load) the digits CNN and report float and int8 accuracy per clip rule."""
    from zeroskip.models import digits
    from zeroskip.models.quant import CLIP_RULES

    model = digits.trained_model(retrain=args.retrain)
    data = digits.load_data()
    print(f"float test accuracy: {digits.float_accuracy(model, data.x_test, data.y_test):.2%}")
    for rule in CLIP_RULES:
        layers = digits.quantize_model(model, data.x_calib, rule)
        print(f"int8 test accuracy ({rule} clipping): "
              f"{digits.int_accuracy(layers, data.x_test, data.y_test):.2%}")


def cmd_presets(args) -> None:
    for block in registry.names():
        for name, cfg in registry.get_block(block).presets.items():
            print(f"{block:10s} {name:10s} {cfg.to_json()}")


def build_parser() -> argparse.ArgumentParser:
    from zeroskip import __version__

    p = OneLineParser(prog="zeroskip", description=(
        "Design, simulate and verify CNN accelerator blocks that skip useless work."))
    p.add_argument("--version", action="version", version=f"zeroskip {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    add_block_subcommand(sub, "gen", "write a block's Verilog and its config JSON", "rtl",
                         lambda g: g.add_argument("-o", "--out", default="out", metavar="DIR",
                                                  help="output folder (default: out)"), cmd_gen)

    def sim_options(s):
        add_network_options(s)
        s.add_argument("--json", metavar="FILE", help="also write the report as JSON here")
        add_energy_option(s)
    add_block_subcommand(sub, "sim", "simulate a network on a block: per-layer cycles and "
                         "energy", "simulator", sim_options, cmd_sim)

    r = sub.add_parser("run", help="the main job: every block on a network, one report")
    r.add_argument("-o", "--out", default="zeroskip-out", metavar="DIR",
                   help="output folder (default: zeroskip-out)")
    add_network_options(r)
    add_energy_option(r)
    r.add_argument("--per-layer", action="store_true", help="also print each block's layers")
    r.add_argument("--macs", default=str(DEFAULT_MAC_UNITS), metavar="N",
                   help="MAC units every block gets (default %(default)s: the dense 8x8 array); "
                        "'preset' keeps each preset's own")
    r.add_argument("--synth", action="store_true",
                   help="synthesise (Yosys + nextpnr, ECP5) the blocks not in the synthesis "
                        "cache for the area view (minutes each)")
    r.add_argument("--preset", action="append", metavar="BLOCK=NAME",
                   help="start BLOCK from preset NAME (repeatable; default: 'default')")
    r.add_argument("--verilog", action="store_true",
                   help="generate the Verilog of the blocks not in the Verilog cache (minutes "
                        "each; without it, only cached Verilog is written)")
    r.set_defaults(func=cmd_run)

    def verify_options(v):
        v.add_argument("--layer", action="append", metavar="NAME",
                       help="layer to verify (repeatable; default: every layer)")
        v.add_argument("--image", type=int, default=0, metavar="I",
                       help="which calibration image, 0..255 (default 0)")
        v.add_argument("--network", metavar="NAME", help="digits (default: the trained net, "
                       "real activations) or vgg16, resnet18, alexnet (the seeded activation "
                       "model's weights and input, as zeroskip sim runs them)")
        v.add_argument("--band", type=int, metavar="N", help="verify each layer on the "
                       "first N rows of its input (every channel; padded as the layer is) "
                       "instead of the whole input")
        v.add_argument("--sim", choices=("icarus", "verilator"), help="RTL simulator "
                       "(default: $ZEROSKIP_SIM, else icarus); verilator, much faster on large "
                       "layers (scripts/bench_rtl.py), needs 'bash scripts/setup.sh --rtl'")
        add_source_options(v, topology=False)
        v.add_argument("--build", metavar="DIR", help="keep the build and logs in this folder "
                       "(default: a temporary folder, removed after a pass)")
    add_block_subcommand(sub, "verify", "run a block's RTL (cocotb on Icarus or Verilator) on "
                         "network layers and check it bit- and cycle-exactly", "verifier",
                         verify_options,
                         cmd_verify)

    d = sub.add_parser("digits", help="train/load the digits CNN, report its accuracy")
    d.add_argument("--retrain", action="store_true",
                   help="train on this machine instead of loading the shipped weights")
    d.set_defaults(func=cmd_digits)

    pr = sub.add_parser("presets", help="list every block's named configurations")
    pr.set_defaults(func=cmd_presets)

    from zeroskip.commands import fpga  # synth (Yosys + nextpnr) and gen-axi

    fpga.add_parser(sub)
    from zeroskip.commands import sweep  # design-space sweeps as Dask tasks

    sweep.add_parser(sub)
    for block in registry.names("cli"):  # each block's own subcommands and options
        registry.get_block(block).part("cli")(sub)
    return p


def add_network_options(p: argparse.ArgumentParser) -> None:
    """The workload: ``--network``, or ``--model`` / ``--topology`` (``add_source_options``),
    and ``--images``."""
    p.add_argument("--network", default=None, metavar="NAME",
                   help=f"workload: {', '.join(NETWORKS)} (default: digits, the bundled "
                        "trained net with real activations)")
    add_source_options(p)
    p.add_argument("--images", type=int, default=None, metavar="N",
                   help=f"digits images to run, 1..256 (default {DEFAULT_IMAGES}); with "
                        "--model: calibration images to simulate (default 1)")


def add_energy_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--energy-table", metavar="FILE",
                   help="JSON file {action: pJ} overriding the per-action energies of "
                        "sim/energy.py")


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, --version (0) or a one-line usage error (2)
        return e.code if isinstance(e.code, int) else 2
    try:
        args.func(args)
    except (CliError, ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"zeroskip: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("zeroskip: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
