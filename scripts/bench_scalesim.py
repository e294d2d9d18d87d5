"""zeroskip's dense-array simulator against SCALE-Sim v3 on the same dense layers.

    .venv/bin/python scripts/bench_scalesim.py            # VGG-16 conv3_1 + AlexNet conv1..5
    .venv/bin/python scripts/bench_scalesim.py --quick    # VGG-16 conv3_1 only
    .venv/bin/python scripts/bench_scalesim.py --layers alexnet.conv3 alexnet.conv5
    .venv/bin/python scripts/bench_scalesim.py --topology my_net.csv   # a SCALE-Sim topology

SCALE-Sim (``pip install scalesim``, 3.0.0) lives in its own venv, ``.venv-scalesim``, created
on first use with ``numpy<2.4`` (SCALE-Sim 3.0.0 crashes at the end of a layer with numpy 2.4,
and installing it into the project venv would downgrade numpy there). Its wheel ships no
config or topology files, so this script writes them. Each layer runs in its own SCALE-Sim
process through its Python API with ``save_disk_space=True`` (its CLI writes ~1.2 GB of
traces per layer).

Both simulators model a 32x32 weight-stationary array:
- SCALE-Sim: dataflow ``ws``, ``InterfaceBandwidth = CALC`` (its bandwidth-estimation mode:
  the SRAMs never stall the array, so its cycles are the array's compute schedule), SRAMs of
  256 KiB ifmap, 256 KiB filter, 128 KiB ofmap (they only size the DRAM traffic estimate in
  this mode). A padded convolution is given as its padded input (SCALE-Sim has no padding
  field); the GEMM it maps is the same ``M x K x N``.
- zeroskip: ``sim.systolic.simulate_layer`` with ``SystolicConfig(rows=32, cols=32,
  acc_depth=M)``: the partial-sum memory holds every output pixel of the layer, so a fold
  streams all ``M`` pixels once, as SCALE-Sim's folds do (``--acc-depth`` to change it).

Per fold (one ``rows x cols`` weight tile; ``folds = ceil(K/rows) * ceil(N/cols)``):
- SCALE-Sim ws (``compute/systolic_compute_ws.py``): the fold's demand matrices are
  ``rows`` weight-load lines + ``T`` ifmap lines + ``cols - 1`` drain lines, skewed by
  ``rows - 1``: ``2*rows + cols + T - 2`` cycles, folds back to back, nothing overlapped;
  it reports the 0-based index of the last cycle, i.e. the total minus 1.
- zeroskip (``SystolicConfig.layer_cycles``, the schedule in ``SystolicBlock``'s docstring):
  folds overlap on two weight banks. A fold's ``rows`` weight beats shift into the idle bank
  while the previous fold streams, and its ``T`` activation beats follow the previous
  fold's last one in the next cycle while that one drains; every cell picks its weight by
  the bank bit that rides with each activation. With ``T >= 2*rows + cols + 4`` the
  activation stream never pauses, so a layer takes ``1 + rows + 1 + folds * T`` cycles to
  its last activation beat (command, first weight load, the cycle for the last row to enter
  the array) plus ``pipeline_latency`` (``rows + cols + 1`` array, 1 partial-sum stage,
  the requantiser's 7 stages, the output FIFO's 1) to the last output beat, inclusive:
  ``folds * T + 2*rows + cols + 12``.
Difference per fold: zeroskip hides all of SCALE-Sim's ``2*rows + cols - 2`` per-fold
lines (``rows`` weight load, ``rows - 1`` skew, ``cols - 1`` drain); per layer it pays
``2*rows + cols + 12`` once (the first load and the last drain) and SCALE-Sim's 0-based
report adds 1: ``zeroskip - SCALE-Sim = 2*rows + cols + 13 - folds * (2*rows + cols - 2)``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from zeroskip.hw.config import SystolicConfig, ceil_div  # noqa: E402
from zeroskip.models.workloads import ConvLayer, network_layers  # noqa: E402

VENV = ROOT / ".venv-scalesim"
PIP_SPEC = ["scalesim==3.0.0", "numpy<2.4"]
ROWS = COLS = 32
SRAM_KB = {"ifmap": 256, "filter": 256, "ofmap": 128}
DEFAULT_LAYERS = ["vgg16.conv3_1", "alexnet.conv1", "alexnet.conv2", "alexnet.conv3",
                  "alexnet.conv4", "alexnet.conv5"]

SCALESIM_CFG = """[general]
run_name = zeroskip_bench

