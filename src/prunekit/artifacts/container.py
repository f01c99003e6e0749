"""The ``.pkz`` container: a JSON manifest and named byte sections in one checksummed file.

Layout (integers little-endian)::

    offset  size  field
    0       4     magic b"PKZ1"
    4       2     u16 format version, 1
    6       2     u16 flags, 0 (reserved; a reader rejects any other value)
    8       4     u32 M, the length of the manifest block
    12      M     manifest block: raw deflate (RFC 1951, level 9) of the UTF-8 JSON text
                  [manifest, [[name, codec, stored, raw], ...]]
                  (compact separators, sorted keys; the list is the section table)
    12+M    S     the sections' stored bytes back to back, in table order (S = sum of stored)
    12+M+S  4     u32 CRC-32 (zlib.crc32) of every byte before it

Section codecs: 0 raw, 1 raw deflate (level 9), 2 raw LZMA2 (preset 9, dictionary size =
the raw length clamped to [4 KiB, 16 MiB]). The writer stores each section with whichever
codec gives the fewest bytes, raw included (ties: the lower number). ``stored`` is the
section's length in the file, ``raw`` its length once decoded. A section of more than
1 MiB is given to LZMA only when deflate saved at least 10% of it: on float weights deflate
saves 7-8% and LZMA under 1% more at 15 times the time (a 135M-parameter model's file took
minutes to write), while what compresses well (zeros, metadata) is still tried both ways.

Fixed overhead: 16 bytes (magic, version, flags, length prefix, CRC) plus the manifest block;
an empty manifest with no sections makes a 25-byte file. The streams are raw (no zlib or xz
framing) because the CRC already guards the whole file, and framing would cost 6 to 60 bytes
per stream in files that hold a whole LeNet-5 in a few KB.

Reading checks everything (magic, version, length, checksum, flags, manifest, table,
every section's decoded length) before it returns anything, and bounds every decompression
by the length the table declares, so a hostile file cannot make it allocate more than it
honestly holds. Nothing is unpickled or evaluated.
"""

from __future__ import annotations

import json
import lzma
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from ..files import atomic_write_bytes

MAGIC = b"PKZ1"
VERSION = 1
_HEAD = struct.Struct("<4sHHI")  # magic, version, flags, manifest block length
_CRC = struct.Struct("<I")
HEADER_BYTES = _HEAD.size + _CRC.size
RAW, DEFLATE, LZMA = 0, 1, 2
_MANIFEST_LIMIT = 16 << 20  # decoded manifest JSON; real ones are a few KB
_MAX_LENGTH = 1 << 62  # any length in a table; keeps decompressors' limits in range
_RESERVED_NAMES = frozenset({"header", "manifest"})  # keys of section_sizes()

Source = str | os.PathLike | bytes | bytearray | memoryview


def pack_container(manifest: dict, sections: list[tuple[str, bytes]]) -> bytes:
    """The bytes of a ``.pkz`` file holding ``manifest`` and ``sections`` (see module doc)."""
    names = [name for name, _ in sections]
    _check_names(names)
    stored = [_smallest_encoding(bytes(payload)) for _, payload in sections]
    table = [
        [name, codec, len(blob), len(payload)]
        for name, (codec, blob), (_, payload) in zip(names, stored, sections, strict=True)
    ]
    block = _deflate(_manifest_json(manifest, table))
    body = b"".join([_HEAD.pack(MAGIC, VERSION, 0, len(block)), block]
                    + [blob for _, blob in stored])
    return body + _CRC.pack(zlib.crc32(body))


def write_container(path: str | os.PathLike, manifest: dict,
                    sections: list[tuple[str, bytes]]) -> int:
    """Write a ``.pkz`` file atomically (readers see the old file or the new one, never
    half of one) and return its size in bytes."""
    data = pack_container(manifest, sections)
    atomic_write_bytes(path, data)
    return len(data)


def unpack_container(data: bytes, source: str = "the data") -> tuple[dict, dict[str, bytes]]:
    """``(manifest, {name: bytes})`` from a ``.pkz`` file's bytes; ``source`` names the file
    in error messages. Raises :class:`DataError` unless every check passes."""
    parsed = _parse(memoryview(data), source)
    return parsed.manifest, parsed.sections


def read_container(path_or_bytes: Source) -> tuple[dict, dict[str, bytes]]:
    """``(manifest, {name: bytes})`` from a ``.pkz`` path or its bytes; see
    :func:`unpack_container`."""
    data, name = _load(path_or_bytes)
    return unpack_container(data, name)


def section_sizes(path_or_bytes: Source) -> dict[str, int]:
    """Bytes each part occupies on disk: every section by name, plus ``"manifest"`` (the
    manifest block, which holds the section table) and ``"header"`` (magic, version, flags,
    length prefix and CRC). The values sum exactly to the file size."""
    data, name = _load(path_or_bytes)
    parsed = _parse(memoryview(data), name)
    sizes = {"header": HEADER_BYTES, "manifest": parsed.manifest_bytes}
    sizes.update(parsed.stored)
    return sizes


