"""Compressed layouts of a sparse Linear weight for a few activation rows (decoding).

At batch 1 every token streams every weight once, so what a layout costs is what it reads
per token. Each layout here says so (:meth:`bytes_per_row`), next to the dense
``4 * out * in`` bytes of a float32 weight; their ratio is the memory-traffic limit of its
speedup.

- :class:`RowCSR`: row-compressed, one entry per nonzero. Column indices are 16-bit
  where ``in_features`` fits (``<= 65535``), 32-bit otherwise. Values, by ``values``:

  - ``"float32"``: a float32 array beside the indices (6 bytes a nonzero with 16-bit
    indices);
  - ``"bfloat16"`` / ``"float16"``: only where every weight is exactly representable
    in that type; the 16-bit value and the 16-bit index share one 32-bit word (4 bytes a
    nonzero, and one load instead of two);
  - ``"levels"``: a quantized layer (every row's nonzeros on at most 255 distinct
    values, e.g. ``{0, ±s, ..., ±L s}`` of a ``quant`` scheme with its per-layer or
    per-row step): one byte of level code per nonzero and a per-row table of the levels
    (codes x step), dequantized inside the kernel (3 bytes a nonzero with 16-bit indices).

- :class:`Packed24`: 2:4 (every group of four inputs of a row keeps at most two): the two
  kept values of each group as float32 and their 2-bit positions (2.125 bytes a weight
  instead of 4). Odd widths pad the last groups with zeros.

Nothing here decides which layout runs; :mod:`.choose` measures that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

#: value types of :class:`RowCSR`
VALUES = ("float32", "bfloat16", "float16", "levels")
#: most distinct nonzero values a row may hold for the ``levels`` layout (one-byte codes)
MAX_LEVELS = 255


def dense_bytes(out_features: int, in_features: int) -> int:
    """What a dense float32 weight reads per activation row."""
    return 4 * out_features * in_features


def representable(w: Tensor, values: str) -> bool:
    """Whether every weight survives a round trip through ``values`` exactly."""
    if values == "float32":
        return True
    if values in ("bfloat16", "float16"):
        kind = getattr(torch, values)
        return bool(torch.equal(w.to(kind).float(), w))
    if values == "levels":
        return _level_tables(w) is not None
    raise ValueError(f"unknown values {values!r}; values: {VALUES}")


def _level_tables(w: Tensor) -> tuple[Tensor, Tensor] | None:
    """Per-row tables of the distinct nonzero values ``[out, L]`` (zero padded) and every
    weight's code into its row's table (uint8 ``[out, in]``), or None where some row has
    more than :data:`MAX_LEVELS` distinct nonzero values."""
    tables, codes = [], torch.zeros(w.shape, dtype=torch.uint8)
    for r in range(w.shape[0]):
        row = w[r]
        levels, inverse = torch.unique(row[row != 0], return_inverse=True)
        if levels.numel() > MAX_LEVELS:
            return None
        codes[r, row != 0] = inverse.to(torch.uint8)
        tables.append(levels)
    width = max([1] + [t.numel() for t in tables])
    table = torch.zeros(w.shape[0], width)
    for r, t in enumerate(tables):
        table[r, :t.numel()] = t
    return table, codes


@dataclass
class RowCSR:
    """Row-compressed ``W [out, in]``: row ``r``'s nonzeros are entries
    ``row_ptr[r]:row_ptr[r+1]`` (uint32). ``cols``: column indices (uint16 or uint32), or
    for 16-bit values the packed words (value in the high half, column in the low half);
    ``vals``: float32 values, or uint8 level codes into ``table [out, L]`` (levels), or
    None for packed words."""

    out_features: int
    in_features: int
    values: str
    row_ptr: np.ndarray
    cols: np.ndarray
    vals: np.ndarray | None
    table: np.ndarray

    @classmethod
    def from_dense(cls, weight: Tensor, values: str = "float32") -> RowCSR:
        w = weight.detach().float().contiguous()
        out_features, in_features = w.shape
        if values not in VALUES:
            raise ValueError(f"unknown values {values!r}; values: {VALUES}")
        mask = w != 0
        counts = mask.sum(1)
        row_ptr = np.zeros(out_features + 1, dtype=np.uint32)
        row_ptr[1:] = np.cumsum(counts.numpy())
        rows, cols = torch.nonzero(mask, as_tuple=True)
        table = np.zeros((1, 1), dtype=np.float32)
        if values in ("bfloat16", "float16"):
            if in_features > 0xFFFF or not representable(w, values):
                raise ValueError(f"weights not exactly representable as {values} "
                                 f"with 16-bit columns")
            bits = w[rows, cols].to(getattr(torch, values)).view(torch.int16)
            words = (bits.numpy().astype(np.uint16).astype(np.uint32) << np.uint32(16)) \
                | cols.numpy().astype(np.uint32)
            return cls(out_features, in_features, values, row_ptr, words, None, table)
        index = np.uint16 if in_features <= 0xFFFF else np.uint32
        col_array = cols.numpy().astype(index)
        if values == "levels":
            found = _level_tables(w)
            if found is None:
                raise ValueError(f"a row holds more than {MAX_LEVELS} distinct values")
            table_t, codes = found
            return cls(out_features, in_features, values, row_ptr, col_array,
                       codes[rows, cols].numpy(), table_t.numpy())
        vals = w[rows, cols].numpy().astype(np.float32)
        return cls(out_features, in_features, values, row_ptr, col_array, vals, table)

    @property
    def nnz(self) -> int:
        return int(self.row_ptr[-1])

    def bytes_per_row(self) -> int:
        """Bytes read per activation row: indices and values (or words), row pointers,
        level tables."""
        data = self.cols.nbytes + (0 if self.vals is None else self.vals.nbytes)
        table = self.table.nbytes if self.values == "levels" else 0
        return data + self.row_ptr.nbytes + table

    def to_dense(self) -> Tensor:
        """The float32 weight this layout holds (exactly the one it was built from)."""
        w = torch.zeros(self.out_features, self.in_features)
        rows = torch.repeat_interleave(torch.arange(self.out_features),
                                       torch.from_numpy(np.diff(self.row_ptr).astype(np.int64)))
        if self.vals is None:
            words = torch.from_numpy(self.cols.astype(np.int64))
            cols = words & 0xFFFF
            bits = (words >> 16).to(torch.int32).to(torch.int16)
            vals = bits.view(getattr(torch, self.values)).float()
        elif self.values == "levels":
            cols = torch.from_numpy(self.cols.astype(np.int64))
            vals = torch.from_numpy(self.table)[rows, torch.from_numpy(self.vals.astype(np.int64))]
        else:
            cols = torch.from_numpy(self.cols.astype(np.int64))
            vals = torch.from_numpy(self.vals)
        w[rows, cols] = vals
        return w


def is_two_four(weight: Tensor) -> bool:
    """Whether every group of four consecutive inputs of every row has at most two
    nonzeros (the last group of an odd width counts its real inputs)."""
    mask = weight != 0
    pad = (-mask.shape[1]) % 4
    if pad:
        mask = torch.cat([mask, mask.new_zeros(mask.shape[0], pad)], 1)
    return bool((mask.reshape(mask.shape[0], -1, 4).sum(-1) <= 2).all())


#: the group (of a quad of four groups) each of a quad's eight value slots belongs to:
#: the vector kernel permutes within 128-bit lanes, so lane 0 takes groups 0 and 2 and
#: lane 1 groups 1 and 3
SLOT_GROUP = (0, 0, 2, 2, 1, 1, 3, 3)


@dataclass
class Packed24:
    """2:4 ``W [out, in]`` with ``in`` padded to a multiple of 16 (``in_padded``: four
    groups, a *quad*, at a time). Per quad, ``vals [out, in_padded / 2]`` holds its eight
    kept values (float32) in the slot order of :data:`SLOT_GROUP` (two per group, in input
    order), and ``meta [out, in_padded / 16]`` (uint16) their positions in their groups,
    two bits a slot (slot ``s`` at bits ``2s, 2s+1``)."""

    out_features: int
    in_features: int
    in_padded: int
    vals: np.ndarray
    meta: np.ndarray

    @classmethod
    def from_dense(cls, weight: Tensor) -> Packed24:
        w = weight.detach().float().contiguous()
        if not is_two_four(w):
            raise ValueError("not 2:4: some group of four inputs keeps more than two")
        out_features, in_features = w.shape
        in_padded = -(-in_features // 16) * 16
        wp = torch.zeros(out_features, in_padded)
        wp[:, :in_features] = w
        groups = wp.reshape(out_features, -1, 4)
        # the two kept positions of a group: its nonzeros first, in order, then fill-ins
        order = torch.argsort((groups == 0).to(torch.int8), dim=-1, stable=True)[..., :2]
        order = torch.sort(order, dim=-1).values  # [out, groups, 2]
        vals = torch.gather(groups, -1, order)
        quads = in_padded // 16
        slot_group = torch.tensor(SLOT_GROUP)
        which = torch.tensor([0, 1] * 4)
        by_slot = lambda t: t.reshape(out_features, quads, 4, 2)[:, :, slot_group, which]  # noqa: E731
        pos = by_slot(order).to(torch.int64)  # [out, quads, 8]
        meta = (pos << (2 * torch.arange(8))).sum(-1)
        return cls(out_features, in_features, in_padded,
                   by_slot(vals).reshape(out_features, -1).contiguous().numpy(),
                   meta.to(torch.int32).numpy().astype(np.uint16))

    def positions(self) -> Tensor:
        """Absolute input index of every stored value, ``[out, in_padded / 2]`` (int64)."""
        meta = torch.from_numpy(self.meta.astype(np.int64))  # [out, quads]
        pos = (meta.unsqueeze(-1) >> (2 * torch.arange(8))) & 3  # [out, quads, 8]
        base = 16 * torch.arange(meta.shape[1]).reshape(1, -1, 1) \
            + 4 * torch.tensor(SLOT_GROUP).reshape(1, 1, 8)
        return (base + pos).reshape(self.out_features, -1)

    def bytes_per_row(self) -> int:
        return self.vals.nbytes + self.meta.nbytes

    def to_dense(self) -> Tensor:
        w = torch.zeros(self.out_features, self.in_padded)
        w.scatter_(1, self.positions(), torch.from_numpy(self.vals))
        return w[:, :self.in_features].contiguous()


#: a block layout is offered only where its blocks hold at most this many times the
#: nonzeros (i.e. the weight is block-structured, not scattered)
BLOCK_PADDING = 1.5


@dataclass
class Blocks16:
    """``W [out, in]`` (both padded to multiples of 16) as its nonzero 16x16 blocks: block
    row ``b`` holds blocks ``block_ptr[b]:block_ptr[b+1]`` (uint32), at block columns
    ``block_cols`` (uint32), values ``vals [blocks, 16, 16]`` stored column-major within a
    block (``vals[k, c, r]``), so a kernel takes one input and sixteen output rows per
    vector step."""

    out_features: int
    in_features: int
    block_ptr: np.ndarray
    block_cols: np.ndarray
    vals: np.ndarray

    @staticmethod
    def fits(weight: Tensor) -> bool:
        """Whether ``weight`` is block-structured enough (:data:`BLOCK_PADDING`)."""
        mask = _block_mask(weight != 0)
        return int(mask.sum()) * 256 <= BLOCK_PADDING * max(1, int((weight != 0).sum()))

    @classmethod
    def from_dense(cls, weight: Tensor) -> Blocks16:
        w = weight.detach().float()
        out_features, in_features = w.shape
        out_p, in_p = -(-out_features // 16) * 16, -(-in_features // 16) * 16
        wp = torch.zeros(out_p, in_p)
        wp[:out_features, :in_features] = w
        mask = _block_mask(wp != 0)
        rows, cols = torch.nonzero(mask, as_tuple=True)
        blocks = wp.reshape(out_p // 16, 16, in_p // 16, 16)[rows, :, cols, :]  # [k, r, c]
        ptr = np.zeros(out_p // 16 + 1, dtype=np.uint32)
        ptr[1:] = np.cumsum(mask.sum(1).numpy())
        return cls(out_features, in_features, ptr, cols.numpy().astype(np.uint32),
                   blocks.transpose(1, 2).contiguous().numpy())

    @property
    def out_padded(self) -> int:
        return (self.block_ptr.shape[0] - 1) * 16

    @property
    def in_padded(self) -> int:
        return -(-self.in_features // 16) * 16

    def bytes_per_row(self) -> int:
        return self.vals.nbytes + self.block_cols.nbytes + self.block_ptr.nbytes

    def to_dense(self) -> Tensor:
        w = torch.zeros(self.out_padded, self.in_padded)
        counts = torch.from_numpy(np.diff(self.block_ptr).astype(np.int64))
        rows = torch.repeat_interleave(torch.arange(counts.numel()), counts)
        cols = torch.from_numpy(self.block_cols.astype(np.int64))
        view = w.reshape(self.out_padded // 16, 16, self.in_padded // 16, 16)
        view[rows, :, cols, :] = torch.from_numpy(self.vals).transpose(1, 2)
        return w[:self.out_features, :self.in_features].contiguous()


def _block_mask(mask: Tensor) -> Tensor:
    out_p, in_p = -(-mask.shape[0] // 16) * 16, -(-mask.shape[1] // 16) * 16
    padded = torch.zeros(out_p, in_p, dtype=torch.bool)
    padded[:mask.shape[0], :mask.shape[1]] = mask
    return padded.reshape(out_p // 16, 16, in_p // 16, 16).any(3).any(1)