[architecture_presets]
ArrayHeight : {rows}
ArrayWidth : {cols}
IfmapSramSzkB : {ifmap}
FilterSramSzkB : {filter}
OfmapSramSzkB : {ofmap}
IfmapOffset : 0
FilterOffset : 10000000
OfmapOffset : 20000000
Dataflow : ws
Bandwidth : 10
ReadRequestBuffer : 32
WriteRequestBuffer : 32

[layout]
IfmapCustomLayout : False
IfmapSRAMBankBandwidth : 10
IfmapSRAMBankNum : 10
IfmapSRAMBankPort : 2
FilterCustomLayout : False
FilterSRAMBankBandwidth : 10
FilterSRAMBankNum : 10
FilterSRAMBankPort : 2

[sparsity]
SparsitySupport : false
SparseRep : ellpack_block
OptimizedMapping : false
BlockSize : 8
RandomNumberGeneratorSeed : 40

[run_presets]
InterfaceBandwidth : CALC
UseRamulatorTrace : False
"""

# Runs inside .venv-scalesim, one layer per process; prints one JSON line.
SCALESIM_RUNNER = r"""
import contextlib, io, json, sys, time
t0 = time.perf_counter()
from scalesim.scale_sim import scalesim
d = sys.argv[1]
t1, c1 = time.perf_counter(), time.process_time()
with contextlib.redirect_stdout(io.StringIO()):  # it prints a banner and per-layer lines
    s = scalesim(save_disk_space=True, verbose=False, config=d + "/scale.cfg",
                 topology=d + "/topology.csv", layout=d + "/layout.csv")
    s.run_scale(top_path=d + "/out")
