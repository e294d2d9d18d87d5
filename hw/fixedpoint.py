"""The fixed-point rules, written once.

Every function here works unchanged on Python ints, numpy integer arrays and torch integer
tensors (it only uses ``*``, ``+``, ``>>`` and ``.clip``/``min``/``max``), so the torch
integer reference, the simulators and the testbenches all call the same code. The RTL
implements the same expressions (``hw.requantize.Requantizer``).
"""

from __future__ import annotations

import math

from .config import FixedPointConfig


def _clip(x, lo, hi):
    if isinstance(x, int):
        return min(max(x, lo), hi)
    return x.clip(lo, hi)


def rounding_offset(shift):
    """``round = (1 << shift) >> 1``: half of the last kept unit, 0 when shift is 0."""
    return (1 << shift) >> 1


def requantize(acc, mult, shift, fxp: FixedPointConfig, relu: bool = True):
    """Map accumulators (bias already added) to output activations.

    ``y = clip((acc * mult + ((1 << shift) >> 1)) >> shift)``, ``>>`` being an arithmetic
    (floor) shift, so ties round towards +inf. ``relu`` clips to ``[0, 2**act_bits-1]``,
    otherwise to the signed ``act_bits`` range. ``mult`` and ``shift`` broadcast per output
    channel (last axis). Needs 64-bit integers for ``acc * mult``.
    """
    scaled = (acc * mult + rounding_offset(shift)) >> shift
    if relu:
        return _clip(scaled, 0, fxp.act_max)
    half = 1 << (fxp.act_bits - 1)
    return _clip(scaled, -half, half - 1)


def quantize_multiplier(real: float, fxp: FixedPointConfig) -> tuple[int, int]:
    """Approximate a positive real scale by ``mult / 2**shift`` with the most precision the
    widths allow (``mult < 2**mult_bits``, ``shift <= 2**shift_bits - 1``)."""
    if not (real > 0 and math.isfinite(real)):
        raise ValueError(f"requantisation scale must be positive and finite, not {real!r}")
    mant, exp = math.frexp(real)  # real = mant * 2**exp, 0.5 <= mant < 1
    shift = fxp.mult_bits - exp
    shift = min(shift, fxp.shift_max)
    if shift < 0:
        raise ValueError(
            f"requantisation scale {real:g} needs a negative shift; it cannot be represented "
            f"with mult_bits={fxp.mult_bits}: the layer's output range is too small")
    mult = round(real * (1 << shift))
    if mult > fxp.mult_max:  # rounding carried into a new bit
        mult >>= 1
        shift -= 1
    return int(mult), int(shift)


def max_pool(y, pool: int):
    """``pool`` x ``pool`` max-pooling of requantised [C, H, W] outputs (numpy), after the
    requantisation as the integer reference does it (the two orders agree: requantisation is
    monotonic); a ragged last row or column is dropped, as in torch's ``max_pool2d``."""
    if pool <= 1:
        return y
    c, h, w = y.shape
    h, w = h // pool * pool, w // pool * pool
    return y[:, :h, :w].reshape(c, h // pool, pool, w // pool, pool).max(axis=(2, 4))
