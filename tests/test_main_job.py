"""The main job's report: totals are sums of layers, and every block's simulated outputs
equal the integer torch reference on the digits net with real activations."""

import pytest
import torch

from zeroskip import blocks
from zeroskip.models.reference import layer_forward
from zeroskip.sim import compare

SIMULATED = blocks.names("simulator")


@pytest.fixture(scope="module")
def workload():
    from zeroskip.sim import workload as wl
    return wl.load("digits", images=2)


@pytest.mark.parametrize("block", SIMULATED)
def test_block_outputs_equal_integer_reference_on_digits(block, workload):
    """One contract for every block: ``layer_outputs`` is the layer's output, pooled where the
    layer pools (on the block or by the host), as the integer reference computes it."""
    record = blocks.get_block(block)
    for i, q in enumerate(workload.quant):
        data = workload.layer_data(i)
        ref = layer_forward(torch.from_numpy(data.x), q).numpy()
        got = record.part("simulator").layer_outputs(data, q.spec, record.default.fxp)
        assert got.shape == ref.shape and (got == ref).all(), f"{block} {q.spec.name}"


def test_report_totals_are_sums_of_layers(workload):
    reports = compare.run_blocks(workload)
    rep = compare.report_dict(workload, reports)
    assert set(rep["blocks"]) == set(SIMULATED)
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
