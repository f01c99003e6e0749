"""Irregular (element-wise) sparsity: keep the k largest |w|.

The projection onto {W : nnz(W) <= k} keeps the k entries of largest magnitude, because the
squared error of a support is the sum of the squares left out.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Scheme, count_to_prune


def keep_largest(scores: Tensor, n_prune: int) -> Tensor:
    """Boolean mask over ``scores`` (any shape) keeping all but the ``n_prune`` smallest.

    Ties are broken by position (stable), so the result is deterministic.
    """
    flat = scores.reshape(-1)
    keep = torch.ones_like(flat, dtype=torch.bool)
    if n_prune > 0:
        order = torch.argsort(flat, stable=True)
        keep[order[:n_prune]] = False
    return keep.reshape(scores.shape)


class Irregular(Scheme):
    name = "irregular"

    def _mask_2d(self, m: Tensor, sparsity: float, shape: torch.Size) -> Tensor:
        return keep_largest(m.abs(), count_to_prune(m.numel(), sparsity))

    def _group_norms_2d(self, m: Tensor, shape: torch.Size) -> Tensor:
        return m.reshape(-1).abs()
