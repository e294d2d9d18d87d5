"""Simulated cycles per second: the RTL (Icarus via cocotb) against the cycle-level simulator.

    .venv/bin/python scripts/bench_rtl.py                     # 8x8 array, 8->16 ch 12x12 conv
    .venv/bin/python scripts/bench_rtl.py --rows 4 --cols 4 --acc-depth 32

One small layer, built like ``tb/test_systolic.py`` builds its cases (``tb.cases.random_layer``
+ ``gemm_case``: random int8 weights, a random input, the integer torch reference), runs on:
- the RTL: ``tb.runner.run_rtl`` with the ``tb.systolic_tb`` testbench, which drives the
  generated Verilog's stream ports from Python every cycle and checks every output bit-exact
  and the cycle count exact. Reported: the cocotb test's own time (from ``results.xml``; the
  Icarus simulation with the testbench) and the whole call (Verilog generation, Icarus
  compile, simulation);
- ``sim.systolic.StepModel``: the step-per-cycle model (one Python step per clock);
- ``sim.systolic.simulate_layer``: the vectorised closed form, repeated to be measurable.
Cycles are the simulator's count (first command to last output, inclusive), which the
testbench asserts the RTL matches.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
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
    ap.add_argument("--keep", type=Path, help="build folder to keep (default: a temp folder)")
    args = ap.parse_args(argv)

    from zeroskip.sim.systolic import Gemm, StepModel, layer_cycles, simulate_layer
    from tb.cases import gemm_case, random_layer
    from tb.runner import run_rtl
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
    with tempfile.TemporaryDirectory(prefix="zs-bench-rtl-") as tmp:
        build = args.keep or Path(tmp)
        t0 = time.perf_counter()
        results = run_rtl(cfg, "tb.systolic_tb", rtl_case, build)
        t_rtl_total = time.perf_counter() - t0
        tc = ET.parse(results).getroot().find(".//testcase")
        t_rtl = float(tc.get("time"))

    print(f"{cycles:,} cycles (RTL == step model == vectorised; outputs bit-exact)\n")
    print(f"{'simulator':<44}{'wall s':>12}{'cycles/s':>16}")
    for name, t in [("RTL: Icarus + cocotb testbench (test only)", t_rtl),
                    ("RTL: generate + compile + simulate", t_rtl_total),
                    ("StepModel (step per cycle)", t_step),
                    ("simulate_layer (vectorised)", t_vec)]:
        print(f"{name:<44}{t:>12.4g}{cycles / t:>16,.0f}")
    print(f"\nStepModel is {t_rtl / t_step:,.1f}x faster than the RTL test, simulate_layer "
          f"{t_rtl / t_vec:,.0f}x.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
