"""Dense array simulator: the vectorised count equals the step-per-cycle model, which equals
the integer torch reference."""

import numpy as np
import pytest

from zeroskip.hw.config import SystolicConfig
from zeroskip.models.reference import layer_forward
from zeroskip.models.workloads import ConvLayer, fc, vgg16
from zeroskip.sim import systolic
from zeroskip.sim.systolic import Gemm, StepModel, layer_cycles, plan_layer
from tb.cases import gemm_case, random_layer

CONFIGS = [SystolicConfig(1, 1, 1), SystolicConfig(2, 3, 5), SystolicConfig(4, 4, 16),
           SystolicConfig(8, 5, 7)]
SHAPES = [ConvLayer("c", 3, 5, 6, 5, k=3, pad=1), ConvLayer("s", 2, 3, 7, 7, k=3, stride=2),
          fc("f", 13, 4, relu=False), ConvLayer("p", 1, 2, 2, 2, k=1)]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.rows}x{c.cols}d{c.acc_depth}")
@pytest.mark.parametrize("spec", SHAPES, ids=lambda s: s.name)
def test_step_model_matches_reference_and_closed_form(cfg, spec):
    layer, x = random_layer(spec, seed=1, fxp=cfg.fxp)
    case = gemm_case(layer, x)
    g = Gemm(case["a"], case["w"], case["bias"], case["mult"], case["shift"], case["relu"])
    out, trace = StepModel(cfg).run(g)
    assert (out == case["expected"] & 0xFF).all()
    assert trace["cycles"] == layer_cycles(*g.shape, cfg)
    assert trace["cycles"] == systolic.simulate_layer(spec, cfg).cycles


def test_step_model_under_stalls_keeps_outputs_and_costs_cycles():
    cfg = SystolicConfig(3, 2, 4)
    layer, x = random_layer(SHAPES[0], seed=2)
    case = gemm_case(layer, x)
    g = Gemm(case["a"], case["w"], case["bias"], case["mult"], case["shift"], case["relu"])
    out, tr = StepModel(cfg).run(g)
    out2, tr2 = StepModel(cfg).run(g, valid_p=0.5, ready_p=0.5, seed=9)
    assert (out == out2).all()
    assert tr2["cycles"] > tr["cycles"]


def test_layer_outputs_match_torch_reference():
    spec = ConvLayer("c", 4, 6, 7, 6, k=3, stride=2, pad=1)
    layer, x = random_layer(spec, seed=3)
    from zeroskip.sim.workload import LayerData
    data = LayerData(x.numpy(), layer.weight.numpy(), layer.bias.numpy(), layer.mult.numpy(),
                     layer.shift.numpy())
    ref = layer_forward(x, layer).numpy()
    assert (systolic.layer_outputs(data, spec, layer.fxp) == ref).all()


def test_plan_covers_every_output_once():
    cfg = SystolicConfig(4, 3, 10)
    m, k, n = 23, 9, 7
    seen = np.zeros((m, n), int)
    for p in plan_layer(m, k, n, cfg):
        if p.emit:
            seen[p.m0:p.m0 + p.count, p.n0:p.n0 + cfg.cols] += 1
    assert (seen[:, :n] == 1).all()


def test_vgg16_counts():
    layers = vgg16()
    assert sum(l.kind == "conv" for l in layers) == 13 and sum(l.kind == "fc" for l in layers) == 3
    # VGG-16 is ~15.5 GMAC per 224x224 image (Simonyan & Zisserman; Canziani et al. 2016)
    assert 15.3e9 < sum(l.macs for l in layers) < 15.6e9
    rep = systolic.simulate_network(type("W", (), {"layers": layers, "batch": 1,
                                                     "description": "vgg16"})(),
                                    SystolicConfig(32, 32, 1024))
    tot = rep.to_dict()["totals"]
    assert tot["cycles"] == sum(l.cycles for l in rep.layers)
    assert tot["macs_performed"] == tot["macs_dense"]
    assert 0 < tot["utilization"] <= 1
    assert abs(tot["energy_pj"] - sum(tot["energy_breakdown_pj"].values())) < 1e-6 * tot["energy_pj"]
