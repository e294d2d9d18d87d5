"""The fixed-point contract against an exact rational oracle."""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from zeroskip.hw.config import FixedPointConfig
from zeroskip.hw.fixedpoint import quantize_multiplier, requantize

FXP = FixedPointConfig()


def oracle(acc, mult, shift, relu, fxp=FXP):
    """round-half-up of acc*mult/2**shift, then ReLU/saturation, in exact rationals."""
    y = math.floor(Fraction(acc * mult, 1 << shift) + Fraction(1, 2)) if shift else acc * mult
    lo, hi = (0, fxp.act_max) if relu else (-(1 << (fxp.act_bits - 1)), (1 << (fxp.act_bits - 1)) - 1)
    return min(max(y, lo), hi)


@settings(max_examples=300, deadline=None)
@given(acc=st.integers(-(1 << 31), (1 << 31) - 1), mult=st.integers(0, (1 << 16) - 1),
       shift=st.integers(0, 63), relu=st.booleans())
def test_requantize_matches_exact_rounding(acc, mult, shift, relu):
    assert requantize(acc, mult, shift, FXP, relu) == oracle(acc, mult, shift, relu)


def test_requantize_same_on_numpy_and_torch():
    rng = np.random.default_rng(0)
    acc = rng.integers(-(1 << 31), 1 << 31, 1000)
    mult = rng.integers(0, 1 << 16, 1000)
    shift = rng.integers(0, 40, 1000)
    a = requantize(acc, mult, shift, FXP, True)
    b = requantize(torch.from_numpy(acc), torch.from_numpy(mult), torch.from_numpy(shift), FXP, True)
    assert (a == b.numpy()).all()
    assert [oracle(int(x), int(m), int(s), True) for x, m, s in zip(acc[:50], mult[:50], shift[:50])] == a[:50].tolist()


def test_requantize_ties_round_up():
    # 3/2 -> 2, -3/2 -> -1 (towards +inf on ties), signed range without ReLU
    assert requantize(3, 1, 1, FXP, relu=False) == 2
    assert requantize(-3, 1, 1, FXP, relu=False) == -1


@pytest.mark.parametrize("real", [1e-7, 3.3e-4, 0.01, 0.5, 0.999, 1.0, 7.25, 300.0])
def test_quantize_multiplier_is_precise(real):
    mult, shift = quantize_multiplier(real, FXP)
    assert 0 < mult <= FXP.mult_max and 0 <= shift <= FXP.shift_max
    assert abs(mult / 2 ** shift - real) / real < 2.0 ** -(FXP.mult_bits - 1)


def test_quantize_multiplier_rejects_bad_scales():
    with pytest.raises(ValueError, match="positive"):
        quantize_multiplier(0.0, FXP)
    with pytest.raises(ValueError, match="negative shift"):
        quantize_multiplier(1e9, FXP)


def test_widths_are_validated():
    with pytest.raises(ValueError, match="acc_bits"):
        FixedPointConfig(acc_bits=12)
    with pytest.raises(ValueError, match="too large for the widths"):
        FixedPointConfig(acc_bits=18).check_reduction("conv", 9 * 64)
    FixedPointConfig(acc_bits=18).check_reduction("conv", 4)