# --- writing -------------------------------------------------------------------------------

def _check_names(names: list[str]) -> None:
    for name in names:
        if not isinstance(name, str) or not name:
            raise ValueError(f"section names must be non-empty strings, got {name!r}")
        if name in _RESERVED_NAMES:
            raise ValueError(f"section name {name!r} is reserved (section_sizes uses it)")
    if len(set(names)) != len(names):
        raise ValueError(f"section names must be unique, got {names}")


def _manifest_json(manifest: dict, table: list) -> bytes:
    """Canonical JSON of the block; refuses what JSON would silently change (int keys,
    tuples, NaN), so that reading gives back exactly the manifest that was written."""
    if not isinstance(manifest, dict):
        raise TypeError(f"the manifest must be a dict, got {type(manifest).__name__}")
    text = json.dumps([manifest, table], sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False)
    if json.loads(text)[0] != manifest:
        raise ValueError("the manifest must be plain JSON data: dicts with str keys, lists, "
                         "str, int, float, bool, None (no tuples, no non-str keys)")
    return text.encode("utf-8")


def _deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -15, 9)
    return packer.compress(data) + packer.flush()


def _lzma_filters(raw_length: int) -> list[dict]:
    """Both sides derive the dictionary from the raw length: no window larger than the data
    (a small file must not make the decoder reserve 64 MiB), and nothing to store."""
    dict_size = min(max(raw_length, 4096), 16 << 20)
    return [{"id": lzma.FILTER_LZMA2, "preset": 9, "dict_size": dict_size}]


def _lzma(data: bytes) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_RAW, filters=_lzma_filters(len(data)))


def stored_size(payload: bytes) -> int:
    """Bytes ``payload`` takes in a file as a section (its smallest codec): what a writer
    compares when it has two encodings of the same part."""
    return len(_smallest_encoding(bytes(payload))[1])


#: sections larger than this try LZMA only where deflate saved LZMA_WORTH of them
LZMA_ALWAYS_BELOW = 1 << 20
LZMA_WORTH = 0.1


def _smallest_encoding(payload: bytes) -> tuple[int, bytes]:
    """``(codec, stored bytes)``: bit-packed codes rarely compress, metadata often does."""
    candidates = [(RAW, payload)]
    if payload:
        deflated = _deflate(payload)
        candidates.append((DEFLATE, deflated))
        if (len(payload) <= LZMA_ALWAYS_BELOW
                or len(deflated) <= (1 - LZMA_WORTH) * len(payload)):
            candidates.append((LZMA, _lzma(payload)))
    return min(candidates, key=lambda item: (len(item[1]), item[0]))


# --- reading -------------------------------------------------------------------------------

@dataclass
class _Parsed:
    manifest: dict
    manifest_bytes: int
    stored: dict[str, int]
    sections: dict[str, bytes]


@dataclass
class _Entry:
    name: str
    codec: int
    stored: int
    raw: int


def _load(source: Source) -> tuple[bytes, str]:
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source), "the data"
    path = Path(source)
    try:
        return path.read_bytes(), str(path)
    except OSError as exc:
        raise DataError(f"cannot read model file {path}: {exc.strerror or exc}") from exc


def _parse(data: memoryview, source: str) -> _Parsed:
    _check_preamble(data, source)
    (crc,) = _CRC.unpack(data[-_CRC.size:])
    if zlib.crc32(data[:-_CRC.size]) != crc:
        raise _damage(data, source)
    _, _, flags, block_length = _HEAD.unpack(data[:_HEAD.size])
    if flags:
        raise DataError(f"{source} uses format flags {flags:#06x}, which this prunekit "
                        "does not know")
    block_end = _HEAD.size + block_length
    manifest, entries = _read_block(data[_HEAD.size:block_end], source)
    listed = sum(entry.stored for entry in entries)
    present = len(data) - block_end - _CRC.size
    if listed != present:
        raise _corrupt(source, f"the section table lists {listed} bytes, the file holds "
                               f"{present}")
    sections, offset = {}, block_end
    for entry in entries:
        sections[entry.name] = _decode(data[offset:offset + entry.stored], entry, source)
        offset += entry.stored
    stored = {entry.name: entry.stored for entry in entries}
    return _Parsed(manifest, block_length, stored, sections)


def _check_preamble(data: memoryview, source: str) -> None:
    """Magic, then version, then that the manifest block fits: in that order, so that each
    kind of wrong file gets the message that explains it."""
    head = bytes(data[:len(MAGIC)])
    if head != MAGIC:
        if len(data) < len(MAGIC) and MAGIC.startswith(head):
            raise _truncated(source, len(data))
        raise DataError(f"{source} is not a prunekit model file (it does not start with "
                        f"{MAGIC!r})")
    if len(data) < 6:
        raise _truncated(source, len(data))
    (version,) = struct.unpack("<H", data[4:6])
    if version != VERSION:
        raise DataError(f"{source} was written by format version {version}; this prunekit "
                        f"reads version {VERSION}")
    if len(data) < HEADER_BYTES:
        raise _truncated(source, len(data))
    block_length = _HEAD.unpack(data[:_HEAD.size])[3]
    if HEADER_BYTES + block_length > len(data):
        raise _truncated(source, len(data), HEADER_BYTES + block_length)


