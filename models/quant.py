"""Post-training quantisation of a float torch CNN into the fixed-point contract.

- Weights: signed ``weight_bits``, symmetric, one scale per output channel,
  ``s_w[c] = max|W[c]| / weight_max`` (min/max is the right rule for weights: no outliers
  worth clipping in these small layers).
- Activations: unsigned ``act_bits`` with zero point 0, ``s_a = clip / act_max``, where
  ``clip`` comes from a calibration set by one of the rules in ``CLIP_RULES``:
  ``minmax`` (the largest value seen), ``percentile`` (the 99.99th percentile) or ``kl``
  (TensorRT-style entropy calibration: the clip minimising the KL divergence between the
  float histogram and its quantised version).
- Bias: ``round(b / (s_in * s_w[c]))`` in ``bias_bits``.
- Requantisation: ``s_in * s_w[c] / s_out`` as ``mult / 2**shift`` (``hw.fixedpoint``).
"""

from __future__ import annotations

import numpy as np
import torch

from zeroskip.hw.config import FixedPointConfig
from zeroskip.hw.fixedpoint import quantize_multiplier
from zeroskip.models.reference import QuantLayer
from zeroskip.models.workloads import ConvLayer

CLIP_RULES = ("minmax", "percentile", "kl")


def clip_minmax(values: np.ndarray) -> float:
    return float(values.max())


def clip_percentile(values: np.ndarray, pct: float = 99.99) -> float:
    return float(np.percentile(values, pct))


def clip_kl(values: np.ndarray, levels: int = 255, bins: int = 2048) -> float:
    """Entropy calibration (Migacz, "8-bit Inference with TensorRT", GTC 2017).

    Histograms the positive values, then for each candidate clip ``i`` bins compares the
    reference distribution (outliers folded into the last bin) with the same distribution
    merged into ``levels`` quantisation bins and spread back; returns the clip with the
    smallest KL divergence.
    """
    pos = values[values > 0]
    if pos.size == 0:
        return 1.0
    hist, edges = np.histogram(pos, bins=bins, range=(0.0, float(pos.max())))
    hist = hist.astype(np.float64)
    best_kl, best_i = np.inf, bins
    for i in range(levels, bins + 1, 4):
        ref = hist[:i].copy()
        ref[-1] += hist[i:].sum()
        # merge the i bins into `levels` chunks, spread each chunk's mass over its non-empty bins
        chunk = np.minimum((np.arange(i) * levels) // i, levels - 1)
        nz = ref > 0
        mass = np.bincount(chunk, weights=hist[:i], minlength=levels)
        count = np.bincount(chunk, weights=nz.astype(np.float64), minlength=levels)
        q = np.where(nz, mass[chunk] / np.maximum(count[chunk], 1), 0.0)
        p = ref / ref.sum()
        qs = q.sum()
        if qs == 0:
            continue
        q = q / qs
        m = p > 0
        kl = np.sum(p[m] * np.log(p[m] / np.maximum(q[m], 1e-12)))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return float(edges[best_i])


def clip_value(values: np.ndarray, rule: str) -> float:
    rules = {"minmax": clip_minmax, "percentile": clip_percentile, "kl": clip_kl}
    try:
        fn = rules[rule]
    except KeyError:
        raise ValueError(f"unknown clip rule {rule!r}; choose one of {', '.join(CLIP_RULES)}")
    v = fn(np.asarray(values, np.float64).ravel())
    return v if v > 0 else 1.0


def quantize_weights(w: torch.Tensor, fxp: FixedPointConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel symmetric quantisation: (int64 weights, float64 scales)."""
    flat = w.detach().double().reshape(w.shape[0], -1)
    scale = flat.abs().max(dim=1).values / fxp.weight_max
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(flat / scale[:, None]).clamp(-fxp.weight_max, fxp.weight_max)
    return q.long().reshape(w.shape), scale


def quantize_layer(spec: ConvLayer, weight: torch.Tensor, bias: torch.Tensor | None,
                   in_scale: float, out_clip: float, fxp: FixedPointConfig) -> QuantLayer:
    """Quantise one conv/FC layer given its input scale and its output clip value."""
    if spec.kind == "fc":
        weight = weight.reshape(spec.out_ch, spec.in_ch, 1, 1)
    wq, sw = quantize_weights(weight, fxp)
    out_levels = fxp.act_max if spec.relu else (1 << (fxp.act_bits - 1)) - 1
    out_scale = out_clip / out_levels
    b = torch.zeros(spec.out_ch, dtype=torch.float64) if bias is None else bias.detach().double()
    bq = torch.round(b / (in_scale * sw)).long().clamp(-fxp.bias_max, fxp.bias_max)
    mults, shifts = zip(*(quantize_multiplier(in_scale * float(s) / out_scale, fxp) for s in sw))
    return QuantLayer(spec, wq, bq, torch.tensor(mults, dtype=torch.long),
                      torch.tensor(shifts, dtype=torch.long), in_scale, out_scale, fxp)
