"""The .pkz container: round trips, size accounting, and every way a file can be wrong.

Hostile files are forged here with struct and zlib (valid checksum, lying contents), so
the reader's checks beyond the checksum are exercised too.
"""

from __future__ import annotations

import json
import os
import struct
import tracemalloc
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit.artifacts.container import _deflate as container_deflate
from prunekit.artifacts.container import (
    pack_container,
    read_container,
    section_sizes,
    unpack_container,
    write_container,
)
from prunekit.errors import DataError

MANIFEST = {"format": "prunekit", "layers": [{"name": "conv1", "shape": [6, 1, 5, 5]}]}
SECTIONS = [("conv1.codes", bytes(range(40))), ("conv1.mask", b"\0" * 300), ("empty", b"")]


def _deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    return packer.compress(data) + packer.flush()


def _forge(document, body: bytes = b"", *, version: int = 1, flags: int = 0,
           block: bytes | None = None) -> bytes:
    """A file whose checksum is right whatever it says."""
    if block is None:
        block = _deflate(json.dumps(document).encode())
    data = b"PKZ1" + struct.pack("<HHI", version, flags, len(block)) + block + body
    return data + struct.pack("<I", zlib.crc32(data))


# --- round trips and sizes -----------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**60, 2**60) | st.text(max_size=8)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                  max_size=4),
    max_leaves=12)
payloads = st.binary(max_size=300) | st.integers(0, 2000).map(lambda n: b"ab" * n)


@settings(max_examples=60)
@given(st.dictionaries(st.text(max_size=6), json_values, max_size=5),
       st.dictionaries(st.text(min_size=1, max_size=8).filter(
           lambda name: name not in ("header", "manifest")), payloads, max_size=5))
def test_round_trip(manifest, sections):
    data = pack_container(manifest, list(sections.items()))
    got_manifest, got_sections = unpack_container(data)
    assert got_manifest == manifest
    assert got_sections == sections
    assert list(got_sections) == list(sections)
    assert sum(section_sizes(data).values()) == len(data)


def test_write_read_and_section_sizes_sum_to_the_file_size(tmp_path):
    path = tmp_path / "model.pkz"
    size = write_container(path, MANIFEST, SECTIONS)
    assert size == os.path.getsize(path)
    assert read_container(path) == (MANIFEST, dict(SECTIONS))
    assert read_container(path.read_bytes()) == (MANIFEST, dict(SECTIONS))
    sizes = section_sizes(path)
    assert sum(sizes.values()) == os.path.getsize(path)
    assert list(sizes) == ["header", "manifest", "conv1.codes", "conv1.mask", "empty"]
    assert sizes["header"] == 16
    assert sizes["conv1.codes"] == 40  # incompressible: stored raw
    assert sizes["conv1.mask"] < 20  # zeros: compressed
    assert sizes["empty"] == 0


def test_fixed_overhead_is_25_bytes():
    empty = pack_container({}, [])
    assert len(empty) == 25 < 40
    one = pack_container({}, [("w", bytes(range(100)))])
    assert len(one) - len(empty) - 100 <= 12  # a table row: name, codec, two lengths


def test_sections_take_the_smallest_codec():
    text = b"".join(b"layer %d weight scale %f\n" % (i, i / 7) for i in range(400))
    data = pack_container({}, [("raw", os.urandom(64)), ("text", text)])
    sizes = section_sizes(data)
    assert sizes["raw"] == 64
    assert sizes["text"] < min(len(_deflate(text)), len(text))  # LZMA beats deflate here
    assert unpack_container(data)[1]["text"] == text


def test_large_sections_try_lzma_only_where_deflate_finds_much():
    """Above 1 MiB, float-like bytes (deflate saves a few percent) skip LZMA and are stored
    deflated, while zero-heavy bytes (deflate saves most) still get LZMA's smaller stream."""
    import lzma

    import numpy as np

    floats = (np.random.default_rng(0).standard_normal(400_000) * 0.02).astype(np.float32)
    values = floats.tobytes()  # 1.6 MB
    zeros = floats.copy()
    zeros[np.random.default_rng(1).random(zeros.size) < 0.97] = 0
    sparse = zeros.tobytes()
    data = pack_container({}, [("values", values), ("sparse", sparse)])
    sizes = section_sizes(data)
    deflated = len(container_deflate(values))
    assert deflated > 0.9 * len(values)  # the case the rule is for
    assert sizes["values"] == deflated  # deflate, LZMA not tried
    assert len(lzma.compress(values, preset=9)) < deflated  # it would have won, barely
    assert sizes["sparse"] < len(_deflate(sparse))  # LZMA tried and smaller
    _, sections = unpack_container(data)
    assert sections["values"] == values and sections["sparse"] == sparse


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "model.pkz"
    write_container(path, MANIFEST, SECTIONS)
    write_container(path, {"v": 2}, [])
    assert os.listdir(tmp_path) == ["model.pkz"]
    assert read_container(path) == ({"v": 2}, {})
    with pytest.raises(TypeError):
        write_container(path, {"bad": object()}, [])
    assert os.listdir(tmp_path) == ["model.pkz"]
    assert read_container(path) == ({"v": 2}, {})


