"""RTL regression of the AXI4-Stream top levels (``hw.axi.AxiTop``) with cocotbext-axi
sources and sinks: outputs bit-identical to the integer torch reference with random idle
cycles and backpressure, and, without either, the cycle count the simulator predicts plus
the wrapper's fixed ``AXI_LATENCY``. Also the Verilator lint of every block's top levels.

Each block adds a function ``(cfg, layer, x) -> Case`` to ``STREAMS``: its own bench's
``tb.scoreboard.Case`` with every input valid and every output ready, whose cycle count is that
of the bare block.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from zeroskip.blocks import get_block, names
from zeroskip.hw.axi import AXI_LATENCY, axi_ports, generate_axi
from zeroskip.hw.config import CombinedConfig, NullHopConfig, SnaPEAConfig, SystolicConfig
from zeroskip.models import column_combining as cc
from zeroskip.models.workloads import ConvLayer
from tb.cases import gemm_case, random_layer
from tb.combined_cases import packed_case
from tb.nullhop_cases import nullhop_case
from tb.runner import run_rtl
from tb.scoreboard import Case
from tb.snapea_cases import snapea_case
from tb.systolic_cases import systolic_case


def combined_streams(cfg, layer, x) -> Case:
    """The layer pruned and packed (alpha, gamma of the config); the reference is the plain
    integer convolution on the pruned, conflict-free weights."""
    packing = cc.prune_and_pack(layer.weight_matrix.numpy(), cfg.alpha, cfg.gamma, 0.6)
    return packed_case(cfg, layer, x, packing)


STREAMS = {
    "systolic": lambda cfg, layer, x: systolic_case(cfg, gemm_case(layer, x)),
    # compressed (SM + NZVL) words in and out, checked to decode to the reference
    "nullhop": nullhop_case,
    # exact mode: with ReLU the block stops a window once its sum can only fall, which the
    # reference's ReLU makes invisible
    "snapea": lambda cfg, layer, x: snapea_case(cfg, layer, x, None, layer.spec.relu),
    "combined": combined_streams,
}

SMALL = {
    "systolic": SystolicConfig(rows=4, cols=3, acc_depth=24),
    "nullhop": NullHopConfig(macs=4, sm_bits=8, kernel_depth=256, acc_depth=128, max_dim=16,
                             max_k=5),
    "snapea": SnaPEAConfig(lanes=2, max_taps=512, act_depth=1024, max_windows=32),
    "combined": CombinedConfig(rows=4, cols=3, acc_depth=24, alpha=4, gamma=0.5),
}
SHAPE = ConvLayer("c", 3, 5, 6, 5, k=3, pad=1)  # K=27, N=5, M=30: ragged on every axis


def axi_case(cfg, layer, x, max_bytes, valid_p=1.0, ready_p=1.0, seed=0) -> Case:
    block = STREAMS[cfg.block](cfg, layer, x)
    single_beat = all(p.beats == 1 for p in axi_ports(cfg, max_bytes))
    # the prediction holds for one beat per payload, no idle cycles and no backpressure
    cycles = block.cycles + AXI_LATENCY if single_beat and valid_p == ready_p == 1.0 else -1
    return replace(block, cycles=cycles, out_cycles={}, valid_p=valid_p, ready_p=ready_p,
                   seed=seed, extra={"max_bytes": max_bytes})


RUNS = {
    # id: (max_bytes, valid_p, ready_p, seed)
    "one-beat-no-stalls": (64, 1.0, 1.0, 0),
    "one-beat-backpressure": (64, 0.6, 0.5, 1),
    "two-byte-bus-backpressure": (2, 0.7, 0.4, 2),
}


@pytest.mark.rtl
@pytest.mark.parametrize("run", RUNS)
@pytest.mark.parametrize("block", STREAMS)
def test_axi_top_matches_reference(block, run, tmp_path):
    """Random tvalid gaps and tready backpressure never drop or duplicate a beat: outputs
    equal the integer reference; without stalls the cycle count is the simulator's."""
    cfg = SMALL[block]
    max_bytes, valid_p, ready_p, seed = RUNS[run]
    layer, x = random_layer(SHAPE, seed=11, fxp=cfg.fxp)
    case = axi_case(cfg, layer, x, max_bytes, valid_p, ready_p, seed)
    run_rtl(cfg, "tb.axi_tb", case, tmp_path,
            generator=lambda c, d: generate_axi(c, d, max_bytes))


@pytest.mark.rtl
@pytest.mark.parametrize("block", STREAMS)
def test_axi_top_on_digits_layer(block, digits, tmp_path):
    """The classifier of the trained digits net (signed outputs, no ReLU) with the real
    activations of a test image, an 8-byte bus and backpressure."""
    cfg = SMALL[block]
    idx = [l.spec.name for l in digits.layers].index("fc2")
    case = axi_case(cfg, digits.layers[idx], digits.inputs[idx][0], 8, 0.8, 0.7, 5)
    run_rtl(cfg, "tb.axi_tb", case, tmp_path, generator=lambda c, d: generate_axi(c, d, 8))


def _lint_configs():
    for block in names("rtl"):
        yield pytest.param(block, "block", id=f"{block}-block")
        yield pytest.param(block, "axi", id=f"{block}-axi")


@pytest.mark.parametrize("block,top", list(_lint_configs()))
def test_generated_verilog_is_lint_clean(block, top, tmp_path):
    """``verilator --lint-only -Wall`` reports nothing beyond the waivers in hw/lint.py, for
    the default configuration of every block, bare and behind its AXI4-Stream top."""
    import shutil

    from zeroskip.hw.gen import generate
    from zeroskip.hw.lint import VERILATOR_HINT, lint

    if not shutil.which("verilator"):
        pytest.skip(VERILATOR_HINT)
    cfg = get_block(block).default
    vpath = generate_axi(cfg, tmp_path) if top == "axi" else generate(cfg, tmp_path)
    issues = lint(vpath, vpath.stem)
    assert not issues, "\n".join(issues[:20])
