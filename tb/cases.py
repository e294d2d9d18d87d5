"""Test cases for the RTL: random layers with a seed, and layers of the trained digits net
fed with real activations. Each case carries its integer torch reference; the helpers here
turn the GEMM blocks' (systolic, combined) tiled passes and lane outputs into a ``Case``."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from zeroskip.hw.config import FixedPointConfig
from zeroskip.hw.fixedpoint import quantize_multiplier
from zeroskip.hw.layouts import pack
from zeroskip.models.reference import QuantLayer, im2col, layer_forward
from zeroskip.models.workloads import ConvLayer
from tb.scoreboard import Case


def random_layer(spec: ConvLayer, seed: int, fxp: FixedPointConfig | None = None,
                 density: float = 0.6, full_range: bool = False
                 ) -> tuple[QuantLayer, torch.Tensor]:
    """A quantised layer with random weights and a random input of the given density, at the
    widths of ``fxp``. With ``full_range`` each output channel's scale is set from its own
    accumulators so the outputs span the whole output range, a share of them saturating at
    both ends (0 and the top with ReLU, both signed ends without)."""
    fxp = fxp or FixedPointConfig()
    rng = np.random.default_rng(seed)
    k = spec.gemm[1]
    w = rng.integers(-fxp.weight_max - 1, fxp.weight_max + 1,
                     (spec.out_ch, spec.in_ch, spec.k, spec.k))
    x = rng.integers(1, fxp.act_max + 1, (spec.in_ch, spec.in_h, spec.in_w))
    x = np.where(rng.random(x.shape) < density, x, 0)
    if full_range:
        acc = im2col(torch.from_numpy(x), spec).numpy() @ w.reshape(spec.out_ch, -1).T
        # per channel over its pixels, or (one pixel: a linear layer) over all channels
        centre = acc.mean(axis=0) if len(acc) > 1 else np.full(spec.out_ch, acc.mean())
        spread = np.full(spec.out_ch, max(float((acc - centre).std()), 1.0))
        bias_max = min(fxp.bias_max, fxp.acc_max // 4)
        bias = np.clip(np.round(-centre + rng.normal(0, 0.3, spec.out_ch) * spread),
                       -bias_max, bias_max).astype(np.int64)
        # half to one output range per accumulator standard deviation: both ends saturate
        top = fxp.act_max if spec.relu else fxp.act_max // 2
        scales = rng.uniform(0.4, 1.0, spec.out_ch) * top / spread
        scales = np.clip(scales, 2.0 ** -(fxp.shift_max - 1), fxp.mult_max / 2)
    else:
        bias = rng.integers(-20 * k * 64, 20 * k * 64, spec.out_ch)
        # scale so outputs spread over the 8-bit range: about 1/(sqrt(K) * 64 * 128) per unit
        scales = rng.uniform(0.5, 2.0, spec.out_ch) / (np.sqrt(k) * 64 * 40)
    mults, shifts = zip(*(quantize_multiplier(float(s), fxp) for s in scales))
    layer = QuantLayer(spec, torch.from_numpy(w), torch.from_numpy(bias),
                       torch.tensor(mults), torch.tensor(shifts), fxp=fxp)
    return layer, torch.from_numpy(x)


def assert_saturates_both_ends(expected: np.ndarray, fxp: FixedPointConfig, relu: bool) -> None:
    """A full-range case must reach both clip ends of the output (0 and the top with ReLU,
    both signed ends without), or it does not test saturation."""
    lo, hi = (0, fxp.act_max) if relu else (-(fxp.act_max + 1) // 2, fxp.act_max // 2)
    seen = int(expected.min()), int(expected.max())
    if seen != (lo, hi):
        raise AssertionError(f"outputs span {seen[0]}..{seen[1]}, not the clip ends {lo}..{hi}: "
                             "pick another seed")


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


def lane_beats(layout, ref: np.ndarray, slices, act_bits: int) -> tuple[list[int], list[int]]:
    """Output beats of a lane vector (``layout``, an ArrayLayout) from the reference [M, N]:
    one per ``(pixel, first channel, lanes used)``; lanes past those used are padding, left
    out of the mask."""
    beats, masks = [], []
    for pixel, n0, width in slices:
        row = [int(v) for v in ref[pixel, n0:n0 + width]]
        beats.append(pack(layout, row + [0] * (layout.length - width)))
        masks.append((1 << (act_bits * width)) - 1)
    return beats, masks


def step_prediction(trace: dict, out_port: str = "out") -> dict:
    """The step model's cycle prediction as ``Case`` fields: total cycles and every output
    beat's cycle, counted from the first command."""
    first = trace["cmd"][0]
    return {"cycles": int(trace["cycles"]),
            "out_cycles": {out_port: [c - first for c in trace[out_port]]}}


def gemm_stream_case(lay, g, passes, beats_of, width_of, step_model, expected, fxp,
                     valid_p=1.0, ready_p=1.0, seed=0) -> Case:
    """A tiled GEMM block's ``Case``: per pass, ``beats_of(pass)`` is (command, weight rows,
    activation vectors) and ``width_of(pass)`` the output lanes it fills; the step model
    (same handshake patterns) predicts the cycles and must itself match the reference."""
    want = expected & fxp.act_max
    outputs, trace = step_model.run(g, valid_p, ready_p, seed)
    if not (outputs == want).all():
        raise AssertionError("the step model's outputs differ from the integer reference")
    beats = [beats_of(p) for p in passes]
    inputs = {"cmd": [pack(lay.command, b[0]) for b in beats],
              "weights": [pack(lay.weight_row, r) for b in beats for r in b[1]],
              "acts": [pack(lay.act_vector, v) for b in beats for v in b[2]]}
    slices = [(p.m0 + j, p.n0, width_of(p)) for p in passes if p.emit for j in range(p.count)]
    out, masks = lane_beats(lay.out_vector, want, slices, fxp.act_bits)
    return Case(inputs, {"out": out}, masks={"out": masks}, valid_p=valid_p, ready_p=ready_p,
                seed=seed, **step_prediction(trace))