@pytest.mark.parametrize("manifest, sections", [
    ([1], []), ({1: "int key"}, []), ({"t": (1, 2)}, []), ({"x": float("nan")}, []),
    ({}, [("a", b""), ("a", b"")]), ({}, [("", b"")]), ({}, [("header", b"")]),
])
def test_writer_refuses_what_would_not_read_back_the_same(manifest, sections):
    with pytest.raises((TypeError, ValueError)):
        pack_container(manifest, sections)


# --- damaged files -------------------------------------------------------------------------

SMALL = pack_container({"a": 1}, [("s", b"\1\2\3"), ("z", b"\0" * 50)])


def test_every_flipped_byte_is_detected():
    for i in range(len(SMALL)):
        for mask in (0x01, 0xFF):
            damaged = bytearray(SMALL)
            damaged[i] ^= mask
            with pytest.raises(DataError):
                unpack_container(bytes(damaged))


def test_every_truncation_is_detected():
    for n in range(len(SMALL)):
        with pytest.raises(DataError):
            unpack_container(SMALL[:n])
    with pytest.raises(DataError, match="truncated"):
        unpack_container(SMALL[:-1])
    with pytest.raises(DataError):
        unpack_container(SMALL + b"\0")


@pytest.mark.parametrize("data, message", [
    (b"", "the data is truncated"),
    (b"PK\x03\x04 a zip file", "is not a prunekit model file"),
    (_forge([{}, []], version=7), "was written by format version 7; this prunekit reads version 1"),
    (_forge([{}, []], flags=1), "flags"),
    (SMALL[:-4] + b"\0\0\0\0", "is corrupt \\(checksum mismatch\\)"),
])
def test_messages_say_what_is_wrong(data, message):
    with pytest.raises(DataError, match=message):
        unpack_container(data)


def test_messages_name_the_file(tmp_path):
    path = tmp_path / "model.pkz"
    path.write_bytes(SMALL[:-1])
    with pytest.raises(DataError, match=f"{path} is truncated"):
        read_container(path)
    with pytest.raises(DataError, match="cannot read"):
        read_container(tmp_path / "missing.pkz")


# --- hostile files (valid checksum, lying contents) ----------------------------------------

TEN_X = _deflate(b"x" * 10)


@pytest.mark.parametrize("document, body", [
    ([{}, [["s", 0, 10**6, 10**6]]], b"abc"),  # stored length beyond the file
    ([{}, [["s", 0, 1, 1]]], b"abc"),  # table lists fewer bytes than there are
    ([{}, [["s", 0, 3, 2**40]]], b"abc"),  # raw section whose lengths disagree
    ([{}, [["s", 1, 3, 2**40]]], b"abc"),  # not a deflate stream
    ([{}, [["s", 1, len(TEN_X), 2**40]]], TEN_X),  # honest stream, lying raw length
    ([{}, [["s", 1, len(TEN_X), 9]]], TEN_X),  # raw length too small
    ([{}, [["s", 1, len(TEN_X) - 1, 10]]], TEN_X[:-1]),  # stream cut short
    ([{}, [["s", 2, 3, 10]]], b"abc"),  # not an LZMA stream
    ([{}, [["s", 9, 3, 3]]], b"abc"),  # unknown codec
    ([{}, [["s", 0, 3, 3], ["s", 0, 0, 0]]], b"abc"),  # repeated name
    ([{}, [["manifest", 0, 0, 0]]], b""),  # reserved name
    ([{}, [["s", 0, -1, -1]]], b""),
    ([{}, [["s", 0, True, True]]], b""),
    ([{}, [["s", 1, 3, 2**70]]], b"abc"),
    ([{}, [["s", 0, 3]]], b"abc"),
    ([{}, {"s": [0, 3, 3]}], b"abc"),
    ([[], []], b""),  # manifest not a dict
    ({"manifest": {}}, b""),
    ([{}, [], 3], b""),
])
def test_hostile_section_tables_are_rejected_without_allocating(document, body):
    data = _forge(document, body)
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="is corrupt|is truncated"):
            unpack_container(data)
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
    finally:
        tracemalloc.stop()


def test_trailing_bytes_after_a_compressed_stream_are_rejected():
    stream = TEN_X + b"junk"
    with pytest.raises(DataError, match="stray bytes"):
        unpack_container(_forge([{}, [["s", 1, len(stream), 10]]], stream))


@pytest.mark.parametrize("block", [
    b"not deflate at all",
    _deflate(b"{not json"),
    _deflate(b"\xff\xfe"),  # not UTF-8
    _deflate(b"[{\"x\": NaN}, []]"),
    _deflate(b"[" * 100_000 + b"]" * 100_000),  # deeper than the JSON parser goes
    _deflate(b" " * (17 << 20)),  # over the manifest limit
])
def test_bad_manifests_are_rejected(block):
    with pytest.raises(DataError, match="is corrupt"):
        unpack_container(_forge(None, block=block))
