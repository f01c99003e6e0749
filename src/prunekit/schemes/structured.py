"""Coarse structured sparsity: whole filters, whole input channels, whole GEMM columns.

Each scheme cuts the GEMM matrix ``[out, in*kh*kw]`` into equal-sized groups and keeps the
groups of largest L2 norm. For equal-sized groups this is the exact Euclidean projection
onto "at most k groups are nonzero": the squared error of a choice is the energy of the
groups left out, which is smallest when those are the groups of smallest norm.

Rounding: a sparsity ``s`` over ``n`` groups prunes ``count_to_prune(n, s)`` groups, the
nearest whole number of groups (half rounds up), so the achieved sparsity is within half a
group of ``s``. Ties in norm are broken by position: the earlier group is pruned first.

A rate below 1 never prunes every group (:func:`groups_to_prune`): where the nearest whole
number would be all of them (a layer or gate of few groups, e.g. a depthwise conv's single
input channel per filter) the group of largest norm is kept, so no layer is silently cut
off from its input. The achieved sparsity is then below the request, and measured.

Pruned groups shrink the layer physically (filters: fewer outputs; channels: fewer inputs;
columns: fewer GEMM columns); the model file stores the kept groups densely plus a bitmap of
which groups were kept.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Scheme, groups_to_prune, keep_largest, kernel_positions


class _GroupScheme(Scheme):
    """Shared maths for schemes whose groups are equal-sized slices of the GEMM matrix.

    A subclass says how to reduce the matrix to one L2 norm per group (``_group_norms_2d``,
    differentiable: ``vector_norm`` has a zero, not NaN, gradient at 0, so groups already
    pruned do not poison a group-lasso penalty) and how to spread one keep flag per group
    back over the matrix (``_spread``); selection, projection and storage follow.
    """

    def _spread(self, keep: Tensor, shape: torch.Size) -> Tensor:
        """Boolean broadcastable to the GEMM matrix, from one flag per group."""
        raise NotImplementedError

    def _keep(self, m: Tensor, sparsity: float, shape: torch.Size) -> Tensor:
        norms = self._group_norms_2d(m, shape)
        return self._spread(keep_largest(norms, groups_to_prune(norms.numel(), sparsity)), shape)

    def _mask_2d(self, m: Tensor, sparsity: float, shape: torch.Size) -> Tensor:
        return self._keep(m, sparsity, shape).expand(m.shape).contiguous()

    def _project_2d(self, m: Tensor, sparsity: float, shape: torch.Size) -> Tensor:
        return torch.where(self._keep(m, sparsity, shape), m, 0.0)


class Filter(_GroupScheme):
    """Filter (output-channel / neuron) pruning: groups are whole GEMM rows."""

    name = "filter"
    removes_rows = True

    def _group_norms_2d(self, m: Tensor, shape: torch.Size) -> Tensor:
        return torch.linalg.vector_norm(m, dim=1)

    def _spread(self, keep: Tensor, shape: torch.Size) -> Tensor:
        return keep[:, None]


class Channel(_GroupScheme):
    """Input-channel pruning: a group is one input channel, i.e. for a conv GEMM matrix
    ``[out, in*kh*kw]`` the ``kh*kw`` columns of that channel over all rows (for a linear
    or RNN weight, one column). Pruning a channel lets the previous layer drop the filter
    that produces it.

    A grouped conv's weight ``[out, in/groups, kh, kw]`` does not say which group a row
    reads, so its column ``j`` is a *different* input channel in every group: pruning it
    would cut position ``j`` of every group, and on a depthwise conv (one column per
    filter) the whole layer. :func:`prunekit.targets.resolve` therefore refuses ``channel``
    on convs with ``groups > 1`` (prune the producing layer's filters instead); used
    directly on such a weight, the scheme still never prunes its last channel."""

    name = "channel"

    @staticmethod
    def _by_channel(m: Tensor, shape: torch.Size) -> Tensor:
        k = kernel_positions(shape)
        return m.reshape(m.shape[0], m.shape[1] // k, k)

    def _group_norms_2d(self, m: Tensor, shape: torch.Size) -> Tensor:
        return torch.linalg.vector_norm(self._by_channel(m, shape), dim=(0, 2))

    def _spread(self, keep: Tensor, shape: torch.Size) -> Tensor:
        return keep.repeat_interleave(kernel_positions(shape))[None, :]


class Column(_GroupScheme):
    """Column (shape-wise) pruning: groups are single GEMM columns, i.e. one
    (input channel, kernel position) of a conv, across all filters."""

    name = "column"

    def _group_norms_2d(self, m: Tensor, shape: torch.Size) -> Tensor:
        return torch.linalg.vector_norm(m, dim=0)

    def _spread(self, keep: Tensor, shape: torch.Size) -> Tensor:
        return keep[None, :]
