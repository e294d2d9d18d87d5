"""Simulated cycles per second: the RTL on Icarus and on Verilator against the cycle-level
simulator, on the same layer.

    .venv/bin/python scripts/bench_rtl.py                     # 8x8 array, 8->16 ch 12x12 conv
    .venv/bin/python scripts/bench_rtl.py --rows 4 --cols 4 --acc-depth 32
    .venv/bin/python scripts/bench_rtl.py --sims verilator    # one simulator only

One small layer, built like ``tb/test_systolic.py`` builds its cases (``tb.cases.random_layer``
+ ``gemm_case``: random int8 weights, a random input, the integer torch reference), runs on:
- the RTL through ``tb.runner.run_rtl``, every output checked bit-exact and the cycle count
  (and each output beat's cycle) exact:
  - Icarus with the ``tb.systolic_tb`` testbench, which drives the stream ports from Python
    every cycle (the suite's Icarus harness);
  - Icarus and Verilator with the case player (``tb.player``: the streams played from
    memories in the simulator, Python only loads and checks; the suite's Verilator harness).
  Reported: the cocotb test's run (reset, simulation, checks; from ``timing.json`` in the
  test folder) as wall and as CPU seconds of the simulator process (the figure a busy
  machine does not stretch), and the whole call (case files, build or build-cache look-up,
  simulation; the first Verilator build of a config costs 20-60 s and is reused after);
- ``sim.systolic.StepModel``: the step-per-cycle model (one Python step per clock);
- ``sim.systolic.simulate_layer``: the vectorised closed form, repeated to be measurable.
Cycles are the simulator's count (first command to last output, inclusive), which the
testbench asserts the RTL matches.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from zeroskip.hw.config import SystolicConfig  # noqa: E402
from zeroskip.models.workloads import ConvLayer  # noqa: E402


def timed(fn, min_seconds: float = 0.0):
    """(result, seconds per call): one call, or repeats until ``min_seconds`` have passed."""
    reps, t0 = 0, time.perf_counter()
    while True:
        res = fn()
        reps += 1
        el = time.perf_counter() - t0
        if el >= min_seconds:
            return res, el / reps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--cols", type=int, default=8)
    ap.add_argument("--acc-depth", type=int, default=64)
    ap.add_argument("--in-ch", type=int, default=8)
    ap.add_argument("--out-ch", type=int, default=16)
    ap.add_argument("--size", type=int, default=12, help="input height and width")
    ap.add_argument("--seed", type=int, default=6)
    ap.add_argument("--keep", type=Path, help="test folders to keep (default: temporary)")
    ap.add_argument("--sims", default="icarus,verilator",
                    help="simulators to run, comma-separated (default: icarus,verilator)")
    args = ap.parse_args(argv)

    from zeroskip.sim.systolic import Gemm, StepModel, layer_cycles, simulate_layer
    from tb.cases import gemm_case, random_layer
    from tb.runner import SimulatorMissing, run_rtl
    from tb.systolic_cases import systolic_case

    try:
        cfg = SystolicConfig(rows=args.rows, cols=args.cols, acc_depth=args.acc_depth)
        spec = ConvLayer("bench", args.in_ch, args.out_ch, args.size, args.size, k=3, pad=1)
    except ValueError as e:
        sys.exit(f"error: {e}")
    layer, x = random_layer(spec, seed=args.seed, fxp=cfg.fxp)
    case = gemm_case(layer, x)
    g = Gemm(case["a"], case["w"], case["bias"], case["mult"], case["shift"], case["relu"])
    m, k, n = g.shape
    print(f"layer {args.in_ch}->{args.out_ch} ch, {args.size}x{args.size}, 3x3 pad 1: GEMM "
          f"M={m} K={k} N={n} on a {cfg.rows}x{cfg.cols} array, acc_depth {cfg.acc_depth}")

    (outputs, trace), t_step = timed(lambda: StepModel(cfg).run(g))
    cycles = trace["cycles"]
    assert (outputs == case["expected"] & cfg.fxp.act_max).all(), "step model != reference"
    assert cycles == layer_cycles(m, k, n, cfg)
    rep, t_vec = timed(lambda: simulate_layer(spec, cfg), min_seconds=0.5)
    assert rep.cycles == cycles

    rtl_case = systolic_case(cfg, case)
    runs = {"icarus": [("Icarus + Python-driven testbench", "icarus", "python"),
                       ("Icarus + case player", "icarus", "player")],
            "verilator": [("Verilator + case player", "verilator", "player")]}
    rows = []
    for sim in args.sims.split(","):
        if sim not in runs:
            sys.exit(f"error: --sims takes icarus and/or verilator, not {sim!r}")
        for name, simulator, harness in runs[sim]:
            with tempfile.TemporaryDirectory(prefix="zs-bench-rtl-") as tmp:
                build = (args.keep if args.keep else Path(tmp)) / f"{simulator}-{harness}"
                t0 = time.perf_counter()
                try:
                    run_rtl(cfg, "tb.systolic_tb", rtl_case, build, sim=simulator,
                                      harness=harness)
                except SimulatorMissing as e:
                    sys.exit(f"error: {e}")
                t_total = time.perf_counter() - t0
                timing = json.loads((build / "timing.json").read_text())
                rows.append((name, timing["wall"], timing["cpu"], t_total))

    print(f"{cycles:,} cycles (RTL == step model == vectorised; outputs bit-exact)\n")
    print("RTL run: reset, simulation and checks in the cocotb test (CPU: the simulator "
          "process's own time, which a busy machine does not stretch); call: the whole "
          "run_rtl call\n")
    print(f"{'simulator':<42}{'run s':>8}{'cycles/s':>11}{'CPU s':>8}{'cycles/CPU s':>14}"
          f"{'call s':>8}")
    for name, wall, cpu, t_total in rows:
        print(f"{'RTL: ' + name:<42}{wall:>8.3f}{cycles / wall:>11,.0f}{cpu:>8.3f}"
              f"{cycles / cpu:>14,.0f}{t_total:>8.2f}")
    for name, t in [("StepModel (step per cycle)", t_step),
                    ("simulate_layer (vectorised)", t_vec)]:
        print(f"{name:<42}{t:>8.4g}{cycles / t:>11,.0f}")
    by = {name: (wall, cpu) for name, wall, cpu, _ in rows}
    fast, base = "Verilator + case player", "Icarus + Python-driven testbench"
    for other in (base, "Icarus + case player"):
        if fast in by and other in by:
            print(f"\n{fast} / {other}: {by[other][0] / by[fast][0]:,.1f}x the cycles/s "
                  f"(run), {by[other][1] / by[fast][1]:,.1f}x per CPU second", end="")
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
