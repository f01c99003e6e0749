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

``sparsity`` is the fraction of blocks pruned and ``unified`` the fraction unified, each
rounded to the nearest whole block with :func:`count_to_prune` (``n_unify`` is then capped
so that the two never exceed the number of blocks). With no ragged edge every block has the
same size and these are exactly the fractions of weights; with ragged edges the smaller edge
blocks make the weight fractions differ slightly, and the achieved sparsity is measured.

The projection picks, among all assignments with exactly those numbers of pruned and unified
blocks, one of least total error — exactly, by :func:`assign_blocks`. ``mask()`` is the
nonzero support of the projection (pruned blocks are False).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from .base import Scheme, check_sparsity, count_to_prune, keep_largest

KEEP, UNIFY, PRUNE = 0, 1, 2


# --------------------------------------------------------------------- assignment
def _smallest_sums(values: list[float], k: int) -> np.ndarray:
    """``out[j]`` = sum of the ``k`` smallest of ``values[:j]`` for ``j = 0..n``
    (``inf`` where ``j < k``), by one sweep with a max-heap of the current ``k`` smallest."""
    n = len(values)
    if k == 0:
        return np.zeros(n + 1)
    if k > n:
        return np.full(n + 1, np.inf)
    heap = [-v for v in values[:k]]
    heapq.heapify(heap)
    total = math.fsum(values[:k])
    sums = [total]
    for v in values[k:]:
        if v < -heap[0]:
            total += v + heapq.heapreplace(heap, -v)  # add v, drop the largest kept
        sums.append(total)
    return np.concatenate([np.full(k, np.inf), np.asarray(sums)])


def _smallest(values: Tensor, candidates: Tensor, k: int) -> Tensor:
    """The ``k`` entries of ``candidates`` (indices) with smallest ``values`` (stable)."""
    return candidates[torch.argsort(values[candidates], stable=True)[:k]]


def assign_blocks(prune_cost: Tensor, unify_cost: Tensor, n_prune: int, n_unify: int) -> Tensor:
    """Least-error assignment of blocks to keep (cost 0), unify (``unify_cost``) and
    prune (``prune_cost``) with exactly ``n_prune`` pruned and ``n_unify`` unified blocks.

    Returns one state per block (``KEEP``, ``UNIFY``, ``PRUNE``) as int8. Needs
    ``0 <= unify_cost <= prune_cost`` (true of the unification errors).

    Why it is exact. Write ``d = p - u >= 0``.
    (1) Given the set ``S`` of changed blocks, the split of ``S`` into pruned and unified
        costs ``sum_S u + sum_P d``, least when ``P`` holds the ``n_prune`` blocks of ``S``
        with smallest ``d``. So some optimal solution has every pruned block before every
        unified block in the order of increasing ``d`` (two blocks tied in ``d`` can trade
        states at no cost).
    (2) For a cut ``k`` of that order, the best solution with pruned blocks among the first
        ``k`` and unified ones among the rest takes the ``n_prune`` smallest ``p`` of the
        prefix and the ``n_unify`` smallest ``u`` of the suffix; the two choices do not
        interact. Every cut gives a feasible assignment and by (1) some cut gives an
        optimal one, so the best cut is optimal.
    Both running sums over all cuts come from one heap sweep each: ``O(n log n)``.
    """
    p = prune_cost.detach().double().cpu().reshape(-1)
    u = torch.minimum(unify_cost.detach().double().cpu().reshape(-1).clamp(min=0.0), p)
    n = p.numel()
    if n_prune < 0 or n_unify < 0 or n_prune + n_unify > n:
        raise ConfigError(
            f"cannot prune {n_prune} and unify {n_unify} of {n} blocks"
        )
    state = torch.full((n,), KEEP, dtype=torch.int8)
    if n_unify == 0:
        state[~keep_largest(p, n_prune)] = PRUNE
        return state
    if n_prune == 0:
        state[~keep_largest(u, n_unify)] = UNIFY
        return state
    order = torch.argsort(p - u, stable=True)
    # cost of the best split at every cut k (only n_prune <= k <= n - n_unify is feasible)
    cost = np.full(n + 1, np.inf)
    cost[: n - n_unify + 1] = _smallest_sums(p[order[: n - n_unify]].tolist(), n_prune)
    tail = _smallest_sums(u[order.flip(0)[: n - n_prune]].tolist(), n_unify)  # [t]: last t
    cost[n_prune:] += tail[::-1]
    cut = int(np.argmin(cost))
    state[_smallest(p, order[:cut], n_prune)] = PRUNE
    state[_smallest(u, order[cut:], n_unify)] = UNIFY
    return state


# ------------------------------------------------------------------------- scheme
def _parse_block(block: object) -> tuple[int, int]:
    ok = isinstance(block, (tuple, list)) and len(block) == 2
    if ok:
        ok = all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in block)
    if not ok:
        raise ConfigError(f"block must be two positive integers (rows, cols), got {block!r}")
    return int(block[0]), int(block[1])


