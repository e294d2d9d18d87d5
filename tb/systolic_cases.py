"""Cases for the dense systolic array's RTL: a layer as the block's GEMM, its integer torch
reference and the step model's cycle prediction; ``verify_layer`` for ``zeroskip verify``."""

from __future__ import annotations

from zeroskip.hw.layouts import systolic_layouts
from zeroskip.sim.systolic import Gemm, StepModel, pass_beats, plan_layer
from tb.cases import gemm_case, gemm_stream_case
from tb.runner import run_rtl
from tb.scoreboard import Case


def gemm(case: dict) -> Gemm:
    return Gemm(case["a"], case["w"], case["bias"], case["mult"], case["shift"], case["relu"])


def systolic_case(cfg, case: dict, valid_p=1.0, ready_p=1.0, seed=0) -> Case:
    """The ``Case`` of one GEMM (``tb.cases.gemm_case``) on the array."""
    g = gemm(case)
    m, k, n = g.shape
    return gemm_stream_case(systolic_layouts(cfg), g, plan_layer(m, k, n, cfg),
                            lambda p: pass_beats(g, p, cfg), lambda p: min(cfg.cols, n - p.n0),
                            StepModel(cfg), case["expected"], cfg.fxp, valid_p, ready_p, seed)


def verify_gemm(cfg, case: dict, build_dir, valid_p=1.0, ready_p=1.0, seed=0) -> dict:
    """Run ``tb.systolic_tb`` on one GEMM case: outputs against the integer reference, total
    and per-beat cycles against the step model (same handshake patterns)."""
    c = systolic_case(cfg, case, valid_p, ready_p, seed)
    run_rtl(cfg, "tb.systolic_tb", c, build_dir)
    return {"outputs": int(case["expected"].size), "cycles": c.cycles}


def verify_layer(cfg, layer, x, build_dir) -> dict:
    return verify_gemm(cfg, gemm_case(layer, x), build_dir)
