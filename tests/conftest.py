from dataclasses import dataclass

import pytest


@dataclass
class DigitsFixture:
    workload: object
    layers: list
    inputs: list  # per layer: int64 activations [N, C, H, W] of a few test images


@pytest.fixture(scope="session")
def digits():
    from zeroskip.models import digits as d

    w = d.load_workload("kl")
    images = d.sample_images(w.data, 4)
    return DigitsFixture(w, w.layers, d.layer_inputs(w.layers, images))