t2, c2 = time.perf_counter(), time.process_time()
layer = s.runner.single_layer_sim_object_list[0]
overall, total, stall, util, mapping, comp_util = layer.get_compute_report_items()
import resource
print(json.dumps({"cycles": int(total), "cycles_incl_prefetch": int(overall),
                  "stall_cycles": int(stall), "utilization_pct": float(util),
                  "import_s": t1 - t0, "sim_s": t2 - t1, "sim_cpu_s": c2 - c1,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


DIFFERENCE = """Every term of the difference (zeroskip - SCALE-Sim = 109 - folds * 94 on 32x32
when one pass holds all M pixels and M >= 2*rows + cols + 4 = 100):
  per fold -32 SCALE-Sim's rows weight-load lines: zeroskip shifts the next fold's weights
               into the cells' second bank while the current fold streams, so no cycle waits
               for them (``ProcessingElement``: two banks, the selected one registered beside
               the activation);
  per fold -62 SCALE-Sim's skew (rows - 1) and drain (cols - 1) lines: zeroskip's next fold
               enters the array the cycle after the current fold's last vector, while that
               one is still in the skew, the array and the drain; each vector carries its
               bank bit through the skew, along the rows and down the pipeline, so every cell,
               the partial-sum memory and the requantisers use its own fold's weights and
               command;
  per layer +34 zeroskip's first fold: its command beat (1), rows weight beats (32) and the
               cycle the last weight row takes to enter the array (1), before any activation;
  per layer +74 after the last activation: the array latency rows + cols + 1 = 65 (the
               activation register into the first PE column, each PE's product register, the
               sum leaving the last PE row, the de-skew), the partial-sum stage (1), the
               requantiser's 7 stages and the output FIFO (1);
  per layer +1 SCALE-Sim reports the 0-based index of its last cycle (cycles - 1).
Equal in both: T = M activation vectors per fold, one per cycle; no stalls (SCALE-Sim CALC
mode, zeroskip streams offered every cycle). Not modelled by SCALE-Sim's ws cycle count:
reading partial sums back between row folds (zeroskip reads them inside the pipeline, so it
costs no cycle; the next K tile's vector j reads its sums at least 3 cycles after the previous
fold's write, which the back-to-back stream satisfies whenever a fold holds >= 3 vectors).
Where zeroskip is slower: a fold of fewer than 2*rows + cols + 4 vectors (e.g. the last
chunk of a layer split into acc_depth chunks) cannot hide the next-but-one fold's command
and weight load, which wait for its bank to free; SystolicConfig.layer_cycles counts it."""


def ensure_venv() -> Path:
    """The SCALE-Sim venv's python, created and populated on first use."""
    py = VENV / "bin" / "python"
    if not py.exists():
        print(f"creating {VENV} and installing {' '.join(PIP_SPEC)} (one time) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *PIP_SPEC], check=True)
    probe = subprocess.run([str(py), "-c", "import scalesim.scale_sim"], capture_output=True)
    if probe.returncode:
        subprocess.run([str(py), "-m", "pip", "install", "-q", *PIP_SPEC], check=True)
    return py


def find_layer(name: str) -> ConvLayer:
    try:
        net, layer = name.split(".", 1)
    except ValueError:
        raise ValueError(f"layer {name!r} must be written NETWORK.LAYER, e.g. vgg16.conv3_1")
    layers = {l.name: l for l in network_layers(net)}
    if layer not in layers:
        raise ValueError(f"network {net!r} has no layer {layer!r}; it has {', '.join(layers)}")
    return layers[layer]


def scalesim_fold_cycles(t: int, rows: int = ROWS, cols: int = COLS) -> int:
    """SCALE-Sim ws: rows weight-load lines + T ifmap lines + (cols - 1) drain lines, skewed
    over rows - 1 extra lines (``create_*_demand_mat`` in ``compute/systolic_compute_ws.py``)."""
    return rows + t + (cols - 1) + (rows - 1)


def scalesim_layer_cycles(spec: ConvLayer, rows: int = ROWS, cols: int = COLS) -> int:
    """SCALE-Sim's reported "Total Cycles" in its stall-free CALC mode: the demand lines of
    all folds back to back, reported as the 0-based index of the last line (one less than
    the number of cycles; ``double_buffered_scratchpad.service_memory_requests``)."""
    return folds(spec, rows, cols) * scalesim_fold_cycles(spec.gemm[0], rows, cols) - 1


def folds(spec: ConvLayer, rows: int = ROWS, cols: int = COLS) -> int:
    m, k, n = spec.gemm
    return ceil_div(k, rows) * ceil_div(n, cols)


def run_scalesim(py: Path, spec: ConvLayer, workdir: Path) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "scale.cfg").write_text(SCALESIM_CFG.format(rows=ROWS, cols=COLS, **SRAM_KB))
    h, w = spec.in_h + 2 * spec.pad, spec.in_w + 2 * spec.pad
    (workdir / "topology.csv").write_text(
        "Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, "
        "Num Filter, Strides,\n"
        f"{spec.name}, {h}, {w}, {spec.k}, {spec.k}, {spec.in_ch}, {spec.out_ch}, "
        f"{spec.stride},\n")
    # only read when a custom layout is enabled (it is not); the loader needs the file
    (workdir / "layout.csv").write_text(
        "Layer name, IFMAP intraline factor, FILTER intraline factor,\n"
        f"{spec.name}, 1, 1,\n")
    t0 = time.perf_counter()
    proc = subprocess.run([str(py), "-c", SCALESIM_RUNNER, str(workdir)], capture_output=True,
                          text=True, cwd=workdir)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"SCALE-Sim failed on {spec.name}:\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["process_s"] = wall
    return res


def run_zeroskip(spec: ConvLayer, acc_depth: int | None, min_seconds: float = 0.5) -> dict:
    from zeroskip.sim.systolic import simulate_layer

    m = spec.gemm[0]
    cfg = SystolicConfig(rows=ROWS, cols=COLS, acc_depth=acc_depth or m)
    rep = simulate_layer(spec, cfg)  # warm-up (first call pays lazy imports)
    reps, t0, c0 = 0, time.perf_counter(), time.process_time()
    while True:
        rep = simulate_layer(spec, cfg)
        reps += 1
        el = time.perf_counter() - t0
        if el >= min_seconds:
            break
    cpu = time.process_time() - c0
    return {"cycles": rep.cycles, "seconds": el / reps, "cpu_s": cpu / reps, "repeats": reps,
            "cfg": cfg}


def run_step_model(name: str, spec: ConvLayer, cfg: SystolicConfig, wl=None) -> dict:
    """zeroskip's step-per-cycle model on the layer with the workload's seeded int8 data;
    its outputs are checked against ``sim.systolic.array_outputs``."""
    import numpy as np
    from numpy.lib.stride_tricks import sliding_window_view

    from zeroskip.sim import workload
    from zeroskip.sim.systolic import Gemm, StepModel, array_outputs

    wl = wl or workload.load(name.split(".", 1)[0])
    data = wl.layer_data([l.name for l in wl.layers].index(spec.name))
    x = np.pad(data.x, ((0, 0), (spec.pad, spec.pad), (spec.pad, spec.pad)))
    win = sliding_window_view(x, (spec.k, spec.k), axis=(1, 2))[:, ::spec.stride, ::spec.stride]
    a = win.transpose(1, 2, 0, 3, 4).reshape(spec.out_h * spec.out_w, -1)
    g = Gemm(a, data.w.reshape(spec.out_ch, -1).T, data.bias, data.mult, data.shift, spec.relu)
    t0, c0 = time.perf_counter(), time.process_time()
    out, trace = StepModel(cfg).run(g)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    ref = array_outputs(data, spec, cfg.fxp).reshape(spec.out_ch, -1).T & cfg.fxp.act_max
    if not (out == ref).all():
        raise RuntimeError(f"step model outputs differ from array_outputs on {name}")
    return {"cycles": trace["cycles"], "seconds": wall, "cpu_s": cpu}


def explain(name: str, spec: ConvLayer, ss: dict | None, zs: dict) -> list[str]:
    m, k, n = spec.gemm
    f = folds(spec)
    cfg = zs["cfg"]
    chunks = ceil_div(m, cfg.acc_depth)
    lines = [f"{name}: M={m} output pixels, K={k}, N={n}; folds = ceil({k}/{ROWS}) * "
             f"ceil({n}/{COLS}) = {f}"]
    ss_formula = scalesim_layer_cycles(spec)
    line = (f"  SCALE-Sim ws: folds * (2*{ROWS} + {COLS} + T - 2) - 1 = {f} * "
            f"{scalesim_fold_cycles(m)} - 1 = {ss_formula:,}")
    if ss:
        off = ss["cycles"] - ss_formula
        line += (f"; measured {ss['cycles']:,} ("
                 + ("formula matches" if off == 0 else f"formula off by {off:+,}")
                 + f"), stalls {ss['stall_cycles']}, incl. DRAM prefetch "
                 f"{ss['cycles_incl_prefetch']:,}")
    lines.append(line)
    pl = cfg.pipeline_latency  # the array, the partial-sum stage, requantiser and FIFO
    streaming = chunks == 1 and m >= 2 * ROWS + COLS + 4
    if streaming:
        zs_formula = 1 + ROWS + 1 + f * m + pl
        if zs_formula != zs["cycles"]:
            raise RuntimeError(f"{name}: simulate_layer's {zs['cycles']:,} cycles differ from "
                               f"the streaming formula's {zs_formula:,}")
        lines.append(f"  zeroskip:     1 + {ROWS} + 1 + folds * T + pipeline_latency = "
                     f"1 + {ROWS} + 1 + {f} * {m} + {pl} = {zs_formula:,}; "
                     f"measured {zs['cycles']:,}")
    else:
        lines.append(f"  zeroskip:     the SystolicConfig.layer_cycles recurrence over {chunks} "
                     f"chunks x {f} folds (passes of {cfg.acc_depth} pixels do not hide every "
                     f"load when short): measured {zs['cycles']:,}")
    if ss:
        d = zs["cycles"] - ss["cycles"]
        hidden = 2 * ROWS + COLS - 2
        line = f"  difference zeroskip - SCALE-Sim = {d:+,}"
        if streaming:
            once = 1 + ROWS + 1 + pl + 1
            line += (f" = {once} - folds * {hidden} = {once} - {f} * {hidden}"
                     + (" (matches)" if d == once - f * hidden else " (formula off)"))
        lines.append(line)
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", nargs="+", default=DEFAULT_LAYERS, metavar="NET.LAYER",
                    help=f"layers to run (default: {' '.join(DEFAULT_LAYERS)})")
    ap.add_argument("--quick", action="store_true", help="only vgg16.conv3_1")
    ap.add_argument("--topology", type=Path, metavar="FILE.csv",
                    help="every layer of a SCALE-Sim topology file (conv or GEMM format) "
                         "instead of --layers")
    ap.add_argument("--acc-depth", type=int, default=None,
                    help="zeroskip partial-sum memory depth (default: the layer's M)")
    ap.add_argument("--no-scalesim", action="store_true",
                    help="only run zeroskip (prints the SCALE-Sim formula, not its measurement)")
    ap.add_argument("--step-model", action="store_true",
                    help="also time zeroskip's step-per-cycle model (StepModel) on each layer")
    ap.add_argument("--json", type=Path, help="also write the measurements to this file")
    args = ap.parse_args(argv)
    names = ["vgg16.conv3_1"] if args.quick else args.layers
    wl = None
    try:
        if args.topology:
            from zeroskip.models.topology import load_workload

            wl = load_workload(args.topology)
            specs = [(f"{wl.name}.{l.name}", l) for l in wl.layers]
        else:
            specs = [(name, find_layer(name)) for name in names]
    except ValueError as e:
        sys.exit(f"error: {e}")

    py = None if args.no_scalesim else ensure_venv()
    rows, notes = [], []
    with tempfile.TemporaryDirectory(prefix="zs-scalesim-") as tmp:
        for name, spec in specs:
            zs = run_zeroskip(spec, args.acc_depth)
            if args.step_model:
                print(f"StepModel on {name} ...", flush=True)
                zs["step"] = run_step_model(name, spec, zs["cfg"], wl)
                if zs["step"]["cycles"] != zs["cycles"]:
                    raise RuntimeError(f"StepModel and simulate_layer disagree on {name}")
            ss = None
            if py:
                print(f"SCALE-Sim on {name} ...", flush=True)
                ss = run_scalesim(py, spec, Path(tmp) / name)
            rows.append((name, spec, ss, zs))
            ratio = f"{ss['sim_s'] / zs['seconds']:,.0f}x" if ss else "-"
            got = f"SCALE-Sim {ss['cycles']:,} cycles {ss['sim_s']:.1f} s; " if ss else ""
            print(f"  {name}: {got}zeroskip {zs['cycles']:,} cycles "
                  f"{zs['seconds'] * 1e6:.0f} us; ratio {ratio}", flush=True)
            notes += explain(name, spec, ss, zs)

    print()
    hdr = (f"{'layer':<16}{'SCALE-Sim cycles':>18}{'zeroskip cycles':>17}{'SCALE-Sim s':>13}"
           f"{'(process s)':>13}{'zeroskip s':>13}{'speed ratio':>13}{'CPU ratio':>13}")
    print(hdr)
    out = []
    for name, spec, ss, zs in rows:
        ratio = ss["sim_s"] / zs["seconds"] if ss else None
        c_ss = f"{ss['cycles']:,}" if ss else "-"
        s_ss = f"{ss['sim_s']:.2f}" if ss else "-"
        p_ss = f"{ss['process_s']:.2f}" if ss else "-"
        r = f"{ratio:,.0f}x" if ratio else "-"
        cpu_ratio = ss["sim_cpu_s"] / zs["cpu_s"] if ss else None
        rc = f"{cpu_ratio:,.0f}x" if ss else "-"
        print(f"{name:<16}{c_ss:>18}{zs['cycles']:>17,}{s_ss:>13}{p_ss:>13}"
              f"{zs['seconds']:>13.2e}{r:>13}{rc:>13}")
        out.append({"layer": name, "gemm_mkn": spec.gemm, "folds": folds(spec),
                    "scalesim": ss, "zeroskip": {k: v for k, v in zs.items() if k != "cfg"},
                    "zeroskip_acc_depth": zs["cfg"].acc_depth, "speed_ratio": ratio,
                    "cpu_ratio": cpu_ratio})
    if all(ss for _, _, ss, _ in rows):
        tss = sum(ss["sim_s"] for _, _, ss, _ in rows)
        tzs = sum(zs["seconds"] for _, _, _, zs in rows)
        css = sum(ss["sim_cpu_s"] for _, _, ss, _ in rows)
        czs = sum(zs["cpu_s"] for _, _, _, zs in rows)
        print(f"{'total':<16}{'':>18}{'':>17}{tss:>13.2f}{'':>13}{tzs:>13.2e}"
              f"{tss / tzs:>12,.0f}x{css / czs:>12,.0f}x")
    print("\nSCALE-Sim s: its simulation call (run_scale) alone; (process s): its whole process"
          "\nincluding interpreter start and imports; zeroskip s: one simulate_layer call,"
          "\naveraged over repeats. Speed ratio = SCALE-Sim s / zeroskip s (wall); CPU ratio = the"
          "\nsame with CPU time (process_time), less sensitive to other load on the machine."
          f"\nLoad average after the run: {', '.join(f'{x:.2f}' for x in os.getloadavg())} on "
          f"{os.cpu_count()} CPUs.\n")
    if args.step_model:
        print(f"{'layer':<16}{'StepModel cycles':>18}{'wall s':>10}{'CPU s':>10}"
              f"{'cycles/s':>12}{'SCALE-Sim s / StepModel s':>28}")
        for name, spec, ss, zs in rows:
            st = zs["step"]
            r = f"{ss['sim_s'] / st['seconds']:.1f}x" if ss else "-"
            print(f"{name:<16}{st['cycles']:>18,}{st['seconds']:>10.2f}{st['cpu_s']:>10.2f}"
                  f"{st['cycles'] / st['seconds']:>12,.0f}{r:>28}")
        print()
    print("\n".join(notes))
    print("\n" + DIFFERENCE)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
