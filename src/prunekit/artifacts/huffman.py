"""Canonical Huffman codes for small-alphabet integers: the level codes of quantized layers.

Trained quantized weights are far from uniform over their levels (most sit on the small
ones): a 6-bit conv layer of LeNet-5 has an entropy near 5.3 bits per code and a 4-bit fc
layer near 3.5, so fixed-width packing wastes 10-15% of the values' bytes, which LZMA on the
packed bits recovers only in part. Canonical codes need only each symbol's code length in
the file, and lengths are capped at :data:`MAX_LENGTH` so each fits in a nibble.

Payload of :func:`encode` (symbols are integers in ``[0, 256)``)::

    byte 0        lo, the smallest symbol present
    byte 1        hi, the largest symbol present
    ceil(n / 2)   the code length of each symbol lo..hi (n = hi - lo + 1), 4 bits each, low
                  nibble first (0: the symbol does not occur)
    rest          the codes of the values in order, most significant bit first, the last
                  byte zero-padded

Decoding treats the payload as hostile: lengths that no prefix code has, a bit string that is
not a code, too few or too many bits, or nonzero padding are a :class:`DataError`.
"""

from __future__ import annotations

import heapq

import numpy as np

from ..errors import DataError

MAX_LENGTH = 15
SYMBOLS = 256


def code_lengths(counts: np.ndarray) -> np.ndarray:
    """Huffman code lengths (at most :data:`MAX_LENGTH`) for symbol ``counts``; 0 for symbols
    that do not occur, 1 for a lone symbol. Where the optimal code is longer than the cap,
    the counts are halved (rare symbols merge with more common ones) until it fits."""
    counts = np.asarray(counts, dtype=np.int64)
    used = np.flatnonzero(counts)
    lengths = np.zeros(counts.size, np.int64)
    if used.size == 1:
        lengths[used] = 1
        return lengths
    weights = counts[used]
    while True:
        depth = _huffman_depths(weights.tolist())
        if max(depth) <= MAX_LENGTH:
            lengths[used] = depth
            return lengths
        weights = np.maximum(weights >> 1, 1)


