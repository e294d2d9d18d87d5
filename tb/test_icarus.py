"""The small set of RTL tests that stays on Icarus (the suite's RTL tests run on Verilator by
default, ``tb.runner``): for every block, a case with input gaps and output backpressure on
Icarus with the block's own cocotb bench, which drives the stream ports from Python each
cycle. The same cases pass through the case player on Verilator (``tb/test_*.py``), so the
two harnesses and the two simulators are held to the same outputs and the same cycle of
every output beat."""

import pytest

from zeroskip.hw.config import CombinedConfig, SystolicConfig
from zeroskip.models import column_combining as cc
from zeroskip.models.workloads import ConvLayer
from tb import test_nullhop, test_snapea
from tb.cases import gemm_case, random_layer
from tb.combined_cases import packed_case
from tb.nullhop_cases import nullhop_case
from tb import runner
from tb.runner import run_rtl
from tb.snapea_cases import snapea_case
from tb.systolic_cases import systolic_case

RAGGED = ConvLayer("c", 3, 5, 6, 5, k=3, pad=1)


def systolic():
    cfg = SystolicConfig(rows=4, cols=3, acc_depth=24)
    layer, x = random_layer(RAGGED, seed=7, fxp=cfg.fxp)
    return cfg, "tb.systolic_tb", systolic_case(cfg, gemm_case(layer, x), 0.7, 0.6, 3)


def combined():
    cfg = CombinedConfig(rows=4, cols=3, acc_depth=24, alpha=4, gamma=0.5)
    layer, x = random_layer(RAGGED, seed=7, fxp=cfg.fxp)
    packing = cc.prune_and_pack(layer.weight_matrix.numpy(), 4, 0.5, sparsity=0.6)
    return cfg, "tb.combined_tb", packed_case(cfg, layer, x, packing, 0.7, 0.6, 3)


def nullhop():
    cfg = test_nullhop.CONFIGS["8mac-sm16"]
    spec, density = test_nullhop.SHAPES["conv3x3-pool"]
    layer, x = random_layer(spec, seed=5, fxp=cfg.fxp, density=density)
    return cfg, "tb.nullhop_tb", nullhop_case(cfg, layer, x, 0.7, 0.6, 3)


def snapea():
    spec, size = test_snapea.RANDOM["conv-bands"]
    cfg = test_snapea.CONFIGS[size]
    layer, x = random_layer(spec, seed=5, fxp=cfg.fxp, density=0.5)
    case = snapea_case(cfg, layer, x, test_snapea.some_params(layer, 2), valid_p=0.6,
                       ready_p=0.7, seed=2)
    return cfg, "tb.snapea_tb", case


CASES = {"systolic": systolic, "combined": combined, "nullhop": nullhop, "snapea": snapea}


@pytest.mark.rtl
@pytest.mark.parametrize("block", CASES)
def test_icarus_with_the_python_driven_bench(block, tmp_path):
    cfg, bench, case = CASES[block]()
    run_rtl(cfg, bench, case, tmp_path, sim="icarus")


@pytest.mark.rtl
@pytest.mark.parametrize("block", CASES)
def test_verilator_player_on_the_same_cases(block, tmp_path):
    cfg, bench, case = CASES[block]()
    run_rtl(cfg, bench, case, tmp_path, sim="verilator")
    # after any Verilator build the runtime library is kept for the next builds to copy
    rt = runner._runtime_dir(runner.find_verilator()[0])
    objects = sorted(f.name for f in rt.glob(runner.RUNTIME_GLOB))
    assert "verilated.o" in objects and all((rt / o).with_suffix(".d").exists() for o in objects)
