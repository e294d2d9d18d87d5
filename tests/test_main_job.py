"""The main job's report: totals are sums of layers, and every block's simulated outputs
equal the integer torch reference on the digits net with real activations."""

from dataclasses import replace

import pytest
import torch

from zeroskip.hw import config as hwcfg
from zeroskip.models.reference import layer_forward
from zeroskip.sim import compare
from zeroskip.sim.blocks import SIMULATORS, simulator

# blocks whose layer_outputs include the 2x2 max-pool of the layer
POOLED = {"nullhop"}


@pytest.fixture(scope="module")
def workload():
    from zeroskip.sim import workload as wl
    return wl.load("digits", images=2)


@pytest.mark.parametrize("block", SIMULATORS)
def test_block_outputs_equal_integer_reference_on_digits(block, workload):
    fxp = hwcfg.PRESETS[block]["default"].fxp
    for i, q in enumerate(workload.quant):
        data = workload.layer_data(i)
        spec = q.spec if block in POOLED else replace(q.spec, pool=1)
        ref = layer_forward(torch.from_numpy(data.x), replace(q, spec=spec)).numpy()
        got = simulator(block).layer_outputs(data, q.spec, fxp)
        assert got.shape == ref.shape and (got == ref).all(), f"{block} {q.spec.name}"


def test_report_totals_are_sums_of_layers(workload):
    reports = compare.run_blocks(workload)
    rep = compare.report_dict(workload, reports)
    assert set(rep["blocks"]) == set(SIMULATORS)
    for block, d in rep["blocks"].items():
        for key in ("cycles", "macs_dense", "macs_performed", "energy_pj"):
            total = sum(l[key] for l in d["layers"])
            assert d["totals"][key] == pytest.approx(total), (block, key)
        for cat, v in d["totals"]["energy_breakdown_pj"].items():
            assert v == pytest.approx(sum(l["energy_breakdown_pj"][cat] for l in d["layers"]))
    # blocks that change the network report its test accuracy in the comparison table: the
    # early-termination block (exact mode: unchanged) and the column-combined array (its
    # pruned and retrained weights); the others compute the network as it is
    acc = {row["block"]: row["accuracy"] for row in rep["comparison"]}
    assert acc["systolic"] is None and acc["nullhop"] is None
    assert 0.5 < acc["snapea"] <= 1 and 0.5 < acc["combined"] <= 1
    assert acc["combined"] == pytest.approx(reports["combined"].summary["accuracy_after"])
