"""One weight and its frozen constraint as the byte parts of a model file, and back.

Every compressed weight becomes up to three parts, each the cheapest that fits:

- ``index``: where the weight may be nonzero, as a mask encoding of :mod:`.codecs` (bitmap,
  delta indices, whole rows / column bands for filter, channel and block pruning, kernel
  patterns for pattern pruning), chosen by size;
- ``values``: the kept values: float values in the weight's dtype (``support``), level
  codes bit-packed at the layer's bit width or canonical-Huffman coded (``levels``, entry
  ``"v": "h"``; :mod:`.huffman`), for unification the block states (2 bits each), one float
  magnitude per unified block, one sign bit per unified entry and the float values of kept
  blocks (``unified``); a ``rounded`` parameter (biases kept in float16) stores every value,
  or (entry ``"v": "nz"``) a mask encoding of its nonzeros then only those;
- ``scales``: quantization steps (float32, one per layer, per gate or per row).

A ``support`` or ``levels`` weight is indexed either by its constraint's mask or by its own
nonzeros, whichever makes the smaller file (a structured mask is cheap to index even when it
holds some zero values); of two encodings of the values the one stored smaller wins (ties:
the plain one). Decoding rebuilds the weight bit for bit and the constraint it
satisfies. Part sizes here are before the container's optional entropy coding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..constraints import Frozen, Levels, Rounded, Support, Unified
from ..errors import DataError
from ..schemes.base import gemm_view
from ..schemes.levels import LEVEL_SETS, max_level
from . import codecs, huffman
from .container import stored_size

MASK_HINTS = ("band_rows", "band_cols", "kernel")
#: level codes of one layer that may be Huffman coded: its decoder takes one Python step per
#: value (~0.7 us), so a layer this size loads in ~0.2 s; larger layers are bit-packed
HUFFMAN_LIMIT = 1 << 18
DTYPES = {str(t).removeprefix("torch."): t for t in (
    torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32,
    torch.int16, torch.int8, torch.uint8, torch.bool)}


@dataclass
class Encoded:
    """A weight's manifest entry (small JSON values) and its named byte parts."""

    entry: dict[str, Any]
    parts: dict[str, bytes] = field(default_factory=dict)


