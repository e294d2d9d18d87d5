"""Random RTL cases for every block: from one seed, a random layer (shape, density, weights,
input, output range), random handshake patterns (valid gaps on the inputs, ready
backpressure on the output, or none) and, for SnaPEA, random predictive parameters; each
case carries its integer torch reference and its step model's cycle prediction like every
other ``Case``. ``block_cases(block, cfg, seed, count)`` makes ``count`` of them, case ``i``
from seed ``seed + i``, so a failing case is re-made from the seed its message names.

Shapes stay small (a few hundred to a few thousand cycles each), so a hundred cases per block
play in one Verilator simulation in seconds; the step models (the oracles) run in Python.
"""

from __future__ import annotations

import numpy as np

from zeroskip.models.workloads import ConvLayer, fc
from tb.cases import gemm_case, random_layer


def _stalls(rng) -> tuple[float, float]:
    """No stalls, input gaps only, backpressure only, or both (a quarter each)."""
    kind = rng.integers(4)
    valid_p = float(rng.uniform(0.5, 0.95)) if kind in (1, 3) else 1.0
    ready_p = float(rng.uniform(0.4, 0.95)) if kind in (2, 3) else 1.0
    return valid_p, ready_p


def _conv_shape(rng, max_ch: int, max_dim: int, kernels=(1, 3), strides=(1, 2),
                pools=(1,), fc_share: float = 0.2, max_fc: int = 24) -> ConvLayer:
    if rng.random() < fc_share:
        return fc("f", int(rng.integers(2, max_fc + 1)), int(rng.integers(1, max_ch + 1)),
                  relu=bool(rng.random() < 0.7))
    k = int(rng.choice(kernels))
    stride = int(rng.choice(strides))
    pad = int(rng.integers(0, k // 2 + 1))
    pool = int(rng.choice(pools))
    while True:
        h, w = (int(v) for v in rng.integers(max(k - 2 * pad, 1), max_dim + 1, 2))
        spec = ConvLayer("c", int(rng.integers(1, max_ch + 1)), int(rng.integers(1, max_ch + 1)),
                         h, w, k=k, stride=stride, pad=pad, pool=pool,
                         relu=pool > 1 or bool(rng.random() < 0.8))
        if spec.out_h >= pool and spec.out_w >= pool and (pool == 1 or (
                spec.out_h % pool == 0 and spec.out_w % pool == 0)):
            return spec


def _layer(rng, spec, cfg, seed, density=None):
    density = float(rng.uniform(0.1, 1.0)) if density is None else density
    return random_layer(spec, seed=seed, fxp=cfg.fxp, density=density,
                        full_range=bool(rng.random() < 0.5))


def systolic_random(cfg, seed: int):
    from tb.systolic_cases import systolic_case

    rng = np.random.default_rng([19, seed])
    spec = _conv_shape(rng, max_ch=7, max_dim=7)
    layer, x = _layer(rng, spec, cfg, seed)
    return systolic_case(cfg, gemm_case(layer, x), *_stalls(rng), seed)


def combined_random(cfg, seed: int):
    from zeroskip.models import column_combining as cc
    from tb.combined_cases import packed_case

    rng = np.random.default_rng([20, seed])
    spec = _conv_shape(rng, max_ch=8, max_dim=8)
    layer, x = _layer(rng, spec, cfg, seed)
    packing = cc.prune_and_pack(layer.weight_matrix.numpy(), cfg.alpha, cfg.gamma,
                                sparsity=float(rng.uniform(0.3, 0.8)))
    return packed_case(cfg, layer, x, packing, *_stalls(rng), seed)


def nullhop_random(cfg, seed: int):
    from tb.nullhop_cases import nullhop_case

    rng = np.random.default_rng([21, seed])
    kernels = tuple(k for k in (1, 3, 5) if k <= cfg.max_k)
    spec = _conv_shape(rng, max_ch=6, max_dim=min(cfg.max_dim, 9), kernels=kernels,
                       strides=(1, 2), pools=(1, 1, 2))
    density = float(rng.choice([0.0, rng.uniform(0.05, 1.0), rng.uniform(0.05, 1.0), 1.0]))
    layer, x = _layer(rng, spec, cfg, seed, density)
    return nullhop_case(cfg, layer, x, *_stalls(rng), seed)


def snapea_random(cfg, seed: int):
    from tb.snapea_cases import snapea_case
    from zeroskip.models.snapea import LayerParams

    rng = np.random.default_rng([22, seed])
    spec = _conv_shape(rng, max_ch=4, max_dim=6, fc_share=0.25)
    layer, x = _layer(rng, spec, cfg, seed)
    params = None
    if spec.relu and rng.random() < 0.5:  # predictive: speculate on a share of each kernel
        n, k = layer.spec.out_ch, layer.weight[0].numel()
        spread = int(layer.bias.abs().max()) + 1
        params = LayerParams(np.maximum(1, (k * rng.uniform(0.05, 0.6, n)).astype(int)),
                             rng.integers(-spread, spread, n))
    valid_p, ready_p = _stalls(rng)
    return snapea_case(cfg, layer, x, params, terminate=spec.relu, valid_p=valid_p,
                       ready_p=ready_p, seed=seed)


MAKERS = {"systolic": systolic_random, "combined": combined_random,
          "nullhop": nullhop_random, "snapea": snapea_random}
BENCHES = {"systolic": "tb.systolic_tb", "combined": "tb.combined_tb",
           "nullhop": "tb.nullhop_tb", "snapea": "tb.snapea_tb"}


def block_cases(block: str, cfg, seed: int, count: int) -> list:
    """``count`` random cases of ``block`` on ``cfg``, case ``i`` from seed ``seed + i``."""
    return [MAKERS[block](cfg, seed + i) for i in range(count)]
