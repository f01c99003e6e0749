"""Canonical Huffman codes of level codes: exact round trips, the length cap, the choice
against plain packing in the model file, and refusal of damaged payloads."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit import artifacts
from prunekit.artifacts import huffman
from prunekit.artifacts.codecs import pack_bits
from prunekit.artifacts.container import read_container, stored_size
from prunekit.constraints import Levels, Rounded
from prunekit.errors import DataError

RNG = np.random.default_rng(0)


@settings(max_examples=150)
@given(st.lists(st.integers(0, 255), min_size=1, max_size=300))
def test_any_values_round_trip(values):
    v = np.array(values)
    assert np.array_equal(huffman.decode(huffman.encode(v), v.size), v)


def test_skewed_values_take_about_their_entropy():
    v = np.clip(np.round(RNG.laplace(31, 3, 5000)), 0, 62).astype(np.int64)
    p = np.bincount(v) / v.size
    entropy = -(p[p > 0] * np.log2(p[p > 0])).sum()
    size = len(huffman.encode(v))
    assert size < 5000 * 6 / 8 * 0.9  # well under 6-bit packing
    assert size < 5000 * (entropy + 0.05) / 8 + 40  # within a Huffman code's slack + table


def test_code_lengths_are_capped_and_form_a_prefix_code():
    counts = np.zeros(256, np.int64)
    fib = [1, 1]
    while len(fib) < 40:
        fib.append(fib[-1] + fib[-2])
    counts[:40] = fib  # the optimal code would be 39 bits deep
    lengths = huffman.code_lengths(counts)
    assert lengths.max() == huffman.MAX_LENGTH and (lengths[:40] > 0).all()
    assert sum(2.0 ** -n for n in lengths[lengths > 0]) <= 1
    v = np.repeat(np.arange(40), np.minimum(fib, 500))
    assert np.array_equal(huffman.decode(huffman.encode(v), v.size), v)


def test_a_lone_symbol_takes_one_bit_per_value():
    v = np.full(80, 9)
    payload = huffman.encode(v)
    assert len(payload) == 2 + 1 + 10
    assert np.array_equal(huffman.decode(payload, 80), v)


@pytest.mark.parametrize("damage, message", [
    (lambda p: p[:-1], "end"),
    (lambda p: p + b"\0", "end"),
    (lambda p: bytes([p[1], p[0]]) + p[2:], "empty"),
    (lambda p: p[:2] + b"\x11\x11\x11\x01" + p[6:], "prefix code"),  # 7 codes of 1 bit
    (lambda p: p[:5] + bytes([p[5] | 0x10]) + p[6:], "padding nibble"),
    (lambda p: p[:2] + b"\x01\0\0\0" + p[6:], "starts no code|end"),  # one 1-bit code
    (lambda p: p[:2], "under|bytes"),
])
def test_damaged_payloads_are_data_errors(damage, message):
    v = np.array([3, 5, 5, 7, 3, 3, 3, 9] * 20)
    with pytest.raises(DataError, match=message):
        huffman.decode(damage(huffman.encode(v)), v.size)


def test_more_values_than_bits_is_refused_before_decoding():
    payload = huffman.encode(np.array([1, 2, 3]))
    with pytest.raises(DataError, match="cannot hold"):
        huffman.decode(payload, 10**9)


@settings(max_examples=200)
@given(st.binary(max_size=40), st.integers(0, 50))
def test_random_payloads_give_data_error_or_the_count_asked(payload, count):
    try:
        out = huffman.decode(payload, count)
    except DataError:
        return
    assert out.shape == (count,) and (out >= 0).all() and (out < 256).all()


# ------------------------------------------------------------------ in the model file
def _quantized_linear(skewed: bool):
    torch.manual_seed(0)
    layer = torch.nn.Linear(400, 50)
    scale = torch.full((50,), 2.0 ** -7, dtype=torch.float64)  # a float32 step
    levels = Levels(torch.rand(50, 400) < 0.3, scale, 6)
    with torch.no_grad():
        if skewed:  # mostly small levels, as trained weights are
            w = (torch.randn(50, 400) * 0.03).clamp(-0.31, 0.31)
        else:  # every level equally often: nothing for an entropy code to gain
            w = (torch.rand(50, 400) * 2 - 1) * 31.4 * 2.0 ** -7
        layer.weight.copy_(w)
        levels.apply_(layer.weight.data)
    return layer, {"weight": levels, "bias": Rounded((50,))}


@pytest.mark.parametrize("skewed", [True, False])
def test_the_file_takes_huffman_codes_only_where_they_are_smaller(skewed):
    layer, frozen = _quantized_linear(skewed)
    frozen["bias"].apply_(layer.bias.data)
    data = artifacts.pack(layer, frozen)
    manifest, sections = read_container(data)
    entry = next(t for t in manifest["tensors"] if t["n"] == "weight")
    codes = frozen["weight"].codes(layer.weight)
    unsigned = codes[codes != 0].numpy() + 31  # indexed by its nonzeros: no code 0
    packed, coded = pack_bits(unsigned, 6), huffman.encode(unsigned)
    assert (entry.get("v") == "h") is (stored_size(coded) < stored_size(packed))
    assert sections["0.values"] == (coded if entry.get("v") == "h" else packed)
    if skewed:
        assert entry["v"] == "h" and len(coded) < math.ceil(unsigned.size * 6 / 8) * 0.9
    else:  # a uniform layer gains nothing worth a table
        assert stored_size(coded) > stored_size(packed) - 0.02 * len(packed)
    fresh = torch.nn.Linear(400, 50)
    loaded = artifacts.load(data, model=fresh)
    assert torch.equal(fresh.weight, layer.weight) and torch.equal(fresh.bias, layer.bias)
    again = loaded.constraints["weight"]  # indexed by its nonzeros where that is smaller
    assert not (again.mask & ~frozen["weight"].mask).any() and again.contains(fresh.weight)


def test_a_mostly_zero_float16_bias_stores_only_its_nonzeros():
    layer, frozen = _quantized_linear(True)
    with torch.no_grad():
        layer.bias.zero_()
        layer.bias[[3, 17, 40, 41]] = torch.tensor([0.5, -1.25, 2.0, -0.0])
    data = artifacts.pack(layer, frozen)
    manifest, sections = read_container(data)
    entry = next(t for t in manifest["tensors"] if t["n"] == "bias")
    assert entry["v"] == "nz" and len(sections["1.values"]) == 4 * 2
    fresh = torch.nn.Linear(400, 50)
    artifacts.load(data, model=fresh)
    assert torch.equal(fresh.bias.view(torch.int32), layer.bias.view(torch.int32))  # bits


def test_an_unknown_value_encoding_is_a_data_error():
    layer, frozen = _quantized_linear(True)
    frozen["bias"].apply_(layer.bias.data)
    manifest, sections = read_container(artifacts.pack(layer, frozen))
    from prunekit.artifacts.container import pack_container  # noqa: PLC0415
    for t in manifest["tensors"]:
        if t["n"] == "weight":
            t["v"] = "zstd"
    bad = pack_container(manifest, list(sections.items()))
    with pytest.raises(DataError, match="unknown level code encoding 'zstd'"):
        artifacts.load(bad, model=torch.nn.Linear(400, 50))
