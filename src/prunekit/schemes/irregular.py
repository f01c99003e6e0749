"""Irregular (element-wise) sparsity: keep the k largest |w|.

The projection onto {W : nnz(W) <= k} keeps the k entries of largest magnitude, because the
squared error of a support is the sum of the squares left out.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Scheme, groups_to_prune, keep_largest

__all__ = ["Irregular", "keep_largest"]


class Irregular(Scheme):
    name = "irregular"

    def _mask_2d(self, m: Tensor, sparsity: float, shape: torch.Size) -> Tensor:
        return keep_largest(m.abs(), groups_to_prune(m.numel(), sparsity))

    def _group_norms_2d(self, m: Tensor, shape: torch.Size) -> Tensor:
        return m.reshape(-1).abs()
