"""Test cases for the RTL: random layers with a seed, and layers of the trained digits net
fed with real activations. Each case carries its integer torch reference."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from zeroskip.hw.config import FixedPointConfig
from zeroskip.hw.fixedpoint import quantize_multiplier
from zeroskip.models.reference import QuantLayer, im2col, layer_forward
from zeroskip.models.workloads import ConvLayer


def random_layer(spec: ConvLayer, seed: int, fxp: FixedPointConfig | None = None,
                 density: float = 0.6) -> tuple[QuantLayer, torch.Tensor]:
    """A quantised layer with random int8 weights and a random input of the given density."""
    fxp = fxp or FixedPointConfig()
    rng = np.random.default_rng(seed)
    k = spec.gemm[1]
    w = rng.integers(-fxp.weight_max - 1, fxp.weight_max + 1,
                     (spec.out_ch, spec.in_ch, spec.k, spec.k))
    x = rng.integers(1, fxp.act_max + 1, (spec.in_ch, spec.in_h, spec.in_w))
    x = np.where(rng.random(x.shape) < density, x, 0)
    bias = rng.integers(-20 * k * 64, 20 * k * 64, spec.out_ch)
    # scale so outputs spread over the 8-bit range: about 1/(sqrt(K) * 64 * 128) per unit
    mults, shifts = zip(*(quantize_multiplier(float(s), fxp) for s in
                          rng.uniform(0.5, 2.0, spec.out_ch) / (np.sqrt(k) * 64 * 40)))
    layer = QuantLayer(spec, torch.from_numpy(w), torch.from_numpy(bias),
                       torch.tensor(mults), torch.tensor(shifts), fxp=fxp)
    return layer, torch.from_numpy(x)


def gemm_case(layer: QuantLayer, x: torch.Tensor) -> dict:
    """The layer as the block's GEMM plus its reference output (pooling left to the host)."""
    spec = replace(layer.spec, pool=1)
    layer = replace(layer, spec=spec)
    ref = layer_forward(x, layer)  # [N, H, W]
    return {
        "a": im2col(x, spec).numpy(),
        "w": layer.weight_matrix.numpy(),
        "bias": layer.bias.numpy(), "mult": layer.mult.numpy(), "shift": layer.shift.numpy(),
        "relu": spec.relu,
        "expected": ref.reshape(spec.out_ch, -1).T.numpy(),
    }
