"""The compressed feature-map stream of the NullHop block: sparsity map (SM) + non-zero value
list (NZVL), encoded and decoded with vectorised numpy (no loop over pixels or words).

Bit-level specification (``S`` = ``sm_bits``, a power of two; ``A`` = ``act_bits``):

- **Words.** The stream is a sequence of words; each word has a ``data`` field of
  ``D = max(S, A)`` bits and two flags, ``first`` and ``last``. A word is either an *SM word*
  (``data`` = S sparsity bits) or a *value word*, which packs ``V = D // A`` values
  (``values_per_word``) at their own width: value slot ``j`` in bits ``[j*A, j*A + A)``,
  each the raw ``A``-bit pattern (two's complement for the signed outputs of a layer without
  ReLU); slots past a chunk's last value are zero (so are bits ``[V*A, D)``).
- **Slices.** A feature map ``x[C, H, W]`` is sent as ``ceil(C / Cp)`` *slices* of ``Cp``
  channels, ``Cp`` a power of two (``slice_ch``; by default the next power of two >= C, i.e.
  one slice). Slice ``s`` holds channels ``s*Cp .. s*Cp+Cp-1``; channels past ``C`` are
  zero. Slices follow each other; each is a complete stream of a ``[Cp, H, W]`` map. (The
  block writes its output as one slice per pass of ``macs`` output channels, and a layer's
  input may consist of several slices: convolution sums over channels, so the block simply
  accumulates them.)
- **Order inside a slice.** Row by row (y), and inside a row pixel by pixel (x) with the
  channel fastest: the value at ``(c, y, x)`` is position ``p = x * Cp + c`` of row y. A row
  has ``Cp * W`` positions, cut into ``R = ceil(Cp * W / S)`` chunks of ``S`` positions; the
  last chunk of a row is padded with zero bits (rows always start a new chunk).
- **Chunk.** One SM word, bit i (LSB first) = 1 iff position ``chunk*S + i`` is non-zero,
  followed by the non-zero values of the chunk in increasing position, packed: the chunk's
  ``n``-th value (n = 0, 1, ...) is slot ``n mod V`` of its ``n div V``-th value word, so a
  chunk of ``nnz`` values has ``ceil(nnz / V)`` value words (a chunk never shares a value
  word with the next one). An all-zero chunk is a lone zero SM word.
- **Flags.** ``first`` = 1 on the first SM word of each row; ``last`` = 1 on the final word
  of the stream (of the whole map as encoded here; the block sets it on the final word of
  each pass). Decoders may rely on the shape instead of the flags.
- **Size.** ``words = slices * H * R + sum over chunks of ceil(nnz_chunk / V)``
  (``encoded_words``); the map ends after the ``H``-th row of the last slice. In bits that is
  at most ``D`` per chunk plus ``A`` per non-zero plus ``A * (V - 1)`` per chunk of
  padding: with S = 16 and A = 8 (D = 16, V = 2), ``1/8 + density`` of the dense map, plus
  at most one byte per chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def values_per_word(sm_bits: int, act_bits: int) -> int:
    """Values packed into one value word: ``max(sm_bits, act_bits) // act_bits``."""
    return max(sm_bits, act_bits) // act_bits


def _check(sm_bits: int, slice_ch: int | None, channels: int) -> int:
    if not isinstance(sm_bits, int) or sm_bits < 1 or sm_bits & (sm_bits - 1) or sm_bits > 64:
        raise ValueError(f"sm_bits must be a power of two in 1..64, not {sm_bits!r}")
    if slice_ch is None:
        return next_pow2(channels)
    if not isinstance(slice_ch, int) or slice_ch < 1 or slice_ch & (slice_ch - 1):
        raise ValueError(f"slice_ch must be a power of two >= 1, not {slice_ch!r}")
    return slice_ch


