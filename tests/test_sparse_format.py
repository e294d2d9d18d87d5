"""The SM + NZVL stream format: bit-level examples (one value per word and values packed two
per word), round trips of any density, shape and value width, the size formula, and rejection
of malformed streams."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zeroskip.sim.sparse_format import decode, encode, encoded_words, values_per_word


def _expected_size(x, sm_bits, slice_ch, act_bits=8):
    """Independent count, a loop over slices, rows and chunks: one SM word per chunk of S
    positions (rows start a new chunk), then ceil(nnz / V) value words,
    V = max(S, A) // A."""
    c, h, w = x.shape
    cp = slice_ch or 1 << (c - 1).bit_length()
    v = max(sm_bits, act_bits) // act_bits
    words = 0
    for s0 in range(0, c, cp):
        for y in range(h):
            row = [x[ch, y, px] if ch < c else 0 for px in range(w)
                   for ch in range(s0, s0 + cp)]
            for i in range(0, len(row), sm_bits):
                nnz = sum(1 for val in row[i:i + sm_bits] if val != 0)
                words += 1 + -(-nnz // v)
    return words


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


def test_sparse_format_packs_values_at_their_width():
    """The same map with S=16 and 8-bit values: 16-bit words, two values per value word (slot
    0 in the low byte), the chunk's last word half empty; 4-bit values: four per word."""
    x = np.zeros((3, 2, 3), np.int64)
    x[0, 0, 0], x[2, 0, 1], x[1, 0, 2] = 5, 7, 9  # positions 0, 6, 9 of row 0
    s = encode(x, sm_bits=16, act_bits=8)
    assert values_per_word(16, 8) == 2
    assert s.data.tolist() == [0b1001000001, 0x0705, 0x0009, 0]
    assert s.first.tolist() == [1, 0, 0, 1] and s.last.tolist() == [0, 0, 0, 1]
    assert (decode(s, x.shape, 16, act_bits=8) == x).all()
    s4 = encode(x, sm_bits=16, act_bits=4)
    assert s4.data.tolist() == [0b1001000001, 0x0975, 0]
    assert (decode(s4, x.shape, 16, act_bits=4) == x).all()
    # 16-bit values and 8-bit SM words: one value per 16-bit word
    assert values_per_word(8, 16) == 1


def test_sparse_format_slices_follow_each_other():
    x = np.arange(1, 1 + 3 * 1 * 2).reshape(3, 1, 2)  # dense, 3 channels
    # slices {0,1} and {2, pad}; 8-bit words (max(4, 8)), one value each
    s = encode(x, sm_bits=4, slice_ch=2)
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
    assert s.data[word] == 1 << (pos % 16) and s.data[word + 1] == 17  # slot 0, slot 1 empty
    assert (decode(s, x.shape, 16) == x).all()


@settings(max_examples=150, deadline=None)
@given(c=st.integers(1, 20), h=st.integers(1, 6), w=st.integers(1, 9),
       log_s=st.integers(0, 6), slice_log=st.one_of(st.none(), st.integers(0, 4)),
       act_bits=st.sampled_from([3, 4, 8, 16]), density=st.floats(0.0, 1.0),
       seed=st.integers(0, 2**16))
def test_sparse_format_round_trip_any_density(c, h, w, log_s, slice_log, act_bits, density,
                                              seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(1, 1 << act_bits, (c, h, w))
    x[rng.random(x.shape) >= density] = 0
    sm_bits = 1 << log_s
    slice_ch = None if slice_log is None else 1 << slice_log
    s = encode(x, sm_bits, slice_ch, act_bits)
    assert len(s) == encoded_words(x, sm_bits, slice_ch, act_bits) == _expected_size(
        x, sm_bits, slice_ch, act_bits)
    assert int(s.data.max(initial=0)) < 1 << max(sm_bits, act_bits)
    assert (decode(s, x.shape, sm_bits, slice_ch, act_bits) == x).all()
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


def test_sparse_format_rejects_a_value_past_the_chunks_last():
    x = np.array([[[4, 0, 6, 0, 0, 2, 0, 0]]])
    s = encode(x, 16, act_bits=4)  # SM word, then one word of slots 4, 6, 2, (empty)
    assert s.data.tolist() == [0b100101, 0x264]
    with pytest.raises(ValueError, match="past its chunk's last value"):
        decode(np.array([0b100101, 0x3264]), x.shape, 16, act_bits=4)
    with pytest.raises(ValueError, match="holds zero"):
        decode(np.array([0b100101, 0x204]), x.shape, 16, act_bits=4)


@pytest.mark.parametrize("bad", [3, 0, 128])
def test_sparse_format_rejects_bad_word_width(bad):
    with pytest.raises(ValueError, match="sm_bits must be a power of two"):
        encode(np.ones((1, 1, 1)), bad)
