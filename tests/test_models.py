"""Workload shapes, quantisation rules and the bundled digits net."""

import numpy as np
import pytest

from zeroskip.models import quant
from zeroskip.models.workloads import ConvLayer, alexnet, network_layers, resnet18


def test_known_network_sizes():
    # ResNet-18 ~1.8 GMAC, ungrouped AlexNet ~1.1 GMAC (He et al. 2016; Canziani et al. 2016)
    assert 1.75e9 < sum(l.macs for l in resnet18()) < 1.9e9
    assert 1.0e9 < sum(l.macs for l in alexnet()) < 1.2e9
    assert sum(l.kind == "conv" for l in resnet18()) == 20


def test_bad_layers_and_names_are_rejected():
    with pytest.raises(ValueError, match="does not fit"):
        ConvLayer("x", 1, 1, 2, 2, k=5)
    with pytest.raises(ValueError, match="in_ch must be a positive"):
        ConvLayer("x", 0, 1, 2, 2)
    with pytest.raises(ValueError, match="unknown network 'lenet'"):
        network_layers("lenet")


def test_clip_rules():
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.exponential(1.0, 100_000), [200.0]])  # one far outlier
    mm, pc, kl = (quant.clip_value(v, r) for r in quant.CLIP_RULES)
    assert mm == 200.0
    assert pc < 20 and kl < 50, "percentile and KL must ignore the outlier"
    with pytest.raises(ValueError, match="unknown clip rule"):
        quant.clip_value(v, "mse")


def test_digits_int8_accuracy_close_to_float(digits):
    w = digits.workload
    assert w.float_acc > 0.95
    assert w.int_acc >= w.float_acc - 0.01


def test_digits_real_activations_are_sparse(digits):
    later = digits.inputs[1:]
    density = np.mean([float((x > 0).double().mean()) for x in later])
    assert 0.05 < density < 0.9