def _damage(data: memoryview, source: str) -> DataError:
    """The checksum failed: say "truncated" when the (unverified) table wants more bytes
    than there are, "checksum mismatch" otherwise. Nothing of the data is returned."""
    block_end = _HEAD.size + _HEAD.unpack(data[:_HEAD.size])[3]
    try:
        _, entries = _read_block(data[_HEAD.size:block_end], source)
    except DataError:
        return _corrupt(source, "checksum mismatch")
    expected = block_end + sum(entry.stored for entry in entries) + _CRC.size
    if expected > len(data):
        return _truncated(source, len(data), expected)
    return _corrupt(source, "checksum mismatch")


def _read_block(block: memoryview, source: str) -> tuple[dict, list[_Entry]]:
    try:
        text = _inflate(block, _MANIFEST_LIMIT)
        document = json.loads(text.decode("utf-8"), parse_constant=_reject_constant)
    except _StreamError as exc:
        raise _corrupt(source, f"manifest: {exc}") from exc
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _corrupt(source, f"the manifest is not valid JSON: {exc}") from exc
    if not (isinstance(document, list) and len(document) == 2):
        raise _corrupt(source, "the manifest block is not [manifest, section table]")
    manifest, table = document
    if not isinstance(manifest, dict):
        raise _corrupt(source, f"the manifest is a JSON {type(manifest).__name__}, not an "
                               "object")
    return manifest, _entries(table, source)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _entries(table: object, source: str) -> list[_Entry]:
    """The section table, each row checked: a name not seen before, a known codec, and
    integer lengths in [0, 2^62] (raw sections must be as long stored as decoded)."""
    if not isinstance(table, list):
        raise _corrupt(source, "the section table is not a list")
    entries, seen = [], set()
    for row in table:
        if not (isinstance(row, list) and len(row) == 4 and isinstance(row[0], str)
                and row[0] and all(type(n) is int and 0 <= n <= _MAX_LENGTH for n in row[1:])):
            raise _corrupt(source, f"bad section table row {str(row)[:80]}")
        entry = _Entry(*row)
        if entry.name in seen or entry.name in _RESERVED_NAMES:
            raise _corrupt(source, f"section name {entry.name!r} is repeated or reserved")
        if entry.codec not in _DECODERS:
            raise _corrupt(source, f"section {entry.name!r} uses unknown codec {entry.codec}")
        if entry.codec == RAW and entry.stored != entry.raw:
            raise _corrupt(source, f"raw section {entry.name!r} is {entry.stored} bytes "
                                   f"stored but {entry.raw} decoded")
        seen.add(entry.name)
        entries.append(entry)
    return entries


def _decode(blob: memoryview, entry: _Entry, source: str) -> bytes:
    try:
        raw = _DECODERS[entry.codec](blob, entry.raw)
    except _StreamError as exc:
        raise _corrupt(source, f"section {entry.name!r}: {exc}") from exc
    if len(raw) != entry.raw:
        raise _corrupt(source, f"section {entry.name!r} decodes to {len(raw)} bytes, the "
                               f"table says {entry.raw}")
    return raw


class _StreamError(Exception):
    """A compressed stream is bad; the caller says which file and which part."""


def _inflate(blob: memoryview, limit: int) -> bytes:
    return _decompress(zlib.decompressobj(-15), zlib.error, blob, limit)


def _unlzma(blob: memoryview, limit: int) -> bytes:
    unpacker = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_lzma_filters(limit))
    return _decompress(unpacker, lzma.LZMAError, blob, limit)


def _decompress(unpacker, error: type[Exception], blob: memoryview, limit: int) -> bytes:
    """Decode at most ``limit + 1`` bytes (one more shows a lying length; the bound keeps a
    hostile file from allocating more than it holds), and require the stream to end exactly
    at the end of ``blob``."""
    try:
        raw = unpacker.decompress(blob, limit + 1)
    except error as exc:
        raise _StreamError(f"bad compressed stream ({exc})") from exc
    if len(raw) > limit:
        raise _StreamError(f"decodes to more than {limit} bytes")
    if not unpacker.eof:
        raise _StreamError("the compressed stream ends early")
    if unpacker.unused_data:
        raise _StreamError(f"{len(unpacker.unused_data)} stray bytes after the stream")
    return raw


_DECODERS = {RAW: lambda blob, _limit: bytes(blob), DEFLATE: _inflate, LZMA: _unlzma}


def _truncated(source: str, size: int, expected: int | None = None) -> DataError:
    detail = f"; its header asks for {expected}" if expected is not None else ""
    return DataError(f"{source} is truncated ({size} bytes{detail})")


def _corrupt(source: str, problem: str) -> DataError:
    return DataError(f"{source} is corrupt ({problem})")