@dataclass
class Stream:
    """An encoded map: parallel arrays of word ``data`` (uint64) and the two flags."""

    data: np.ndarray
    first: np.ndarray
    last: np.ndarray

    def __len__(self) -> int:
        return len(self.data)

    def beats(self) -> list[dict]:
        """One dict per word, the block's stream payload (``hw.layouts`` packs it)."""
        return [{"data": int(d), "first": int(f), "last": int(l)}
                for d, f, l in zip(self.data.tolist(), self.first.tolist(), self.last.tolist())]

    @staticmethod
    def concat(streams) -> "Stream":
        streams = list(streams)
        return Stream(*(np.concatenate([getattr(s, f) for s in streams]) if streams
                        else np.zeros(0, np.uint64) for f in ("data", "first", "last")))


def slice_rows(x: np.ndarray, cp: int) -> np.ndarray:
    """[C, H, W] -> [slices, H, W*Cp] positions of every row of every slice, zero-padded."""
    c, h, w = x.shape
    slices = -(-c // cp)
    xp = np.zeros((slices * cp, h, w), x.dtype)
    xp[:c] = x
    return xp.reshape(slices, cp, h, w).transpose(0, 2, 3, 1).reshape(slices, h, w * cp)


def chunks(x: np.ndarray, sm_bits: int, slice_ch: int | None = None) -> np.ndarray:
    """[slices, H, R, S] values of every chunk, in stream order."""
    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"a feature map must be [C, H, W], not shape {x.shape}")
    cp = _check(sm_bits, slice_ch, x.shape[0])
    rows = slice_rows(x, cp)
    s, h, n = rows.shape
    r = -(-n // sm_bits)
    padded = np.zeros((s, h, r * sm_bits), rows.dtype)
    padded[..., :n] = rows
    return padded.reshape(s, h, r, sm_bits)


def encoded_words(x: np.ndarray, sm_bits: int, slice_ch: int | None = None,
                  act_bits: int = 8) -> int:
    """The stream length formula: ``slices * H * ceil(Cp * W / S)`` SM words plus
    ``ceil(nnz / V)`` value words per chunk (``V = values_per_word``)."""
    v = values_per_word(sm_bits, act_bits)
    nnz = (chunks(x, sm_bits, slice_ch) != 0).sum(axis=-1)
    return int(nnz.size + ((nnz + v - 1) // v).sum())


def encode(x: np.ndarray, sm_bits: int, slice_ch: int | None = None,
           act_bits: int = 8) -> Stream:
    """Encode ``x[C, H, W]`` (integers; only the low ``act_bits`` bits of a value are sent)."""
    ch = chunks(x, sm_bits, slice_ch)
    v = values_per_word(sm_bits, act_bits)
    flat = ch.reshape(-1, sm_bits).astype(np.int64)
    nz = flat != 0
    counts = nz.sum(axis=1)
    vwords = (counts + v - 1) // v
    start = np.concatenate([[0], np.cumsum(1 + vwords)[:-1]])  # SM word of each chunk
    total = int(start[-1] + 1 + vwords[-1]) if len(start) else 0
    data = np.zeros(total, np.uint64)
    weights = np.left_shift(np.uint64(1), np.arange(sm_bits, dtype=np.uint64))
    data[start] = (nz.astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)
    ci, bi = np.nonzero(nz)  # row-major: chunk, then bit: stream order
    rank = np.arange(len(ci)) - np.concatenate([[0], np.cumsum(counts)[:-1]])[ci]
    vals = (flat[ci, bi] & ((1 << act_bits) - 1)).astype(np.uint64)
    # slots of one word are disjoint bit ranges: adding them is OR-ing them
    np.add.at(data, start[ci] + 1 + rank // v,
              vals << ((rank % v) * act_bits).astype(np.uint64))
    first = np.zeros(total, bool)
    r = ch.shape[2]
    first[start[::r]] = True
    last = np.zeros(total, bool)
    if total:
        last[-1] = True
    return Stream(data, first, last)


def decode(stream: Stream | np.ndarray, shape: tuple[int, int, int], sm_bits: int,
           slice_ch: int | None = None, act_bits: int = 8, signed: bool = False) -> np.ndarray:
    """Decode a stream of a ``shape = (C, H, W)`` map back to int64 ``[C, H, W]``.

    Vectorised: the SM words are located by pointer doubling over ``next(i) = i + 1 +
    ceil(popcount(word i) / V)``. Raises ValueError if the stream does not have the shape's
    length, a used value slot is zero or an unused one is not.
    """
    data = np.asarray(stream.data if isinstance(stream, Stream) else stream).astype(np.uint64)
    c, h, w = shape
    cp = _check(sm_bits, slice_ch, c)
    slices = -(-c // cp)
    r = -(-(cp * w) // sm_bits)
    n_chunks = slices * h * r
    n = len(data)
    if n < n_chunks:
        raise ValueError(f"stream of {n} words is too short for a {shape} map "
                         f"({n_chunks} SM words alone)")
    sm_mask = (np.uint64(1) << np.uint64(sm_bits)) - np.uint64(1) if sm_bits < 64 \
        else np.uint64(0xFFFFFFFFFFFFFFFF)
    bits = ((data[:, None] >> np.arange(sm_bits, dtype=np.uint64)) & np.uint64(1)).astype(bool)
    v = values_per_word(sm_bits, act_bits)
    # n = past the end (absorbing)
    nxt = np.minimum(np.arange(n) + 1 + (bits.sum(axis=1) + v - 1) // v, n)
    nxt = np.concatenate([nxt, [n]])
    pos = np.zeros(n_chunks, np.int64)
    j = np.arange(n_chunks)
    jump = nxt
    for k in range(max(1, int(n_chunks).bit_length())):
        sel = (j >> k) & 1 == 1
        pos[sel] = jump[pos[sel]]
        jump = jump[jump]
    if (pos >= n).any():
        raise ValueError(f"stream of {n} words ends before the {n_chunks} chunks of a "
                         f"{shape} map")
    end = pos[-1] + 1 + (int(bits[pos[-1]].sum()) + v - 1) // v
    if end != n:
        raise ValueError(f"stream has {n} words but a {shape} map with these SM words "
                         f"has {end}")
    is_sm = np.zeros(n, bool)
    is_sm[pos] = True
    if (data[pos] & ~sm_mask).any():
        raise ValueError("an SM word has bits above sm_bits set")
    counts = bits[pos].sum(axis=1)
    vw = np.flatnonzero(~is_sm)  # value words, in order; their chunk and rank in it
    chunk_of = np.searchsorted(pos, vw) - 1
    word_rank = vw - pos[chunk_of] - 1
    used = np.clip(counts[chunk_of] - word_rank * v, 0, v)  # slots holding a value
    amask = (1 << act_bits) - 1
    slots = ((data[vw, None] >> (np.arange(v, dtype=np.uint64) * np.uint64(act_bits)))
             .astype(np.int64) & amask) if len(vw) else np.zeros((0, v), np.int64)
    in_use = np.arange(v)[None, :] < used[:, None]
    if (slots[in_use] == 0).any():
        raise ValueError("a value word holds zero: the NZVL only lists non-zero values")
    spare = data[vw] >> np.uint64(min(63, act_bits * v)) if act_bits * v < 64 else \
        np.zeros(len(vw), np.uint64)
    if slots[~in_use].any() or spare.any():
        raise ValueError("a value word has bits set past its chunk's last value")
    values = slots[in_use]
    if signed:
        values = np.where(values >= 1 << (act_bits - 1), values - (1 << act_bits), values)
    chunk_bits = bits[pos]  # [n_chunks, S]
    flat = np.zeros(chunk_bits.shape, np.int64)
    flat[chunk_bits] = values
    rows = flat.reshape(slices, h, r * sm_bits)[..., :cp * w]
    x = rows.reshape(slices, h, w, cp).transpose(0, 3, 1, 2).reshape(slices * cp, h, w)
    if x[c:].any():
        raise ValueError(f"stream has non-zero values in padding channels {c}..{slices * cp - 1}")
    return x[:c]
