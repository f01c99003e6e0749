"""SparseGPT (Frantar & Alistarh 2023): optimal brain surgeon column by column.

Columns are pruned left to right. With ``U`` the upper Cholesky factor of ``H^-1`` (damped),
pruning (or keeping) column ``j`` of every row leaves an error ``(w_j - q_j) / U_jj`` that
is spread over the columns still to come through row ``j`` of ``U``: the exact OBS update
for removing a weight with the later ones free. Updates are applied lazily: inside a batch
of ``block`` columns at once, to the rest of the matrix once per batch (one matrix
product). The mask adapts: at the start of each batch (irregular) the batch's weights with
the least OBS saliency ``w^2 / U_jj^2`` go, the batch taking its share of the layer's exact
count; for N:M each run of ``m`` columns drops its ``m - n`` least salient weights when the
sweep reaches it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .baselines import prune_count
from .constraint import LayerConstraint
from .problem import DEFAULT_DAMP, LayerProblem

#: columns per lazy batch (the reference's block size)
DEFAULT_BLOCK = 128


def _inverse_factor(h: Tensor) -> Tensor:
    """Upper Cholesky factor of ``H^-1``, adding ridge until ``H`` factors."""
    eye = torch.eye(h.shape[0], dtype=h.dtype)
    extra = 0.0
    for _ in range(8):
        chol, info = torch.linalg.cholesky_ex(h + extra * eye)
        if int(info) == 0:
            break
        extra = max(extra * 10, 1e-6 * float(torch.diagonal(h).mean()))
    hinv = torch.cholesky_inverse(chol)
    return torch.linalg.cholesky(hinv, upper=True)


def _lowest(scores: Tensor, k: int) -> Tensor:
    """Mask of the ``k`` lowest entries of ``scores`` (ties: the earlier first)."""
    flat = scores.reshape(-1)
    out = torch.zeros_like(flat, dtype=torch.bool)
    if k > 0:
        out[torch.argsort(flat, stable=True)[:k]] = True
    return out.reshape(scores.shape)


def sparsegpt(problem: LayerProblem, constraint: LayerConstraint, *, damp: float = DEFAULT_DAMP,
              block: int = DEFAULT_BLOCK, **_) -> tuple[Tensor, dict]:
    scheme, rate = constraint.parts[0]
    h = problem.damped(damp)
    w = problem.w0.double().clone()
    dead = torch.diagonal(problem.h) <= 0
    w[:, dead] = 0
    u = _inverse_factor(h)
    rows, cols = w.shape
    nm = scheme if constraint.single == "nm" else None
    if nm is not None:  # a run of m columns never straddles two batches
        block = max(nm.m, block - block % nm.m)
    total = 0 if nm else prune_count(rows * cols, rate)
    pruned = torch.zeros_like(w, dtype=torch.bool)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        w1 = w[:, i1:i2].clone()
        u1 = u[i1:i2, i1:i2]
        d1 = torch.diagonal(u1)
        err1 = torch.zeros_like(w1)
        mask1 = torch.zeros_like(w1, dtype=torch.bool)
        if nm is None:
            share = round(total * i2 / cols) - round(total * i1 / cols)
            mask1 = _lowest(w1 * w1 / (d1 * d1)[None, :], share)
        for i in range(i2 - i1):
            if nm is not None and (i1 + i) % nm.m == 0:
                run = min(nm.m, cols - (i1 + i))
                drop = run - min(nm.n, run)
                if drop > 0:
                    sal = w1[:, i:i + run] ** 2 / (d1[i:i + run] ** 2)[None, :]
                    low = torch.topk(sal, drop, dim=1, largest=False).indices
                    mask1[:, i:i + run].scatter_(1, low, True)
            col = w1[:, i]
            q = torch.where(mask1[:, i], 0.0, col)
            e = (col - q) / d1[i]
            w1[:, i:] -= e[:, None] * u1[i, i:][None, :]
            w1[:, i] = q
            err1[:, i] = e
        w[:, i1:i2] = w1
        pruned[:, i1:i2] = mask1
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
    w[pruned] = 0
    return w.float(), {}
