"""Bit packing and sparsity-mask encodings of the .pkz file.

Round trips are property tests over random values, shapes and masks; each structured
encoding is checked to win when its structure holds; decoders are fed hostile payloads and
parameters, which must give DataError or a mask of the right shape, never anything else.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit.artifacts import arith, codecs
from prunekit.artifacts.codecs import (
    MASK_ENCODINGS,
    decode_mask,
    encode_bitmap,
    encode_colbands,
    encode_delta,
    encode_kernels,
    encode_mask,
    encode_rice,
    encode_rowbands,
    encode_rows,
    pack_bits,
    signed_to_unsigned,
    unpack_bits,
    unsigned_to_signed,
)
from prunekit.errors import DataError

RNG = np.random.default_rng(0)


# --- packed integers -----------------------------------------------------------------------

@st.composite
def packed_values(draw):
    width = draw(st.integers(1, 32))
    values = draw(st.lists(st.integers(0, (1 << width) - 1), max_size=40))
    return width, np.array(values, dtype=np.int64)


@settings(max_examples=150)
@given(packed_values())
def test_pack_bits_round_trips_with_minimal_length(case):
    width, values = case
    data = pack_bits(values, width)
    assert len(data) == (values.size * width + 7) // 8
    assert np.array_equal(unpack_bits(data, width, values.size), values)


def test_pack_bits_is_little_endian_and_zero_padded():
    assert pack_bits(np.array([1, 0, 1, 1]), 1) == b"\x0d"
    assert pack_bits(np.array([5, 3]), 3) == b"\x1d"  # 101 then 011, low bits first
    assert pack_bits(np.array([0xABCD]), 16) == b"\xcd\xab"
    assert pack_bits(np.array([2**32 - 1, 1], dtype=np.uint64), 32) == b"\xff" * 4 + b"\1\0\0\0"


def test_pack_bits_handles_400k_values_of_every_width():
    for width in (1, 4, 9, 17, 32):
        values = RNG.integers(0, 1 << width, 400_000)
        assert np.array_equal(unpack_bits(pack_bits(values, width), width, values.size),
                              values)


@pytest.mark.parametrize("values, width", [
    ([4], 2), ([-1], 3), ([1.0], 3), ([1], 0), ([1], 33),
])
def test_pack_bits_rejects_values_that_do_not_fit(values, width):
    with pytest.raises(ValueError):
        pack_bits(np.array(values), width)


def test_unpack_bits_rejects_short_data_before_allocating():
    with pytest.raises(DataError, match="too short"):
        unpack_bits(b"\xff\xff", 9, 2)
    with pytest.raises(DataError, match="too short"):
        unpack_bits(b"\xff" * 8, 32, 2**40)


@settings(max_examples=100)
@given(st.integers(1, 32).flatmap(lambda bits: st.tuples(
    st.just(bits),
    st.lists(st.integers(-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1), max_size=20))))
def test_offset_binary_round_trips_into_bits_bits(case):
    bits, q = case
    u = signed_to_unsigned(np.array(q, dtype=np.int64), bits)
    assert u.size == 0 or (u.min() >= 0 and u.max() < 2**bits - 1)
    assert np.array_equal(unsigned_to_signed(u, bits), q)


def test_offset_binary_rejects_out_of_range_codes():
    with pytest.raises(ValueError):
        signed_to_unsigned(np.array([-8]), 4)
    with pytest.raises(DataError):
        unsigned_to_signed(np.array([15]), 4)  # the unused all-ones code


# --- masks: round trips --------------------------------------------------------------------

@st.composite
def masks(draw, max_rows=12, max_cols=30):
    rows = draw(st.integers(1, max_rows))
    cols = draw(st.integers(1, max_cols))
    density = draw(st.sampled_from([0.0, 0.02, 0.3, 0.5, 0.9, 1.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    return np.random.default_rng(seed).random((rows, cols)) < density


def _round_trip(name, params, payload, m):
    decoded = decode_mask(name, params, payload, m.shape)
    assert decoded.dtype == bool and decoded.shape == m.shape
    assert np.array_equal(decoded, m)


@settings(max_examples=150)
@given(masks(), st.integers(1, 12), st.integers(1, 30), st.sampled_from([2, 3, 4, 9]))
def test_encode_mask_round_trips_any_mask(m, band_rows, band_cols, kernel):
    hints = {"band_rows": band_rows, "band_cols": band_cols, "kernel": kernel}
    name, params, payload = encode_mask(m, hints)
    _round_trip(name, params, payload, m)
    assert len(payload) <= len(encode_bitmap(m)[1])


@settings(max_examples=100)
@given(masks())
def test_bitmap_and_delta_round_trip_any_mask(m):
    _round_trip("bitmap", *encode_bitmap(m), m)
    _round_trip("delta", *encode_delta(m), m)


@st.composite
def banded_masks(draw):
    """A mask constant within bands of ``band`` rows (ragged last band)."""
    rows, cols, band = draw(st.integers(1, 20)), draw(st.integers(1, 20)), draw(st.integers(1, 8))
    band = min(band, rows)
    heads = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).random((rows, cols)) < 0.5
    return np.repeat(heads[: -(-rows // band)], band, axis=0)[:rows], band


@settings(max_examples=80)
@given(banded_masks())
def test_band_encodings_round_trip(case):
    m, band = case
    _round_trip("colbands", *encode_colbands(m, band), m)
    _round_trip("rowbands", *encode_rowbands(m.T, band), m.T)
    rows_mask = np.repeat(m[:, :1], 3, axis=1)
    _round_trip("rows", *encode_rows(rows_mask), rows_mask)


@settings(max_examples=80)
@given(st.integers(1, 10), st.integers(1, 6), st.sampled_from([2, 4, 9]),
       st.integers(1, 6), st.integers(0, 2**32 - 1))
def test_kernels_round_trip(rows, kernels_per_row, kernel, patterns, seed):
    rng = np.random.default_rng(seed)
    library = rng.random((patterns, kernel)) < 0.5
    m = library[rng.integers(0, patterns, rows * kernels_per_row)].reshape(rows, -1)
    _round_trip("kernels", *encode_kernels(m, kernel), m)


def test_structured_encoders_refuse_masks_without_their_structure():
    m = np.eye(4, dtype=bool)
    for encode, size in [(encode_colbands, 2), (encode_rowbands, 2), (encode_kernels, 3),
                         (encode_colbands, 5), (encode_kernels, 1)]:
        with pytest.raises(ValueError):
            encode(m, size)
    with pytest.raises(ValueError):
        encode_rows(m)


# --- masks: which encoding wins ------------------------------------------------------------

def _filter_mask():
    return np.repeat(RNG.random((64, 1)) < 0.5, 576, axis=1)


def _channel_mask():  # whole input channels (9 columns each) pruned across all filters
    return np.repeat(np.repeat(RNG.random((1, 64)) < 0.5, 9, axis=1), 64, axis=0)


def _block_column_mask():  # BLK-REW: blocks of 8 rows keep whole columns
    return np.repeat(RNG.random((8, 576)) < 0.5, 8, axis=0)


def _block_row_mask():  # blocks of 4 columns keep whole rows
    return np.repeat(RNG.random((64, 144)) < 0.5, 4, axis=1)


def _pattern_mask():  # 4 patterns of 4 entries, one kernel in 5 pruned (connectivity)
    library = np.zeros((5, 9), bool)
    for i, keep in enumerate([[0, 1, 3, 4], [1, 4, 5, 7], [3, 4, 5, 7], [1, 3, 4, 7]]):
        library[i, keep] = True
    return library[RNG.integers(0, 5, 64 * 64)].reshape(64, 576)


def _irregular_mask():
    return RNG.random((64, 576)) < 0.05


def _regular_mask():
    """Entries at a fixed stride: equal gaps, where fixed-width codes beat Rice codes."""
    m = np.zeros(64 * 576, bool)
    m[::7] = True
    return m.reshape(64, 576)


@pytest.mark.parametrize("make, hints, expected, params", [
    (lambda: np.ones((64, 576), bool), {}, "dense", {}),
    (_filter_mask, {"band_rows": 8, "band_cols": 4, "kernel": 9}, "rows", {}),
    (_channel_mask, {"band_rows": 8, "kernel": 9}, "colbands", {"band_rows": 64}),
    (_block_column_mask, {"band_rows": 8, "band_cols": 4}, "colbands", {"band_rows": 8}),
    (_block_row_mask, {"band_rows": 8, "band_cols": 4}, "rowbands", {"band_cols": 4}),
    (_pattern_mask, {"band_rows": 8, "kernel": 9}, "kernels", {"kernel": 9, "patterns": 5}),
    (_irregular_mask, {"kernel": 9}, "rice", None),
    (_regular_mask, {}, "delta", None),
    (lambda: RNG.random((64, 576)) < 0.5, {"kernel": 9}, "bitmap", {}),
])
def test_each_encoding_wins_where_its_structure_holds(make, hints, expected, params):
    m = make()
    name, got_params, payload = encode_mask(m, hints)
    assert name == expected
    if params is not None:
        assert got_params == params
    if name not in ("bitmap", "delta", "rice"):
        assert len(payload) < min(len(encode_bitmap(m)[1]), len(encode_delta(m)[1]))
    _round_trip(name, got_params, payload, m)


def test_ties_are_broken_by_a_fixed_order():
    m = np.zeros((4, 4), bool)
    assert encode_mask(m)[:2] == ("delta", {"k": 1, "codes": 0})  # the only empty payload
    assert encode_mask(np.ones((4, 4), bool))[0] == "dense"
    assert encode_mask(np.ones((0, 4), bool))[0] == "dense"


def test_encode_mask_rejects_bad_hints_and_masks():
    with pytest.raises(ValueError, match="unknown mask hints"):
        encode_mask(np.ones((2, 2), bool), {"band": 2})
    with pytest.raises(ValueError, match="positive integer"):
        encode_mask(np.ones((2, 2), bool), {"kernel": 0})
    with pytest.raises(ValueError, match="2-D boolean"):
        encode_mask(np.ones((2, 2)))


# --- delta's escape codes ------------------------------------------------------------------

def test_delta_escapes_cover_gaps_wider_than_k_bits():
    m = np.zeros((1, 200_000), bool)
    m[0, [0, 1, 199_999]] = True
    params, payload = encode_delta(m)
    assert params["k"] == 16
    assert params["codes"] == 3 + 199_997 // (2**16 - 1)  # three entries + escapes
    _round_trip("delta", params, payload, m)


def test_delta_picks_small_codes_with_escapes_for_rare_long_gaps():
    m = np.zeros((1, 20_000), bool)
    m[0, :2000:2] = True  # gaps of 1 ...
    m[0, -1] = True  # ... then one of ~18000
    params, payload = encode_delta(m)
    assert params["k"] < 8 and params["codes"] > m.sum()
    _round_trip("delta", params, payload, m)


# --- decoders against hostile input --------------------------------------------------------

def _empty_lines_mask(regular: bool) -> np.ndarray:
    """Entries confined to a few rows and columns (a pruned classifier layer), inside them
    at a fixed stride or at random."""
    m = np.zeros((100, 120), bool)
    rows = np.sort(RNG.choice(100, 20, replace=False))
    cols = np.sort(RNG.choice(120, 30, replace=False))
    inner = np.zeros((20, 30), bool)
    if regular:  # a stride coprime with the width reaches every row and column
        inner.reshape(-1)[::7] = True
    else:  # every chosen row and column keeps something, rates alike everywhere
        inner = RNG.random((20, 30)) < 0.2
        inner[np.arange(20), np.arange(20)] = inner[np.arange(10), 20 + np.arange(10)] = True
    m[np.ix_(rows, cols)] = inner
    return m


@pytest.mark.parametrize("regular, expected, whole", [(True, "subdelta", encode_delta),
                                                      (False, "subrice", encode_rice)])
def test_submatrix_encodings_win_when_rows_and_columns_are_empty(regular, expected, whole):
    m = _empty_lines_mask(regular)
    name, params, payload = encode_mask(m)
    assert name == expected and len(payload) < len(whole(m)[1])
    _round_trip(name, params, payload, m)


def test_rice_codes_any_mask_and_a_wrong_entry_count_never_escapes_the_shape():
    for m in (RNG.random((30, 70)) < 0.03, np.zeros((3, 3), bool), np.ones((2, 5), bool)):
        params, payload = encode_rice(m)
        _round_trip("rice", params, payload, m)
    m = RNG.random((30, 70)) < 0.03
    params, payload = encode_rice(m)
    for n in (params["n"] + 1, params["n"] + 50, 30 * 70):
        try:
            got = decode_mask("rice", {**params, "n": n}, payload, m.shape)
        except DataError:
            continue
        assert got.shape == m.shape and got.dtype == bool


def _uneven_rates_mask(shape=(64, 300)):
    """Irregular pruning as it comes out of training: each row (neuron) and each column
    (input) keeps weights at its own rate, from almost none to a third."""
    rows = RNG.uniform(0.02, 1.0, (shape[0], 1)) ** 2
    cols = RNG.uniform(0.02, 1.0, (1, shape[1])) ** 2
    return RNG.random(shape) < 0.35 * rows * cols / (rows.mean() * cols.mean()) / 4


def test_arith_beats_gap_codes_where_rows_and_columns_keep_at_different_rates():
    m = _uneven_rates_mask()
    name, params, payload = encode_mask(m)
    assert name in ("arith", "subarith")
    assert len(payload) < 0.9 * len(encode_rice(m)[1])
    _round_trip(name, params, payload, m)


def test_arith_costs_little_more_than_rice_where_the_rate_is_uniform():
    m = _irregular_mask()
    assert len(codecs.encode_arith(m)[1]) < 1.1 * len(encode_rice(m)[1])
    assert encode_mask(m)[0] == "rice"


def test_arith_round_trips_edge_masks_and_refuses_too_many_entries():
    for m in (np.zeros((1, 1), bool), np.ones((1, 1), bool), np.ones((3, 4), bool),
              np.zeros((5, 2), bool), RNG.random((1, 300)) < 0.1, RNG.random((300, 1)) < 0.9):
        params, payload = codecs.encode_arith(m)
        _round_trip("arith", params, payload, m)
    too_many = (arith.MAX_ENTRIES // 64 + 1, 64)
    with pytest.raises(ValueError):
        codecs.encode_arith(np.zeros(too_many, bool))
    with pytest.raises(DataError, match="exceeds"):  # before any decoding step
        decode_mask("arith", {}, b"\1" * 8, too_many)


def _samples():
    """One honest (name, params, payload, shape) per encoding."""
    cases = [("dense", np.ones((8, 18), bool), {}), ("bitmap", RNG.random((8, 18)) < 0.5, {}),
             ("delta", _irregular_mask()[:8, :18], {}), ("rows", _filter_mask()[:8, :18], {}),
             ("colbands", _block_column_mask()[:8, :18], {"band_rows": 4}),
             ("rowbands", _block_row_mask()[:8, :18], {"band_cols": 2}),
             ("kernels", _pattern_mask()[:8, :18], {"kernel": 9}),
             ("subdelta", _empty_lines_mask(True), {}), ("rice", _irregular_mask()[:16, :200], {}),
             ("subrice", _empty_lines_mask(False), {}), ("arith", _uneven_rates_mask(), {})]
    out = []
    for expected, m, hints in cases:
        name, params, payload = encode_mask(m, hints)
        assert name == expected
        out.append((name, params, payload, m.shape))
    m = _empty_lines_mask(False)  # the submatrix variant of arith, whether or not it wins
    return out + [("subarith", *codecs.encode_subarith(m), m.shape)]


SAMPLES = _samples()


def test_every_encoding_has_a_sample():
    assert sorted(name for name, *_ in SAMPLES) == sorted(MASK_ENCODINGS)


@pytest.mark.parametrize("name, params, payload, shape", SAMPLES)
def test_payloads_of_the_wrong_length_are_rejected(name, params, payload, shape):
    with pytest.raises(DataError):
        decode_mask(name, params, payload + b"\0", shape)
    if payload:
        with pytest.raises(DataError):
            decode_mask(name, params, payload[:-1], shape)


@pytest.mark.parametrize("name, params, payload, shape", SAMPLES)
def test_wrong_params_are_rejected(name, params, payload, shape):
    with pytest.raises(DataError):
        decode_mask(name, {**params, "extra": 1}, payload, shape)
    for key in params:
        for bad in (True, -1, 10**9, "2", None):
            with pytest.raises(DataError):
                decode_mask(name, {**params, key: bad}, payload, shape)
    with pytest.raises(DataError):
        decode_mask(name, [], payload, shape)


@pytest.mark.parametrize("shape", [(2**20, 2**20), (-1, 4), (2, 2, 2), (2.0, 2), "ab"])
def test_bad_shapes_are_rejected_before_allocating(shape):
    with pytest.raises(DataError):
        decode_mask("dense", {}, b"", shape)


def test_unknown_encoding_is_rejected():
    with pytest.raises(DataError, match="unknown mask encoding 'rle'"):
        decode_mask("rle", {}, b"", (2, 2))


def test_nonzero_padding_bits_are_rejected():
    with pytest.raises(DataError, match="padding"):
        decode_mask("bitmap", {}, b"\xff", (1, 5))
    with pytest.raises(DataError, match="padding"):
        decode_mask("delta", {"k": 3, "codes": 2}, b"\xc0", (1, 50))


def test_delta_positions_beyond_the_shape_are_rejected():
    with pytest.raises(DataError, match="beyond"):
        decode_mask("delta", {"k": 4, "codes": 1}, b"\x09", (2, 4))  # skip 9: position 9
    with pytest.raises(DataError, match="escape"):
        decode_mask("delta", {"k": 2, "codes": 1}, b"\x03", (2, 4))


def test_kernel_indices_beyond_the_library_are_rejected():
    # 3 patterns of 2 bits (1 byte), then 3 indices at 2 bits: 0, 1 and 3
    with pytest.raises(DataError, match="beyond 3 patterns"):
        decode_mask("kernels", {"kernel": 2, "patterns": 3}, b"\x1b\x34", (1, 6))
    with pytest.raises(DataError, match="does not divide"):
        decode_mask("kernels", {"kernel": 3, "patterns": 1}, b"\x07", (1, 4))


@settings(max_examples=200)
@given(st.sampled_from(SAMPLES), st.binary(max_size=40))
def test_random_payloads_give_data_error_or_a_mask_of_the_right_shape(sample, payload):
    name, params, _, shape = sample
    try:
        decoded = decode_mask(name, params, payload, shape)
    except DataError:
        return
    assert decoded.shape == shape and decoded.dtype == bool


def test_max_entries_bounds_dense_masks():
    rows = codecs.MAX_ENTRIES // 1024
    with pytest.raises(DataError, match="exceeds"):
        decode_mask("dense", {}, b"", (rows + 1, 1024))