class Unify(Scheme):
    """Micro-block pruning plus weight unification. See the module docstring."""

    name = "unify"

    def __init__(
        self, *, block: Sequence[int] = (1, 4), unified: float = 0.0, **options
    ) -> None:
        super().__init__(**options)
        self.block = _parse_block(block)
        self.unified = check_sparsity(unified, "unified")

    # ---------------------------------------------------------------- blocks
    def _grid(self, m: Tensor) -> tuple[int, int, int, int]:
        r, c = self.block
        return -(-m.shape[0] // r), -(-m.shape[1] // c), r, c

    def _blocks(self, m: Tensor) -> Tensor:
        """``[n_blocks, r*c]``, row-major over the block grid, zero-padded at the edges."""
        nrb, ncb, r, c = self._grid(m)
        padded = F.pad(m, (0, ncb * c - m.shape[1], 0, nrb * r - m.shape[0]))
        return padded.reshape(nrb, r, ncb, c).permute(0, 2, 1, 3).reshape(nrb * ncb, r * c)

    def _unblock(self, blocks: Tensor, m: Tensor) -> Tensor:
        nrb, ncb, r, c = self._grid(m)
        full = blocks.reshape(nrb, ncb, r, c).permute(0, 2, 1, 3).reshape(nrb * r, ncb * c)
        return full[: m.shape[0], : m.shape[1]]

    def _sizes(self, m: Tensor) -> Tensor:
        """Real (unpadded) entries per block."""
        return self._blocks(torch.ones_like(m, dtype=torch.float64)).sum(dim=1)

    def states(self, w: Tensor, sparsity: float) -> Tensor:
        """Per block of ``w``'s GEMM matrix: ``KEEP`` (0), ``UNIFY`` (1) or ``PRUNE`` (2),
        row-major over the block grid."""
        self.check(w.shape)
        m = w.detach().reshape(w.shape[0], -1).double()
        return self._assign(self._blocks(m), self._sizes(m), check_sparsity(sparsity))[0]

    def _assign(self, blocks: Tensor, sizes: Tensor, sparsity: float) -> tuple[Tensor, Tensor]:
        """Block states and the unified magnitude ``mean |w|`` of every block."""
        if sparsity + self.unified > 1.0 + 1e-9:
            raise ConfigError(
                f"unify: sparsity {sparsity:g} plus unified {self.unified:g} exceeds 1"
            )
        n = blocks.shape[0]
        n_prune = count_to_prune(n, sparsity)
        n_unify = min(count_to_prune(n, self.unified), n - n_prune)
        energy = (blocks * blocks).sum(dim=1)
        magnitude = blocks.abs().sum(dim=1) / sizes
        unify_cost = energy - sizes * magnitude * magnitude
        return assign_blocks(energy, unify_cost, n_prune, n_unify), magnitude

    # ----------------------------------------------------------------- hooks
    def _project_2d(self, m: Tensor, sparsity: float, shape: torch.Size) -> Tensor:
        m64 = m.double()
        blocks = self._blocks(m64)
        state, magnitude = self._assign(blocks, self._sizes(m64), sparsity)
        unified = torch.where(blocks >= 0, magnitude[:, None], -magnitude[:, None])
        state = state[:, None]
        out = torch.where(state == KEEP, blocks, torch.where(state == UNIFY, unified, 0.0))
        return self._unblock(out, m64).to(m.dtype)

    def _mask_2d(self, m: Tensor, sparsity: float, shape: torch.Size) -> Tensor:
        return self._project_2d(m, sparsity, shape) != 0

    def _group_norms_2d(self, m: Tensor, shape: torch.Size) -> Tensor:
        """One L2 norm per micro-block (row-major over the block grid)."""
        return torch.linalg.vector_norm(self._blocks(m), dim=1)

    def _storage_bits_2d(self, m: Tensor, bits: int, shape: torch.Size) -> int:
        """Kept blocks at ``bits`` per value; a unified block (all entries of one nonzero
        magnitude) one magnitude at ``bits`` plus a sign bit per entry; an all-zero block
        nothing; plus 2 state bits per block. Blocks are classified from ``m`` itself."""
        m64 = m.double()
        mags = self._blocks(m64.abs())
        real = self._blocks(torch.ones_like(m64)) > 0
        sizes = real.sum(dim=1)
        top = mags.amax(dim=1)
        zero = top == 0
        equal = ((mags == top[:, None]) | ~real).all(dim=1) & ~zero
        kept = ~zero & ~equal
        value_bits = int((sizes[kept] * bits).sum().item())
        unified_bits = int((bits + sizes[equal]).sum().item())
        return value_bits + unified_bits + 2 * mags.shape[0]

    def __repr__(self) -> str:
        return f"Unify(block={self.block}, unified={self.unified:g})"
