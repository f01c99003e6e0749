"""Micro-structured weight unification: prune some micro-blocks, unify others.

The GEMM matrix ``[out, in*kh*kw]`` is cut into ``block = (rows, cols)`` micro-blocks
(default ``(1, 4)``); where the shape is not a multiple of the block, the last block-row and
block-column hold smaller blocks. Every block ends in one of three states:

- **kept**: unchanged (projection error 0);
- **unified**: every entry becomes ``sign(w) * s`` with one shared magnitude ``s``. The
  nearest such block keeps the signs and takes ``s = mean |w|`` over the block, so its error
  is ``u = sum w^2 - n * mean|w|^2``. An entry that is exactly zero has no sign; it takes
  ``+s`` (either sign is equally near), so a unified block is all nonzero unless ``s = 0``;
- **pruned**: all zero (error ``p = sum w^2 >= u``).

Rates count *weights*. ``sparsity`` is the fraction of the weights pruned and ``unified``
the fraction unified. Blocks fall into *size classes* (with no ragged edge there is one;
otherwise the full blocks, the narrower blocks of the last block-column, the shorter ones
of the last block-row and the corner block, merged where their sizes agree). Every class
gets the rate on its own, rounded to whole blocks so that the layer's total is nearest the
request (:func:`class_counts`): the pruned weights are within half a full block of
``sparsity * numel``, and the tiny edge blocks, cheapest to prune, cannot fill the quota in
place of full ones (counting blocks would undershoot the rate in weights). ``unified`` is
rounded the same way, then capped so no class unifies more blocks than it has left. With one
class this is ``count_to_prune(n_blocks, rate)`` blocks of each. A rate below 1 never prunes
every block: if the counts would, the largest class keeps one more block.

The projection picks, among all assignments with exactly those numbers of pruned and unified
blocks in every class, one of least total error — exactly: the classes do not interact, and
each is solved by :func:`assign_blocks`. ``mask()`` is the nonzero support of the projection
(pruned blocks are False).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from .base import Scheme, check_sparsity, parse_block_shape
from .unify_assign import KEEP, UNIFY, _assign_costs, _keep_one_block, class_counts


# ------------------------------------------------------------------------- scheme
class Unify(Scheme):
    """Micro-block pruning plus weight unification. See the module docstring."""

    name = "unify"
    frozen_kind = "unified"

    def __init__(
        self, *, block: Sequence[int] = (1, 4), unified: float = 0.0, **options
    ) -> None:
        super().__init__(**options)
        self.block = parse_block_shape(block)
        self.unified = check_sparsity(unified, "unified")

    # ---------------------------------------------------------------- blocks
    def _grid(self, m: Tensor) -> tuple[int, int, int, int]:
        r, c = self.block
        return -(-m.shape[0] // r), -(-m.shape[1] // c), r, c

    def _blocks(self, m: Tensor) -> Tensor:
        """``[n_blocks, r*c]``, row-major over the block grid, zero-padded at the edges
        (a view of ``m`` when rows of blocks are single matrix rows and nothing is padded)."""
        nrb, ncb, r, c = self._grid(m)
        if (nrb * r, ncb * c) != tuple(m.shape):
            m = F.pad(m, (0, ncb * c - m.shape[1], 0, nrb * r - m.shape[0]))
        if r == 1:
            return m.reshape(nrb * ncb, c)
        return m.reshape(nrb, r, ncb, c).permute(0, 2, 1, 3).reshape(nrb * ncb, r * c)

    def _unblock(self, blocks: Tensor, m: Tensor) -> Tensor:
        nrb, ncb, r, c = self._grid(m)
        if r == 1:
            full = blocks.reshape(nrb, ncb * c)
        else:
            full = blocks.reshape(nrb, ncb, r, c).permute(0, 2, 1, 3).reshape(nrb * r, ncb * c)
        return full[: m.shape[0], : m.shape[1]]

    def _sizes(self, m: Tensor) -> np.ndarray:
        """Real (unpadded) entries per block (float64): only edge blocks are smaller."""
        nrb, ncb, r, c = self._grid(m)
        rows = np.full(nrb, float(r))
        cols = np.full(ncb, float(c))
        rows[-1] = m.shape[0] - (nrb - 1) * r
        cols[-1] = m.shape[1] - (ncb - 1) * c
        return np.outer(rows, cols).reshape(-1)

    def states(self, w: Tensor, sparsity: float) -> Tensor:
        """Per block of ``w``'s GEMM matrix: ``KEEP`` (0), ``UNIFY`` (1) or ``PRUNE`` (2),
        row-major over the block grid."""
        self.check(w.shape)
        m = w.detach().reshape(w.shape[0], -1).double()
        blocks = np.ascontiguousarray(self._blocks(m).cpu().numpy())
        return torch.from_numpy(self._assign(blocks, self._sizes(m), check_sparsity(sparsity))[0])

    def check_rate(self, shape: Sequence[int], sparsity: float | None, *, gates: int = 1) -> None:
        """Raise if ``sparsity`` plus ``unified`` exceeds 1 (no block is both)."""
        self.check(shape, gates=gates)
        self._check_total(self._rate(sparsity))

    def _check_total(self, sparsity: float) -> None:
        if sparsity + self.unified > 1.0 + 1e-9:
            raise ConfigError(
                f"unify: sparsity {sparsity:g} plus unified {self.unified:g} exceeds 1"
            )

    def counts(self, sizes: np.ndarray, sparsity: float) -> list[tuple[np.ndarray, int, int]]:
        """``(block indices, n_prune, n_unify)`` of every size class of blocks with real
        sizes ``sizes`` (see the module docstring), largest blocks first."""
        self._check_total(sparsity)
        members = [np.flatnonzero(sizes == z) for z in np.unique(sizes)[::-1]]
        classes = [m.size for m in members]
        values = [float(z) for z in np.unique(sizes)[::-1]]
        n_prune = _keep_one_block(class_counts(classes, values, sparsity), classes)
        n_unify = [
            min(u, n - p)
            for u, n, p in zip(class_counts(classes, values, self.unified), classes, n_prune,
                               strict=True)
        ]
        return list(zip(members, n_prune, n_unify, strict=True))

    def _assign(
        self, blocks: np.ndarray, sizes: np.ndarray, sparsity: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Block states and the unified magnitude ``mean |w|`` of every block (float64
        maths whatever the dtype of ``blocks``; numpy, one thread)."""
        plan = self.counts(sizes, sparsity)
        b64 = blocks.astype(np.float64)  # a copy, also for float64 blocks
        energy = np.einsum("ij,ij->i", b64, b64)
        total = np.einsum("ij->i", np.abs(b64, out=b64))
        magnitude = total / sizes
        unify_cost = energy - total * magnitude
        if len(plan) == 1:
            _, n_prune, n_unify = plan[0]
            return _assign_costs(energy, unify_cost, n_prune, n_unify), magnitude
        state = np.full(blocks.shape[0], KEEP, dtype=np.int8)
        for members, n_prune, n_unify in plan:  # classes do not interact: solve each
            state[members] = _assign_costs(energy[members], unify_cost[members], n_prune,
                                           n_unify)
        return state, magnitude

    # ----------------------------------------------------------------- hooks
    def _project_2d(self, m: Tensor, sparsity: float, shape: torch.Size) -> Tensor:
        """The projection, computed with numpy on the CPU (one thread: steady timings on a
        busy machine) and returned on ``m``'s device."""
        blocks = np.ascontiguousarray(self._blocks(m).cpu().numpy())
        state, magnitude = self._assign(blocks, self._sizes(m), sparsity)
        zero = blocks.dtype.type(0.0)
        value = np.where(state == UNIFY, magnitude, 0.0).astype(blocks.dtype)[:, None]
        # unified blocks take the signs of their entries (+ for a zero, -0.0 included);
        # pruned blocks become +0.0; kept blocks are copied back unchanged
        out = np.copysign(value, blocks + zero)
        out += zero
        kept = np.flatnonzero(state == KEEP)
        out[kept] = blocks[kept]
        return self._unblock(torch.from_numpy(out).to(m.device), m)

    def _mask_2d(self, m: Tensor, sparsity: float, shape: torch.Size) -> Tensor:
        return self._project_2d(m, sparsity, shape) != 0

    def _group_norms_2d(self, m: Tensor, shape: torch.Size) -> Tensor:
        """One L2 norm per micro-block (row-major over the block grid)."""
        return torch.linalg.vector_norm(self._blocks(m), dim=1)

    def __repr__(self) -> str:
        return f"Unify(block={self.block}, unified={self.unified:g})"