# ------------------------------------------------------------------------ raw tensors
def dtype_name(t: Tensor) -> str:
    name = str(t.dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise DataError(f"tensors of dtype {t.dtype} cannot be stored in a model file")
    return name


def tensor_bytes(t: Tensor) -> bytes:
    """The tensor's elements, little-endian, row-major (any dtype, bfloat16 included)."""
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: same bits as int16
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def tensor_from(data: bytes, dtype: str, shape: list[int], what: str) -> Tensor:
    """The inverse of :func:`tensor_bytes`, length-checked."""
    torch_dtype = _dtype(dtype, what)
    count = math.prod(shape)
    size = torch.empty((), dtype=torch_dtype).element_size()
    if len(data) != count * size:
        raise DataError(f"{what}: {len(data)} bytes for {count} values of {dtype}")
    if count == 0:
        return torch.empty(shape, dtype=torch_dtype)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(torch_dtype).reshape(shape)


def _dtype(name: Any, what: str) -> torch.dtype:
    if name not in DTYPES:
        raise DataError(f"{what}: unknown dtype {name!r}")
    return DTYPES[name]


# --------------------------------------------------------------------------- encoding
def _mask_hints(constraint: Frozen) -> dict[str, int]:
    return {k: int(v) for k, v in constraint.hints.items() if k in MASK_HINTS}


def _index(mask: Tensor, hints: dict[str, int]) -> tuple[list[Any], bytes]:
    name, params, payload = codecs.encode_mask(gemm_view(mask).cpu().numpy(), hints)
    return [name, params], payload


def encode(w: Tensor, constraint: Frozen) -> Encoded:
    """The manifest entry and parts of weight ``w`` inside ``constraint``."""
    if not constraint.contains(w):
        raise DataError(f"the weight is not inside its {constraint.kind} constraint; finish "
                        f"retraining (MaskEnforcer.finish) before saving")
    w = w.detach().cpu()
    entry: dict[str, Any] = {"k": constraint.kind, "h": dict(constraint.hints)}
    if isinstance(constraint, Unified):
        return _encode_unified(w, constraint, entry)
    if isinstance(constraint, Rounded):
        entry["t"] = constraint.dtype
        return _encode_rounded(w.to(Rounded.DTYPES[constraint.dtype]), entry)
    hints = _mask_hints(constraint)
    codes = constraint.codes(w) if isinstance(constraint, Levels) else None
    nonzero = (codes != 0) if codes is not None else (w != 0)
    masks = [constraint.mask.cpu()]
    if not torch.equal(nonzero, masks[0]):  # zeros inside the mask: index them away?
        masks.append(nonzero)
    candidates = [(*_index(mask, hints), mask) for mask in masks]
    index, payload, mask = min(  # index plus values, in bits
        candidates, key=lambda c: len(c[1]) * 8 + int(c[2].sum().item()) * constraint.bits)
    entry["x"] = index
    parts = {"index": payload}
    if isinstance(constraint, Levels):
        unsigned = codecs.signed_to_unsigned(codes[mask].numpy(), constraint.bits)
        parts["values"] = codecs.pack_bits(unsigned, constraint.bits)
        if unsigned.size <= HUFFMAN_LIMIT:
            coded = huffman.encode(unsigned)
            if stored_size(coded) < stored_size(parts["values"]):
                parts["values"], entry["v"] = coded, "h"
        groups, scales = _scale_groups(constraint)
        entry.update(b=constraint.bits, l=constraint.level_set, g=groups)
        parts["scales"] = scales
    else:
        parts["values"] = tensor_bytes(w[mask])
    return Encoded(entry, parts)


def _encode_rounded(narrow: Tensor, entry: dict[str, Any]) -> Encoded:
    """Every value, or where pruning zeroed many of them (the bias of a channel nothing
    reads) the mask of the nonzeros and only those."""
    dense = tensor_bytes(narrow)
    nonzero = narrow.view(torch.int16) != 0  # by bits: a -0.0 is kept as it is
    if narrow.dim() == 0 or bool(nonzero.all()):
        return Encoded(entry, {"values": dense})
    name, params, payload = codecs.encode_mask(nonzero.reshape(1, -1).numpy(), {})
    index = [name, params]
    sparse = tensor_bytes(narrow[nonzero])
    if stored_size(payload) + stored_size(sparse) >= stored_size(dense):
        return Encoded(entry, {"values": dense})
    entry.update(v="nz", x=index)
    return Encoded(entry, {"index": payload, "values": sparse})


def _scale_groups(constraint: Levels) -> tuple[int, bytes]:
    """The fewest equal row groups that share a step (1, the RNN gates, or every row)."""
    scale = constraint.scale.cpu().to(torch.float32)
    rows = scale.numel()
    for groups in (1, int(constraint.hints.get("gates", 1)), rows):
        if groups >= 1 and rows % groups == 0:
            per = scale.reshape(groups, -1)
            if bool((per == per[:, :1]).all()):
                return groups, tensor_bytes(per[:, 0].contiguous())
    return rows, tensor_bytes(scale)


def _encode_unified(w: Tensor, constraint: Unified, entry: dict[str, Any]) -> Encoded:
    states = constraint.states.cpu().numpy().astype(np.int64)
    unified = constraint.unified.cpu()
    kept = constraint.mask.cpu() & ~unified
    magnitudes = constraint.magnitudes(w)[torch.from_numpy(states == Unified.UNIFY)]
    entry["blk"] = list(constraint.block)
    return Encoded(entry, {
        "index": codecs.pack_bits(states, 2),
        "values": tensor_bytes(magnitudes.to(w.dtype)) + tensor_bytes(w[kept]),
        "scales": codecs.pack_bits((w[unified] < 0).numpy().astype(np.int64), 1),
    })


# --------------------------------------------------------------------------- decoding
def decode(entry: dict[str, Any], parts: dict[str, bytes], shape: list[int], dtype: str,
           what: str) -> tuple[Tensor, Frozen]:
    """The weight and its constraint from :func:`encode`'s entry and parts; any
    inconsistency is a :class:`DataError` naming ``what``."""
    kind = entry.get("k")
    hints = entry.get("h") or {}
    if not isinstance(hints, dict):
        raise DataError(f"{what}: hints must be a mapping")
    torch_dtype = _dtype(dtype, what)
    if len(shape) < 1:
        raise DataError(f"{what}: a compressed weight needs at least one dimension")
    rows = shape[0]
    cols = math.prod(shape[1:]) if len(shape) > 1 else 1
    if kind == Unified.kind:
        return _decode_unified(entry, parts, shape, torch_dtype, hints, what)
    if kind == Rounded.kind:
        narrow = entry.get("t")
        if narrow not in Rounded.DTYPES:
            raise DataError(f"{what}: unknown narrow float type {narrow!r}")
        return _decode_rounded(entry, parts, shape, narrow, what).to(torch_dtype), \
            Rounded(tuple(shape), narrow, hints)
    if kind not in (Support.kind, Levels.kind):
        raise DataError(f"{what}: unknown constraint kind {kind!r}")
    index = _index_entry(entry, what)
    mask2d = codecs.decode_mask(index[0], index[1], parts.get("index", b""), (rows, cols))
    mask = torch.from_numpy(np.ascontiguousarray(mask2d)).reshape(shape)
    kept = int(mask.sum().item())
    if kind == Support.kind:
        values = tensor_from(parts.get("values", b""), dtype, [kept], f"{what} values")
        w = torch.zeros(shape, dtype=torch_dtype)
        w[mask] = values
        return w, Support(mask, hints)
    bits, level_set, groups = entry.get("b"), entry.get("l"), entry.get("g")
    if not (isinstance(bits, int) and 2 <= bits <= 8 and level_set in LEVEL_SETS
            and isinstance(groups, int) and groups >= 1 and rows % groups == 0):
        raise DataError(f"{what}: malformed quantization entry (bits {bits!r}, levels "
                        f"{level_set!r}, scale groups {groups!r})")
    values = parts.get("values", b"")
    coding = entry.get("v")
    if coding == "h":
        raw = huffman.decode(values, kept)
    elif coding is None:
        if len(values) != math.ceil(kept * bits / 8):
            raise DataError(f"{what}: level codes have the wrong length")
        raw = codecs.unpack_bits(values, bits, kept)
    else:
        raise DataError(f"{what}: unknown level code encoding {coding!r}")
    signed = codecs.unsigned_to_signed(raw, bits)
    if kept and np.abs(signed).max() > max_level(bits):
        raise DataError(f"{what}: a level code is out of range")
    step = tensor_from(parts.get("scales", b""), "float32", [groups], f"{what} scales")
    scale = step.double().repeat_interleave(rows // groups)
    levels = Levels(mask, scale, bits, level_set, "snap", hints)
    codes = torch.zeros(shape, dtype=torch.int64)
    codes[mask] = torch.from_numpy(signed.astype(np.int64))
    return levels.values(codes, torch_dtype), levels


def _index_entry(entry: dict[str, Any], what: str) -> list[Any]:
    index = entry.get("x")
    if not (isinstance(index, list) and len(index) == 2 and isinstance(index[0], str)):
        raise DataError(f"{what}: malformed index entry {index!r}")
    return index


def _decode_rounded(entry: dict[str, Any], parts: dict[str, bytes], shape: list[int],
                    narrow: str, what: str) -> Tensor:
    coding = entry.get("v")
    if coding is None:
        return tensor_from(parts.get("values", b""), narrow, shape, f"{what} values")
    if coding != "nz":
        raise DataError(f"{what}: unknown float16 value encoding {coding!r}")
    index = _index_entry(entry, what)
    count = math.prod(shape)
    mask = codecs.decode_mask(index[0], index[1], parts.get("index", b""), (1, count))
    nonzero = torch.from_numpy(np.ascontiguousarray(mask)).reshape(shape)
    kept = int(nonzero.sum().item())
    values = tensor_from(parts.get("values", b""), narrow, [kept], f"{what} values")
    if bool((values.view(torch.int16) == 0).any()):  # listed values are nonzero bit patterns
        raise DataError(f"{what}: a value listed as nonzero is zero")
    out = torch.zeros(shape, dtype=values.dtype)
    out[nonzero] = values
    return out


def _decode_unified(entry: dict[str, Any], parts: dict[str, bytes], shape: list[int],
                    dtype: torch.dtype, hints: dict, what: str) -> tuple[Tensor, Frozen]:
    block = entry.get("blk")
    if not (isinstance(block, list) and len(block) == 2
            and all(isinstance(b, int) and b >= 1 for b in block)):
        raise DataError(f"{what}: malformed unification block {block!r}")
    rows = shape[0]
    cols = math.prod(shape[1:]) if len(shape) > 1 else 1
    n_blocks = -(-rows // block[0]) * -(-cols // block[1])
    index = parts.get("index", b"")
    if len(index) != math.ceil(n_blocks * 2 / 8):
        raise DataError(f"{what}: block states have the wrong length")
    states = codecs.unpack_bits(index, 2, n_blocks)
    if n_blocks and states.max() > Unified.PRUNE:
        raise DataError(f"{what}: a block state is out of range")
    states_t = torch.from_numpy(states.astype(np.int8))
    shell = Unified(tuple(shape), tuple(block), states_t, torch.zeros(shape, dtype=torch.bool),
                    hints)
    n_unified_blocks = int((states == Unified.UNIFY).sum())
    n_unified = int(shell.unified.sum().item())
    kept = shell.mask & ~shell.unified
    n_kept = int(kept.sum().item())
    size = torch.empty((), dtype=dtype).element_size()
    values = parts.get("values", b"")
    if len(values) != (n_unified_blocks + n_kept) * size:
        raise DataError(f"{what}: unified values have the wrong length")
    split = n_unified_blocks * size
    magnitudes = tensor_from(values[:split], str(dtype).removeprefix("torch."),
                             [n_unified_blocks], what)
    kept_values = tensor_from(values[split:], str(dtype).removeprefix("torch."), [n_kept], what)
    signs = parts.get("scales", b"")
    if len(signs) != math.ceil(n_unified / 8):
        raise DataError(f"{what}: sign bits have the wrong length")
    negative = torch.zeros(shape, dtype=torch.bool)
    negative[shell.unified] = torch.from_numpy(codecs.unpack_bits(signs, 1, n_unified) == 1)
    constraint = Unified(tuple(shape), tuple(block), states_t, negative, hints)
    per_block = torch.zeros(n_blocks, dtype=dtype)
    per_block[torch.from_numpy(states == Unified.UNIFY)] = magnitudes
    ids = constraint.block_ids(tuple(shape))
    w = torch.where(constraint.unified, per_block[ids] * constraint.sign(per_block[ids]), 0)
    w = w.to(dtype)
    w[kept] = kept_values
    return w, constraint
