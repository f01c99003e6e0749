"""Block-based column (or row) pruning, as in BLK-REW.

The GEMM matrix ``[out, in*kh*kw]`` is cut into blocks of ``rows`` output rows by ``cols``
columns. For a conv weight ``cols`` counts *input channels*, so a block spans
``cols*kh*kw`` GEMM columns (all kernel positions of those channels); for a linear or RNN
weight ``cols`` counts GEMM columns. Default: ``(8, 4)`` for conv weights (8 filters x 4
channels, the BLK-REW choice) and ``(16, 16)`` for everything else.

Inside each block whole *block-columns* are pruned: the ``rows``-long segment of one GEMM
column that lies in the block (``axis="row"``: the segment of one GEMM row). Different
blocks may keep different columns, which keeps the accuracy of irregular pruning while
every block still runs as a small dense GEMM over its kept columns.

How many segments go is decided over the whole layer: segments are pruned in order of
increasing L2 norm (ties: earlier position first). Because pruning with ``axis="col"``
treats every (block-row, column) segment on its own, the block width matters for the
compiled kernel and the model file (one bitmap of kept columns per band of block rows), not
for which weights survive; likewise the block height for ``axis="row"``.

Ragged edges: when the shape is not divisible by the block, the last block-row (or
block-column) holds smaller blocks, so segments there are shorter. The count is then set
in weights, not segments: prune the smallest-norm segments until the pruned weight count is
nearest to ``sparsity * numel`` (on a tie, prune the extra segment); see
:func:`~prunekit.schemes.base.keep_largest_sized`. With no ragged edge this is exactly
``count_to_prune(n_segments, sparsity)`` segments, and in either case the achieved
sparsity is within half a segment of the request. The kept segments are always those of
largest norm, so the result is the exact projection onto "keep at most that many
segments".

A rate below 1 never prunes every segment: where rounding would prune them all, the
segment of largest norm is kept (see :func:`~prunekit.schemes.structured.groups_to_prune`).

``group_norms`` lists one norm per segment, in row-major order of the segment grid:
``[block_row, column]`` for ``axis="col"`` and ``[row, block_column]`` for ``axis="row"``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError, TargetError
from .base import (
    Scheme,
    groups_to_prune,
    keep_largest,
    keep_largest_sized,
    kernel_positions,
    parse_block_shape,
)

CONV_DEFAULT = (8, 4)
OTHER_DEFAULT = (16, 16)


def _parse_block(block: object) -> tuple[int, int] | None:
    return None if block is None else parse_block_shape(block)


class Block(Scheme):
    """Block-column pruning (BLK-REW). See the module docstring."""

    name = "block"

    def __init__(self, *, block: Sequence[int] | None = None, axis: str = "col", **options) -> None:
        super().__init__(**options)
        self.block = _parse_block(block)
        if axis not in ("col", "row"):
            raise ConfigError(f"axis must be 'col' or 'row', got {axis!r}")
        self.axis = axis

    def block_shape(self, shape: Sequence[int]) -> tuple[int, int]:
        """The block in GEMM units, ``(rows, gemm_columns)``, for a weight of ``shape``."""
        rows, cols = self.block or (CONV_DEFAULT if len(shape) > 2 else OTHER_DEFAULT)
        return rows, cols * kernel_positions(shape)

    def storage_hints(self, shape: Sequence[int]) -> dict[str, Any]:
        """The kept columns are shared by a band of block rows (``axis="col"``; of block
        columns for ``"row"``): the model file indexes a band once."""
        rows, cols = self.block_shape(shape)
        band = {"band_rows": rows} if self.axis == "col" else {"band_cols": cols}
        return {**super().storage_hints(shape), **band}

    def check_rate(self, shape: Sequence[int], sparsity: float | None, *, gates: int = 1) -> None:
        """What a target rule is checked against (the projection itself takes any block): a
        given block may overhang a layer in one dimension (a ragged edge, as a blanket rule
        over small layers needs), but a block larger than the layer in both is refused: the
        layer would be one partial block, so the blocks asked for do not exist (usually the
        block's dims are swapped)."""
        self.check(shape, gates=gates)
        self._rate(sparsity)
        if self.block is None:
            return
        rows, cols = self.block
        out = shape[0] // max(1, gates)
        width = shape[1] if len(shape) > 2 else math.prod(shape[1:])
        if rows > out and cols > width:
            unit = "input channels" if len(shape) > 2 else "columns"
            raise TargetError(f"block {self.block} is larger than the weight in both dims: it "
                              f"has {out} rows and {width} {unit} per gate")

    # ---------------------------------------------------------------- segments
    def _segments(self, m: Tensor, shape: Sequence[int]) -> tuple[Tensor, int, Tensor]:
        """The matrix padded with zeros to whole blocks and reshaped so that every segment
        lies along one dim: ``(view, dim, sizes)``, where reducing ``view`` over ``dim``
        gives the segment grid and ``sizes`` (broadcastable to it) counts each segment's
        real (unpadded) weights."""
        n_rows, n_cols = m.shape
        br, bc = self.block_shape(shape)
        if self.axis == "col":
            nb = -(-n_rows // br)
            padded = F.pad(m, (0, 0, 0, nb * br - n_rows)) if nb * br != n_rows else m
            sizes = torch.full((nb, 1), br, dtype=torch.int64, device=m.device)
            if nb:
                sizes[-1] = n_rows - (nb - 1) * br
            return padded.reshape(nb, br, n_cols), 1, sizes
        nb = -(-n_cols // bc)
        padded = F.pad(m, (0, nb * bc - n_cols)) if nb * bc != n_cols else m
        sizes = torch.full((1, nb), bc, dtype=torch.int64, device=m.device)
        if nb:
            sizes[0, -1] = n_cols - (nb - 1) * bc
        return padded.reshape(n_rows, nb, bc), 2, sizes

    @staticmethod
    def _keep(view: Tensor, dim: int, sizes: Tensor, sparsity: float) -> Tensor:
        """Keep flag of every segment (the segment grid's shape)."""
        # squared norms rank like norms; summing squares over the strided middle dim is
        # faster than ``vector_norm`` there, while over the last dim the norm is faster
        score = (view * view).sum(dim=1) if dim == 1 else torch.linalg.vector_norm(view, dim=2)
        if sizes.numel() <= 1 or bool((sizes == sizes.reshape(-1)[0]).all()):
            return keep_largest(score, groups_to_prune(score.numel(), sparsity))
        keep = keep_largest_sized(score, sizes.expand(score.shape), sparsity)
        if not bool(keep.any()):  # a rate below 1 keeps at least the strongest segment
            flat = score.reshape(-1)  # of equal norms the later is kept, as keep_largest does
            keep.view(-1)[int(torch.nonzero(flat == flat.max()).max())] = True
        return keep

    # ------------------------------------------------------------------- hooks
    @staticmethod
    def _unblock(t: Tensor, dim: int, m: Tensor) -> Tensor:
        """Inverse of :meth:`_segments` for a tensor of the view's shape: the matrix of
        ``m``'s shape (a view of ``t`` when there was no padding)."""
        a, b, c = t.shape
        padded = t.reshape(a * b, c) if dim == 1 else t.reshape(a, b * c)
        return padded[: m.shape[0], : m.shape[1]]

    def _mask_2d(self, m: Tensor, sparsity: float, shape: torch.Size) -> Tensor:
        view, dim, sizes = self._segments(m, shape)
        keep = self._keep(view, dim, sizes, sparsity).unsqueeze(dim).expand(view.shape)
        return self._unblock(keep, dim, m).contiguous()

    def _project_2d(self, m: Tensor, sparsity: float, shape: torch.Size) -> Tensor:
        # select on the block view directly: no full-size mask is built
        view, dim, sizes = self._segments(m, shape)
        keep = self._keep(view, dim, sizes, sparsity).unsqueeze(dim)
        return self._unblock(torch.where(keep, view, 0.0), dim, m).contiguous()

    def _group_norms_2d(self, m: Tensor, shape: torch.Size) -> Tensor:
        view, dim, _ = self._segments(m, shape)
        return torch.linalg.vector_norm(view, dim=dim).reshape(-1)

    def __repr__(self) -> str:
        return f"Block(block={self.block}, axis={self.axis!r})"