def _huffman_depths(weights: list[int]) -> list[int]:
    """Leaf depths of the Huffman tree of ``weights`` (ties broken by insertion order)."""
    heap = [(w, i, [i]) for i, w in enumerate(weights)]
    heapq.heapify(heap)
    depth = [0] * len(weights)
    tie = len(weights)
    while len(heap) > 1:
        w1, _, a = heapq.heappop(heap)
        w2, _, b = heapq.heappop(heap)
        for leaf in a + b:
            depth[leaf] += 1
        heapq.heappush(heap, (w1 + w2, tie, a + b))
        tie += 1
    return depth


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """The canonical code of every symbol (shorter codes first, then by symbol); raises
    :class:`DataError` if the lengths break Kraft's inequality (no prefix code has them)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if np.any(lengths < 0) or np.any(lengths > MAX_LENGTH):
        raise DataError(f"huffman code lengths must lie in 0..{MAX_LENGTH}")
    used = lengths > 0
    kraft = int(np.sum(1 << (MAX_LENGTH - lengths[used])))
    if kraft > 1 << MAX_LENGTH:
        raise DataError("huffman code lengths do not form a prefix code")
    codes = np.zeros(lengths.size, np.int64)
    order = np.lexsort((np.arange(lengths.size), lengths))
    code, previous = 0, 0
    for symbol in order[used[order]]:
        code <<= int(lengths[symbol]) - previous
        previous = int(lengths[symbol])
        codes[symbol] = code
        code += 1
    return codes


def encode(values: np.ndarray) -> bytes:
    """The payload (see the module doc) of ``values``, integers in ``[0, 256)``."""
    values = np.asarray(values).ravel()
    if values.dtype.kind not in "biu":
        raise ValueError(f"huffman codes need integers, got dtype {values.dtype}")
    if values.size == 0:
        return b""
    if values.min() < 0 or values.max() >= SYMBOLS:
        raise ValueError(f"huffman symbols must lie in [0, {SYMBOLS}), got "
                         f"[{values.min()}, {values.max()}]")
    values = values.astype(np.int64)
    lengths = code_lengths(np.bincount(values, minlength=SYMBOLS))
    codes = canonical_codes(lengths)
    lo, hi = int(values.min()), int(values.max())
    table = lengths[lo:hi + 1]
    if table.size % 2:
        table = np.append(table, 0)
    nibbles = (table[0::2] | (table[1::2] << 4)).astype(np.uint8).tobytes()
    n = lengths[values]
    width = int(n.max())
    shifts = n[:, None] - 1 - np.arange(width)[None, :]
    bits = (codes[values][:, None] >> np.maximum(shifts, 0)) & 1
    stream = np.packbits(bits[shifts >= 0].astype(np.uint8), bitorder="big").tobytes()
    return bytes([lo, hi]) + nibbles + stream


def decode(payload: bytes, count: int) -> np.ndarray:
    """The ``count`` values :func:`encode` wrote, as int64."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if count == 0:
        if payload:
            raise DataError("huffman codes: payload for no values")
        return np.zeros(0, np.int64)
    if len(payload) < 3:
        raise DataError(f"huffman codes: payload is {len(payload)} bytes")
    lo, hi = payload[0], payload[1]
    if hi < lo:
        raise DataError(f"huffman codes: symbol range {lo}..{hi} is empty")
    n = hi - lo + 1
    head = 2 + -(-n // 2)
    if len(payload) < head:
        raise DataError(f"huffman codes: payload is {len(payload)} bytes, under {head}")
    nibbles = np.frombuffer(payload[2:head], np.uint8)
    table = np.stack([nibbles & 15, nibbles >> 4], axis=1).ravel()[:n].astype(np.int64)
    if n % 2 and nibbles[-1] >> 4:
        raise DataError("huffman codes: padding nibble is not zero")
    if not table.any():
        raise DataError("huffman codes: no symbol has a code")
    lengths = np.zeros(SYMBOLS, np.int64)
    lengths[lo:hi + 1] = table
    codes = canonical_codes(lengths)
    stream = np.frombuffer(payload[head:], np.uint8)
    nbits = 8 * stream.size
    if count > nbits:
        raise DataError(f"huffman codes: {nbits} bits cannot hold {count} values")
    width = int(table.max())
    # lookup by the next `width` bits: the symbol whose code is their prefix, and its length
    symbol_at = np.full(1 << width, -1, np.int64)
    length_at = np.zeros(1 << width, np.int64)
    for symbol in np.flatnonzero(lengths):
        span = width - int(lengths[symbol])
        start = int(codes[symbol]) << span
        symbol_at[start:start + (1 << span)] = symbol
        length_at[start:start + (1 << span)] = lengths[symbol]
    bits = np.concatenate([np.unpackbits(stream, bitorder="big"), np.zeros(width, np.uint8)])
    window = np.zeros(nbits, np.int64)
    for j in range(width):
        window = (window << 1) | bits[j:j + nbits]
    symbols, steps = symbol_at[window].tolist(), length_at[window].tolist()
    out = [0] * count
    position = 0
    for i in range(count):  # each code's start depends on the one before: one pass
        if position >= nbits:
            raise DataError(f"huffman codes: the bits end after {i} of {count} values")
        symbol = symbols[position]
        if symbol < 0:
            raise DataError(f"huffman codes: bit {position} starts no code")
        out[i] = symbol
        position += steps[position]
    if position > nbits or -(-position // 8) != stream.size or bits[position:nbits].any():
        raise DataError("huffman codes: the bits do not end with the last value")
    return np.asarray(out, np.int64)


__all__ = ["MAX_LENGTH", "canonical_codes", "code_lengths", "decode", "encode"]
