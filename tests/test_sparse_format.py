"""The SM + NZVL stream format: bit-level examples, round trips of any density and shape,
the size formula, and rejection of malformed streams."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zeroskip.sim.sparse_format import decode, encode, encoded_words


def _expected_size(x, sm_bits, slice_ch):
    """Independent count: per slice and row, ceil(Cp*W/S) SM words, plus every non-zero."""
    c, h, w = x.shape
    cp = slice_ch or 1 << (c - 1).bit_length()
    slices = -(-c // cp)
    return slices * h * -(-(cp * w) // sm_bits) + int((x != 0).sum())


def test_sparse_format_bit_level_example():
    """x[c, y, x] with C=3 (padded to Cp=4), W=3, S=8: row 0 positions p = x*4 + c."""
    x = np.zeros((3, 2, 3), np.int64)
    x[0, 0, 0] = 5    # p = 0
    x[2, 0, 1] = 7    # p = 6
    x[1, 0, 2] = 9    # p = 9 -> second chunk, bit 1
    # row 1 is all zero: two lone zero SM words
    s = encode(x, sm_bits=8)
    assert s.data.tolist() == [0b01000001, 5, 7, 0b00000010, 9, 0, 0]
    assert s.first.tolist() == [1, 0, 0, 0, 0, 1, 0]
    assert s.last.tolist() == [0, 0, 0, 0, 0, 0, 1]


def test_sparse_format_slices_follow_each_other():
    x = np.arange(1, 1 + 3 * 1 * 2).reshape(3, 1, 2)  # dense, 3 channels
    s = encode(x, sm_bits=4, slice_ch=2)  # slices {0,1} and {2, pad}
    # x[0] = [1, 2], x[1] = [3, 4], x[2] = [5, 6]
    # slice 0: positions (x0: c0 c1, x1: c0 c1) = 1 3 2 4 -> one full chunk
    # slice 1: (x0: c2 pad, x1: c2 pad) = 5 0 6 0 -> bits 0 and 2
    assert s.data.tolist() == [0b1111, 1, 3, 2, 4, 0b0101, 5, 6]
    assert (decode(s, x.shape, 4, 2) == x).all()


@pytest.mark.parametrize("density", [0.0, 1.0])
@pytest.mark.parametrize("shape,sm_bits", [((1, 1, 1), 16), ((5, 3, 7), 16), ((16, 2, 2), 4),
                                           ((3, 4, 5), 64), ((9, 2, 3), 1)])
def test_sparse_format_empty_and_full_maps_round_trip(shape, sm_bits, density):
    x = np.full(shape, 200 if density else 0, np.int64)
    s = encode(x, sm_bits)
    assert len(s) == _expected_size(x, sm_bits, None)
    if density == 0.0:
        assert not s.data.any(), "an all-zero map is only lone zero SM words"
    assert (decode(s, shape, sm_bits) == x).all()


def test_sparse_format_single_non_zero():
    x = np.zeros((6, 5, 7), np.int64)
    x[4, 3, 6] = 17
    s = encode(x, 16)
    cp = 8
    r = -(-(cp * 7) // 16)
    assert len(s) == 5 * r + 1
    pos = 6 * cp + 4  # x * Cp + c in row 3
    word = 3 * r + pos // 16
    assert s.data[word] == 1 << (pos % 16) and s.data[word + 1] == 17
    assert (decode(s, x.shape, 16) == x).all()


@settings(max_examples=150, deadline=None)
@given(c=st.integers(1, 20), h=st.integers(1, 6), w=st.integers(1, 9),
       log_s=st.integers(0, 6), slice_log=st.one_of(st.none(), st.integers(0, 4)),
       density=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_sparse_format_round_trip_any_density(c, h, w, log_s, slice_log, density, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(1, 256, (c, h, w))
    x[rng.random(x.shape) >= density] = 0
    sm_bits = 1 << log_s
    slice_ch = None if slice_log is None else 1 << slice_log
    s = encode(x, sm_bits, slice_ch)
    assert len(s) == encoded_words(x, sm_bits, slice_ch) == _expected_size(x, sm_bits, slice_ch)
    assert (decode(s, x.shape, sm_bits, slice_ch) == x).all()
    assert s.first.sum() == -(-c // (slice_ch or 1 << (c - 1).bit_length())) * h
    assert s.last.sum() == 1 and s.last[-1]


def test_sparse_format_signed_values_round_trip():
    x = np.array([[[-3, 0, 127, -128]]])
    s = encode(x, 8)
    assert (decode(s, x.shape, 8, signed=True) == x).all()


@pytest.mark.parametrize("mutate,needle", [
    (lambda d: d[:-1], "too short|but a"),
    (lambda d: np.concatenate([d, [3]]), "but a"),
    (lambda d: np.where(np.arange(len(d)) == 1, 0, d), "holds zero"),
])
def test_sparse_format_rejects_malformed_streams(mutate, needle):
    x = np.array([[[4, 0, 6, 0, 0, 2]]])
    s = encode(x, 4)
    with pytest.raises(ValueError, match=needle):
        decode(mutate(s.data.astype(np.int64)), x.shape, 4)


@pytest.mark.parametrize("bad", [3, 0, 128])
def test_sparse_format_rejects_bad_word_width(bad):
    with pytest.raises(ValueError, match="sm_bits must be a power of two"):
        encode(np.ones((1, 1, 1)), bad)
