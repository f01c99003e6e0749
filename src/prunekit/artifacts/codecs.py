"""Bit-level codecs of the ``.pkz`` file: packed integer codes and sparsity masks.

Pure numpy, vectorised (no Python loop per value). Every decoder treats its input as
hostile: lengths and parameters are checked against the shape before anything is
allocated, and any inconsistency is a :class:`DataError`, never a wrong-shaped result.
Encoders raise ``ValueError`` for arguments the caller got wrong.

Masks are 2-D boolean GEMM views ``[rows, cols]`` (conv weights ``[out, in*kh*kw]``).
Encodings (``payload`` bit streams are little-endian, the last byte zero-padded):

==========  ================================  =========================================
name        params                            payload
==========  ================================  =========================================
dense       {}                                nothing (every entry kept)
bitmap      {}                                one bit per entry, row-major
delta       {"k": k, "codes": n}              n k-bit gap codes (see :func:`encode_delta`)
subdelta    {"k": k, "codes": n}              row bitmap, column bitmap, delta of the
                                              submatrix of kept rows x kept columns
rice        {"k": k, "n": n}                  n k-bit gap remainders, then the gaps' unary
                                              quotients (see :func:`encode_rice`)
subrice     {"k": k, "n": n}                  row and column bitmaps, rice of the submatrix
arith       {}                                adaptive arithmetic code of every entry with
                                              row and column rates (see :mod:`.arith`)
subarith    {}                                row and column bitmaps, arith of the submatrix
rows        {}                                one bit per row (whole rows kept or pruned)
colbands    {"band_rows": r}                  per band of r rows, one bit per column
rowbands    {"band_cols": c}                  per band of c columns, one bit per row
kernels     {"kernel": k, "patterns": L}      L k-bit patterns, then one index per kernel
==========  ================================  =========================================
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import DataError
from . import arith

MAX_ENTRIES = 1 << 28  # mask entries a decoder will build: 256 MiB, a 1 GiB float32 layer
_MAX_WIDTH = 32
_DELTA_WIDTHS = range(1, 17)
_RICE_WIDTHS = range(0, 25)

Mask = np.ndarray
Encoded = tuple[dict, bytes]


# --- packed integers -----------------------------------------------------------------------

def pack_bits(values: np.ndarray, width: int) -> bytes:
    """Pack non-negative integers below ``2**width`` into ``width`` bits each, little-endian
    (value i occupies bits ``i*width`` to ``i*width + width - 1``), the final byte
    zero-padded: quantized codes and indices take exactly the bits they need.

    Each value's bytes are spread into bits with ``np.unpackbits``, the high bits beyond
    ``width`` dropped, and the rest packed again: a few array passes whatever the width.
    """
    _check_width(width)
    values = np.asarray(values).ravel()
    if values.dtype.kind not in "biu":
        raise ValueError(f"pack_bits needs integers, got dtype {values.dtype}")
    if values.size and (values.min() < 0 or values.max() >= 1 << width):
        raise ValueError(f"values must lie in [0, 2**{width}), got [{values.min()}, "
                         f"{values.max()}]")
    word = _word_bytes(width)
    as_bytes = values.astype(f"<u{word}").view(np.uint8).reshape(-1, word)
    bits = np.unpackbits(as_bytes, axis=1, bitorder="little")[:, :width]
    return np.packbits(bits, bitorder="little").tobytes()


def unpack_bits(data: bytes, width: int, count: int) -> np.ndarray:
    """The ``count`` values that :func:`pack_bits` packed at ``width`` bits, as int64.
    Bytes beyond the packed ones are ignored; too few is a :class:`DataError` (checked
    before anything is allocated, so a hostile ``count`` costs nothing)."""
    _check_width(width)
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    needed = _packed_bytes(count * width)
    if len(data) < needed:
        raise DataError(f"packed data is too short: {len(data)} bytes for {count} values "
                        f"of {width} bits (needs {needed})")
    if count == 0:
        return np.zeros(0, np.int64)
    raw = np.frombuffer(data, np.uint8, count=needed)
    bits = np.unpackbits(raw, count=count * width, bitorder="little").reshape(count, width)
    word = _word_bytes(width)
    words = np.zeros((count, 8 * word), np.uint8)
    words[:, :width] = bits
    return np.packbits(words, axis=1, bitorder="little").view(f"<u{word}").ravel() \
        .astype(np.int64)


def signed_to_unsigned(q: np.ndarray, bits: int) -> np.ndarray:
    """Offset binary: codes in [-(2^(bits-1)-1), 2^(bits-1)-1] become [0, 2^bits - 2], so
    symmetric quantization levels pack with :func:`pack_bits` at ``bits`` bits."""
    offset = _offset(bits)
    q = np.asarray(q, dtype=np.int64)
    if q.size and (q.min() < -offset or q.max() > offset):
        raise ValueError(f"{bits}-bit codes must lie in [{-offset}, {offset}], got "
                         f"[{q.min()}, {q.max()}]")
    return q + offset


def unsigned_to_signed(u: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of :func:`signed_to_unsigned`. ``u`` comes from a file, so the one unused
    code (2^bits - 1) or anything outside the range is a :class:`DataError`."""
    offset = _offset(bits)
    u = np.asarray(u, dtype=np.int64)
    if u.size and (u.min() < 0 or u.max() > 2 * offset):
        raise DataError(f"{bits}-bit codes must lie in [0, {2 * offset}], got "
                        f"[{u.min()}, {u.max()}]")
    return u - offset


