"""RTL verification of one layer, for the tests and for ``zeroskip verify``.

A verifier takes a block config, a quantised layer and its integer input, builds the case
(integer torch reference + the simulator's cycle prediction), runs the block's cocotb
testbench on the generated Verilog with Icarus and returns what was checked. Each block
registers ``verify_layer(cfg, layer, x, build_dir) -> dict`` in ``VERIFIERS``.
"""

from __future__ import annotations

import importlib

from zeroskip.sim.systolic import Gemm, StepModel
from tb.cases import gemm_case
from tb.runner import run_rtl

VERIFIERS = {
    "systolic": "tb.verify:verify_systolic_layer",
    "combined": "tb.combined_cases:verify_combined_layer",
    "snapea": "tb.snapea_cases:verify_snapea_layer",
}


def verifier(block: str):
    try:
        module, fn = VERIFIERS[block].split(":")
    except KeyError:
        raise ValueError(f"no RTL verifier for block {block!r}; blocks with one: "
                         f"{', '.join(VERIFIERS)}")
    return getattr(importlib.import_module(module), fn)


def verify_gemm(cfg, case: dict, build_dir, valid_p=1.0, ready_p=1.0, seed=0) -> dict:
    """Run ``tb.systolic_tb`` on one GEMM case; the step model (same handshake patterns)
    predicts the cycles and every output beat's cycle, and must itself match the reference."""
    g = Gemm(case["a"], case["w"], case["bias"], case["mult"], case["shift"], case["relu"])
    outputs, trace = StepModel(cfg).run(g, valid_p, ready_p, seed)
    if not (outputs == case["expected"] & cfg.fxp.act_max).all():
        raise AssertionError("the step model's outputs differ from the integer reference")
    first = trace["cmd"][0]
    case = dict(case, cycles=trace["cycles"], out_cycles=[c - first for c in trace["out"]],
                valid_p=valid_p, ready_p=ready_p, seed=seed)
    run_rtl(cfg, "tb.systolic_tb", case, build_dir)
    return {"outputs": int(case["expected"].size), "cycles": int(trace["cycles"])}


def verify_systolic_layer(cfg, layer, x, build_dir) -> dict:
    return verify_gemm(cfg, gemm_case(layer, x), build_dir)
