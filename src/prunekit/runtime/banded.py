"""The gathered-dense layout of a sparse GEMM matrix, and its choice of band height.

The rows of ``W [out, in]`` are cut into bands of ``rows`` consecutive rows. Each band
keeps the union of its rows' nonzero columns, ``cols_b``, and stores ``W[band, cols_b]``
densely. A product then gathers ``x[:, cols_b]`` once per band and runs a small dense
multiply, so the work is ``sum_b rows * |cols_b|`` multiply-adds on contiguous memory.
BLK-REW's block-column pruning keeps the same columns in every row of a block, so with the
band height equal to the block height there is no padding at all; N:M and row-wise block
pruning give every row its own columns, so there the band is one row (an ELL layout).

:func:`choose_rows` picks the tallest band whose padded work stays within a small margin
of the true nonzero count: taller bands amortise the gather over more rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

#: band heights tried, tallest first
BAND_ROWS = (64, 32, 16, 8, 4, 2, 1)
#: how much padded work (stored zeros) a taller band may add over the nonzeros
PADDING_MARGIN = 1.15


def padded_work(mask: Tensor, rows: int) -> int:
    """Multiply-adds per input row of the gathered layout with bands of ``rows`` rows."""
    out = mask.shape[0]
    bands = -(-out // rows)
    pad = bands * rows - out
    m = torch.cat([mask, mask.new_zeros(pad, mask.shape[1])]) if pad else mask
    union = m.reshape(bands, rows, -1).any(1).sum(1)
    heights = torch.full((bands,), rows)
    heights[-1] = rows - pad
    return int((union * heights).sum())


def choose_rows(mask: Tensor) -> int:
    """The tallest band height whose padded work is within :data:`PADDING_MARGIN` of the
    nonzeros (one row always qualifies: it pads nothing)."""
    nnz = max(1, int(mask.sum()))
    for rows in BAND_ROWS:
        if rows <= mask.shape[0] and padded_work(mask, rows) <= PADDING_MARGIN * nnz:
            return rows
    return 1


@dataclass
class Gathered:
    """``W`` in bands of ``rows`` rows: band ``b`` reads columns
    ``cols[col_ptr[b]:col_ptr[b+1]]`` and holds their values row-major in
    ``vals[val_ptr[b]:val_ptr[b+1]]``. Indices are int32 (every GEMM we meet is far
    below 2**31 entries)."""

    out_features: int
    in_features: int
    rows: int
    col_ptr: Tensor
    cols: Tensor
    val_ptr: Tensor
    vals: Tensor

    @classmethod
    def from_dense(cls, w: Tensor, rows: int | None = None) -> Gathered:
        w = w.detach().float().contiguous()
        mask = w != 0
        rows = choose_rows(mask) if rows is None else rows
        col_ptr, cols, val_ptr, vals = [0], [], [0], []
        for start in range(0, w.shape[0], rows):
            band = w[start:start + rows]
            keep = torch.nonzero(mask[start:start + rows].any(0)).flatten()
            cols.append(keep)
            vals.append(band[:, keep].reshape(-1))
            col_ptr.append(col_ptr[-1] + keep.numel())
            val_ptr.append(val_ptr[-1] + vals[-1].numel())
        return cls(w.shape[0], w.shape[1], rows,
                   torch.tensor(col_ptr, dtype=torch.int64),
                   torch.cat(cols).to(torch.int32),
                   torch.tensor(val_ptr, dtype=torch.int64),
                   torch.cat(vals).contiguous())

    @property
    def cols_u32(self):
        """Column indices as a numpy uint32 array (what the numba kernel reads)."""
        if getattr(self, "_cols_u32", None) is None:
            self._cols_u32 = self.cols.numpy().astype("uint32")
        return self._cols_u32

    def arrays(self, threads: int) -> tuple:
        """What the numba kernel reads after ``rows``: column pointers, uint32 columns,
        value pointers, values and the gather buffers, as numpy arrays made once (at one
        activation row, converting them at every call was a visible share of the time)."""
        found = getattr(self, "_arrays", None)
        scratch = self.scratch(threads)
        if found is None or found[-1] is not scratch:
            found = self._arrays = (self.col_ptr.numpy(), self.cols_u32, self.val_ptr.numpy(),
                                    self.vals.numpy(), scratch)
        return found

    def scratch(self, threads: int):
        """Per-thread gather buffers ``[threads, 4, widest band]`` for the numba kernel."""
        width = int((self.col_ptr[1:] - self.col_ptr[:-1]).max()) if self.bands else 1
        if getattr(self, "_scratch", None) is None or self._scratch.shape[0] < threads:
            import numpy as np  # noqa: PLC0415

            self._scratch = np.zeros((threads, 4, max(1, width)), dtype=np.float32)
        return self._scratch

    @property
    def bands(self) -> int:
        return self.col_ptr.numel() - 1

    @property
    def work(self) -> int:
        return self.vals.numel()

    def padded(self) -> tuple[Tensor, Tensor]:
        """Every band padded to the widest: column indices ``[bands, k]`` (padding reads
        column 0) and values ``[bands, rows, k]`` (padding is zero), for the pure-torch
        kernel (one gather and one batched multiply)."""
        widths = (self.col_ptr[1:] - self.col_ptr[:-1]).tolist()
        k = max(1, max(widths, default=1))
        idx = torch.zeros(self.bands, k, dtype=torch.long)
        vals = torch.zeros(self.bands, self.rows, k)
        for b, width in enumerate(widths):
            c0, v0 = int(self.col_ptr[b]), int(self.val_ptr[b])
            height = (int(self.val_ptr[b + 1]) - v0) // width if width else 0
            idx[b, :width] = self.cols[c0:c0 + width].long()
            if width:
                vals[b, :height, :width] = self.vals[v0:v0 + height * width].reshape(height, width)
        return idx, vals