def _check_width(width: int) -> None:
    if not 1 <= width <= _MAX_WIDTH:
        raise ValueError(f"bit width must be in 1..{_MAX_WIDTH}, got {width}")


def _offset(bits: int) -> int:
    _check_width(bits)
    return (1 << (bits - 1)) - 1


def _word_bytes(width: int) -> int:
    """The smallest numpy unsigned type holding ``width`` bits: less to spread into bits."""
    return 1 if width <= 8 else 2 if width <= 16 else 4


def _packed_bytes(nbits: int) -> int:
    return -(-nbits // 8)


# --- bitmaps: the building block of most mask encodings ------------------------------------

def _pack_bitmap(bits: np.ndarray) -> bytes:
    return np.packbits(bits.ravel(), bitorder="little").tobytes()


def _unpack_bitmap(payload: bytes, count: int, what: str) -> np.ndarray:
    """Exactly ``count`` bits from exactly ``ceil(count / 8)`` bytes, padding bits zero, so
    each mask has one encoding and a payload of the wrong size never decodes."""
    _check_length(payload, _packed_bytes(count), what)
    bits = np.unpackbits(np.frombuffer(payload, np.uint8), bitorder="little")
    if bits[count:].any():
        raise DataError(f"{what}: padding bits are not zero")
    return bits[:count].astype(bool)


def _unpack_exact(payload: bytes, width: int, count: int, what: str) -> np.ndarray:
    """:func:`unpack_bits` for a payload that must be exactly the packed values."""
    _check_length(payload, _packed_bytes(count * width), what)
    used = count * width % 8
    if used and payload[-1] >> used:
        raise DataError(f"{what}: padding bits are not zero")
    return unpack_bits(payload, width, count)


def _check_length(payload: bytes, expected: int, what: str) -> None:
    if len(payload) != expected:
        raise DataError(f"{what}: payload is {len(payload)} bytes, expected {expected}")


# --- mask encodings ------------------------------------------------------------------------

def encode_dense(m: Mask) -> Encoded:
    """Every entry kept (an unpruned layer): nothing to store."""
    if not _as_mask(m).all():
        raise ValueError("dense needs a mask with every entry kept")
    return {}, b""


def decode_dense(params: dict, payload: bytes, shape: tuple[int, int]) -> Mask:
    shape = _check_shape(shape)
    _check_keys(params, (), "dense")
    _check_length(payload, 0, "dense mask")
    return np.ones(shape, bool)


def encode_bitmap(m: Mask) -> Encoded:
    """One bit per entry: the fallback that suits any mask near half dense."""
    return {}, _pack_bitmap(_as_mask(m))


def decode_bitmap(params: dict, payload: bytes, shape: tuple[int, int]) -> Mask:
    rows, cols = _check_shape(shape)
    _check_keys(params, (), "bitmap")
    return _unpack_bitmap(payload, rows * cols, "bitmap mask").reshape(rows, cols)


def encode_delta(m: Mask) -> Encoded:
    """Irregular sparsity, as in Deep Compression: the row-major positions of kept entries
    as gaps (pruned entries skipped since the previous kept one) in k-bit codes. Code c <
    2^k - 1 means "skip c, then a kept entry"; the all-ones code means "skip 2^k - 1, no
    entry here", so any gap fits. k (1..16) is chosen to minimise the total bits."""
    positions = np.flatnonzero(_as_mask(m))
    gaps = np.diff(positions, prepend=-1) - 1
    k = min(_DELTA_WIDTHS, key=lambda width: width * _delta_code_count(gaps, width))
    escape = (1 << k) - 1
    escapes = gaps // escape
    # each gap becomes `escapes` escape codes followed by its remainder
    codes = np.full(int(escapes.sum()) + gaps.size, escape, np.int64)
    codes[np.cumsum(escapes + 1) - 1] = gaps % escape
    return {"k": k, "codes": int(codes.size)}, pack_bits(codes, k)


def decode_delta(params: dict, payload: bytes, shape: tuple[int, int]) -> Mask:
    rows, cols = _check_shape(shape)
    _check_keys(params, ("k", "codes"), "delta")
    k = _int_param(params, "k", 1, _DELTA_WIDTHS[-1], "delta")
    count = _int_param(params, "codes", 0, 8 * len(payload), "delta")
    codes = _unpack_exact(payload, k, count, "delta mask")
    escape = (1 << k) - 1
    if count and codes[-1] == escape:
        raise DataError("delta mask: the codes end with an escape")
    cursor = np.cumsum(np.where(codes == escape, escape, codes + 1))
    positions = cursor[codes != escape] - 1
    if positions.size and positions[-1] >= rows * cols:
        raise DataError(f"delta mask: position {positions[-1]} is beyond {rows}x{cols}")
    mask = np.zeros(rows * cols, bool)
    mask[positions] = True
    return mask.reshape(rows, cols)


def encode_rice(m: Mask) -> Encoded:
    """Irregular sparsity with Golomb-Rice codes for the gaps between kept entries: a gap g
    is ``g >> k`` in unary plus its ``k`` low bits, the optimal prefix code for the geometric
    gaps of randomly placed entries (within a few percent of their entropy, where fixed
    k-bit codes with escapes lose 10-20%). The remainders come first (``n`` k-bit codes),
    then the unary parts (``g >> k`` ones and a zero per entry), so both decode in bulk."""
    positions = np.flatnonzero(_as_mask(m))
    gaps = np.diff(positions, prepend=-1) - 1
    k = min(_RICE_WIDTHS, key=lambda width: int((gaps >> width).sum()) + gaps.size * width)
    quotients = gaps >> k
    unary = np.ones(int(quotients.sum()) + gaps.size, bool)
    unary[np.cumsum(quotients + 1) - 1] = False
    remainders = pack_bits(gaps & ((1 << k) - 1), k) if k else b""
    return {"k": k, "n": int(gaps.size)}, remainders + _pack_bitmap(unary)


def decode_rice(params: dict, payload: bytes, shape: tuple[int, int]) -> Mask:
    rows, cols = _check_shape(shape)
    _check_keys(params, ("k", "n"), "rice")
    k = _int_param(params, "k", 0, _RICE_WIDTHS[-1], "rice")
    n = _int_param(params, "n", 0, rows * cols, "rice")
    head = _packed_bytes(n * k)
    if len(payload) < head:
        raise DataError(f"rice mask: payload is {len(payload)} bytes, under {head}")
    remainders = _unpack_exact(payload[:head], k, n, "rice remainders") if k else np.zeros(n,
                                                                                        np.int64)
    unary = np.unpackbits(np.frombuffer(payload[head:], np.uint8), bitorder="little")
    ends = np.flatnonzero(unary == 0)[:n]  # each entry's unary part ends with a zero
    used = int(ends[-1]) + 1 if n else 0
    if ends.size < n or len(payload) - head != _packed_bytes(used) or unary[used:].any():
        raise DataError("rice mask: the unary codes do not match the entry count")
    quotients = np.diff(ends, prepend=-1) - 1
    positions = np.cumsum((quotients << k) + remainders + 1) - 1
    if positions.size and positions[-1] >= rows * cols:
        raise DataError(f"rice mask: position {positions[-1]} is beyond {rows}x{cols}")
    mask = np.zeros(rows * cols, bool)
    mask[positions] = True
    return mask.reshape(rows, cols)


def encode_arith(m: Mask) -> Encoded:
    """Irregular sparsity whose rate varies by row and column (see :mod:`.arith`); masks of
    up to ``arith.MAX_ENTRIES`` entries."""
    return {}, arith.encode(_as_mask(m))


def decode_arith(params: dict, payload: bytes, shape: tuple[int, int]) -> Mask:
    rows, cols = _check_shape(shape)
    _check_keys(params, (), "arith")
    return arith.decode(payload, (rows, cols))


def _submatrix(inner: Callable[[Mask], Encoded]) -> Callable[[Mask], Encoded]:
    """An encoding of the submatrix of the rows and columns that keep anything (with their
    two bitmaps in front): a pruned fully connected layer often loses most of its inputs
    and neurons, and inside what is left the kept entries are denser, their gaps shorter."""
    def encode(m: Mask) -> Encoded:
        m = _as_mask(m)
        rows, cols = m.any(axis=1), m.any(axis=0)
        params, payload = inner(m[rows][:, cols])
        return params, _pack_bitmap(rows) + _pack_bitmap(cols) + payload
    return encode


def _decode_submatrix(inner: Callable[[dict, bytes, tuple[int, int]], Mask], name: str):
    def decode(params: dict, payload: bytes, shape: tuple[int, int]) -> Mask:
        n_rows, n_cols = _check_shape(shape)
        head = _packed_bytes(n_rows) + _packed_bytes(n_cols)
        if len(payload) < head:
            raise DataError(f"{name} mask: payload is {len(payload)} bytes, under {head}")
        rows = _unpack_bitmap(payload[:_packed_bytes(n_rows)], n_rows, f"{name} rows")
        cols = _unpack_bitmap(payload[_packed_bytes(n_rows):head], n_cols, f"{name} columns")
        sub = inner(params, payload[head:], (int(rows.sum()), int(cols.sum())))
        if not (sub.any(axis=1).all() and sub.any(axis=0).all()):  # one encoding per mask
            raise DataError(f"{name} mask: a row or column marked kept holds no entry")
        mask = np.zeros((n_rows, n_cols), bool)
        mask[np.ix_(rows, cols)] = sub
        return mask
    return decode


def _delta_code_count(gaps: np.ndarray, width: int) -> int:
    return int((gaps // ((1 << width) - 1)).sum()) + gaps.size


def encode_rows(m: Mask) -> Encoded:
    """Filter pruning: every row all kept or all pruned, one bit per row."""
    m = _as_mask(m)
    return {}, _encode_bands(m.T, m.shape[1], "rows")


def decode_rows(params: dict, payload: bytes, shape: tuple[int, int]) -> Mask:
    rows, cols = _check_shape(shape)
    _check_keys(params, (), "rows")
    return _decode_bands(payload, max(cols, 1), cols, rows, "rows mask").T


def encode_colbands(m: Mask, band_rows: int) -> Encoded:
    """Each band of ``band_rows`` consecutive rows (the last may be shorter) shares one
    column bitmap: band_rows = rows is column / channel pruning, band_rows = the block
    height is BLK-REW block-column pruning."""
    return {"band_rows": band_rows}, _encode_bands(_as_mask(m), band_rows, "colbands")


def decode_colbands(params: dict, payload: bytes, shape: tuple[int, int]) -> Mask:
    rows, cols = _check_shape(shape)
    _check_keys(params, ("band_rows",), "colbands")
    band = _int_param(params, "band_rows", 1, rows, "colbands")
    return _decode_bands(payload, band, rows, cols, "colbands mask")


def encode_rowbands(m: Mask, band_cols: int) -> Encoded:
    """The transpose of colbands: each band of ``band_cols`` consecutive columns shares one
    row bitmap (BLK-REW block-row pruning)."""
    return {"band_cols": band_cols}, _encode_bands(_as_mask(m).T, band_cols, "rowbands")


def decode_rowbands(params: dict, payload: bytes, shape: tuple[int, int]) -> Mask:
    rows, cols = _check_shape(shape)
    _check_keys(params, ("band_cols",), "rowbands")
    band = _int_param(params, "band_cols", 1, cols, "rowbands")
    return _decode_bands(payload, band, cols, rows, "rowbands mask").T


def _encode_bands(m: Mask, band: int, name: str) -> bytes:
    """The first row of each band of ``band`` rows, if every row equals its band's first."""
    rows = m.shape[0]
    if not 1 <= band <= rows:
        raise ValueError(f"{name}: band size must be in 1..{rows}, got {band}")
    heads = m[::band]
    if not np.array_equal(_repeat_bands(heads, band, rows), m):
        raise ValueError(f"{name}: the mask is not constant within bands of {band}")
    return _pack_bitmap(heads)


def _decode_bands(payload: bytes, band: int, rows: int, cols: int, what: str) -> Mask:
    bands = -(-rows // band)
    heads = _unpack_bitmap(payload, bands * cols, what).reshape(bands, cols)
    return _repeat_bands(heads, band, rows)


def _repeat_bands(heads: Mask, band: int, rows: int) -> Mask:
    return np.repeat(heads, band, axis=0)[:rows]


def encode_kernels(m: Mask, kernel: int) -> Encoded:
    """Pattern + connectivity pruning: each group of ``kernel`` (= kh*kw) consecutive
    columns of a row is one kernel whose kept entries follow one of a few patterns (the
    empty pattern is a removed connection). Payload: the sorted library of distinct
    patterns as ``kernel``-bit bitmaps, then each kernel's library index at
    ceil(log2(len(library))) bits (no bits at all for a one-pattern library)."""
    m = _as_mask(m)
    if kernel < 2 or m.shape[1] % kernel:
        raise ValueError(f"kernels: kernel size {kernel} must be >= 2 and divide the "
                         f"{m.shape[1]} columns")
    library, index = np.unique(m.reshape(-1, kernel), axis=0, return_inverse=True)
    width = _index_width(len(library))
    indices = pack_bits(index.ravel(), width) if width else b""
    return {"kernel": kernel, "patterns": len(library)}, _pack_bitmap(library) + indices


def decode_kernels(params: dict, payload: bytes, shape: tuple[int, int]) -> Mask:
    rows, cols = _check_shape(shape)
    _check_keys(params, ("kernel", "patterns"), "kernels")
    kernel = _int_param(params, "kernel", 2, max(cols, 2), "kernels")
    if cols % kernel:
        raise DataError(f"kernels mask: kernel size {kernel} does not divide {cols} columns")
    count = rows * cols // kernel
    patterns = _int_param(params, "patterns", min(count, 1), min(count, 1 << min(kernel, 62)),
                          "kernels")
    library_bytes = _packed_bytes(patterns * kernel)
    library = _unpack_bitmap(payload[:library_bytes], patterns * kernel, "kernels library")
    width = _index_width(patterns)
    if width:
        index = _unpack_exact(payload[library_bytes:], width, count, "kernels indices")
    else:
        _check_length(payload[library_bytes:], 0, "kernels indices")
        index = np.zeros(count, np.int64)
    if index.size and index.max() >= patterns:
        raise DataError(f"kernels mask: index {index.max()} is beyond {patterns} patterns")
    return library.reshape(patterns, kernel)[index].reshape(rows, cols)


def _index_width(entries: int) -> int:
    return max(entries - 1, 0).bit_length()


# --- choosing an encoding ------------------------------------------------------------------

_DECODERS: dict[str, Callable[[dict, bytes, tuple[int, int]], Mask]] = {
    "dense": decode_dense, "bitmap": decode_bitmap, "delta": decode_delta,
    "rows": decode_rows, "colbands": decode_colbands, "rowbands": decode_rowbands,
    "kernels": decode_kernels, "rice": decode_rice,
    "subdelta": _decode_submatrix(decode_delta, "subdelta"),
    "subrice": _decode_submatrix(decode_rice, "subrice"),
    "arith": decode_arith, "subarith": _decode_submatrix(decode_arith, "subarith"),
}
encode_subdelta = _submatrix(encode_delta)
encode_subrice = _submatrix(encode_rice)
encode_subarith = _submatrix(encode_arith)
MASK_ENCODINGS = tuple(_DECODERS)
_HINTS = ("band_rows", "band_cols", "kernel")


def encode_mask(m: Mask, hints: dict | None = None) -> tuple[str, dict, bytes]:
    """``(name, params, payload)`` of the encoding with the fewest payload bytes among those
    this mask's structure allows. ``hints`` ({"band_rows": r, "band_cols": c, "kernel": k})
    say which band / kernel sizes to try besides whole columns (r = rows) and whole rows
    (c = cols). Ties go to the earlier candidate: dense, rows, columns, row bands, the
    hinted column bands, row bands and kernels, then bitmap, delta, subdelta, rice, subrice,
    arith, subarith (the last two where the mask, resp. its submatrix, has at most
    ``arith.MAX_ENTRIES`` entries)."""
    m = _as_mask(m)
    hints = _check_hints(hints or {})
    best = None
    for name, encode in _candidates(m, hints):
        try:
            params, payload = encode()
        except ValueError:  # the mask does not have this structure
            continue
        if best is None or len(payload) < len(best[2]):
            best = (name, params, payload)
    return best


def decode_mask(name: str, params: dict, payload: bytes, shape: tuple[int, int]) -> Mask:
    """The ``[rows, cols]`` boolean mask that :func:`encode_mask` encoded; any unknown name,
    parameter or inconsistent payload is a :class:`DataError`."""
    if name not in _DECODERS:
        raise DataError(f"unknown mask encoding {name!r}; known: {list(MASK_ENCODINGS)}")
    if not isinstance(params, dict):
        raise DataError(f"{name} mask: params must be a dict, got {type(params).__name__}")
    return _DECODERS[name](params, payload, shape)


def _candidates(m: Mask, hints: dict) -> list[tuple[str, Callable[[], Encoded]]]:
    rows, cols = m.shape
    candidates = [("dense", lambda: encode_dense(m))]
    if m.size:
        candidates += [
            ("rows", lambda: encode_rows(m)),
            ("colbands", lambda: encode_colbands(m, rows)),
            ("rowbands", lambda: encode_rowbands(m, cols)),
        ]
        if hints.get("band_rows", rows) < rows:
            candidates.append(("colbands", lambda: encode_colbands(m, hints["band_rows"])))
        if hints.get("band_cols", cols) < cols:
            candidates.append(("rowbands", lambda: encode_rowbands(m, hints["band_cols"])))
        if hints.get("kernel", 1) > 1:
            candidates.append(("kernels", lambda: encode_kernels(m, hints["kernel"])))
    candidates += [("bitmap", lambda: encode_bitmap(m)), ("delta", lambda: encode_delta(m)),
                   ("subdelta", lambda: encode_subdelta(m)),
                   ("rice", lambda: encode_rice(m)), ("subrice", lambda: encode_subrice(m))]
    if m.any() and not m.all():  # (either raises ValueError beyond arith.MAX_ENTRIES)
        candidates += [("arith", lambda: encode_arith(m)),
                       ("subarith", lambda: encode_subarith(m))]
    return candidates


# --- argument checks -----------------------------------------------------------------------

def _as_mask(m: Mask) -> Mask:
    m = np.asarray(m)
    if m.dtype != bool or m.ndim != 2:
        raise ValueError(f"a mask must be a 2-D boolean array, got {m.ndim}-D {m.dtype}")
    return m


def _check_hints(hints: dict) -> dict:
    unknown = set(hints) - set(_HINTS)
    if unknown:
        raise ValueError(f"unknown mask hints {sorted(unknown)}; known: {list(_HINTS)}")
    for key, value in hints.items():
        if not (_is_int(value) and value >= 1):
            raise ValueError(f"mask hint {key} must be a positive integer, got {value!r}")
    return hints


def _check_shape(shape: tuple[int, int]) -> tuple[int, int]:
    """The shape comes from a file too: two non-negative ints, at most MAX_ENTRIES."""
    if not (isinstance(shape, tuple | list) and len(shape) == 2
            and all(_is_int(n) and n >= 0 for n in shape)):
        raise DataError(f"a mask shape must be two non-negative integers, got {shape!r}")
    rows, cols = int(shape[0]), int(shape[1])
    if rows * cols > MAX_ENTRIES:
        raise DataError(f"mask shape {rows}x{cols} exceeds {MAX_ENTRIES} entries")
    return rows, cols


def _check_keys(params: dict, keys: tuple[str, ...], name: str) -> None:
    if set(params) != set(keys):
        raise DataError(f"{name} mask: params must have keys {list(keys)}, got "
                        f"{sorted(map(str, params))}")


def _int_param(params: dict, key: str, low: int, high: int, name: str) -> int:
    value = params[key]
    if not (_is_int(value) and low <= value <= high):
        raise DataError(f"{name} mask: {key} must be an integer in [{low}, {high}], got "
                        f"{value!r}")
    return int(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)
