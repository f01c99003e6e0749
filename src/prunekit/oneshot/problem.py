"""One layer's reconstruction problem: the dense GEMM weight ``W0`` and the Gram matrix
``H = X^T X`` of its calibration inputs.

Every solver minimises the same objective, ``||X W0^T - X W^T||^2 = tr((W - W0) H (W - W0)^T)``,
so the problem object owns the objective, its relative form (error of ``W`` over the output
energy ``tr(W0 H W0^T)``, the per-layer figure the record reports) and the ridge term.

A solver may instead aim at the *dense* model's output, ``||X_d W0^T - X W^T||^2``, where
``X_d`` are the layer's inputs in the uncompressed model: its minimiser also undoes the error
the compressed layers upstream left in ``X``. That objective differs from the first only in
its linear term, ``B = W0 X_d^T X`` in place of ``W0 H`` (:meth:`LayerProblem.rhs`), so the
same solvers take it; the error the record reports stays the first (comparable between
solvers, which see the same ``X``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

#: default ridge, as a fraction of the mean of diag(H) (what SparseGPT and ALPS use)
DEFAULT_DAMP = 0.01


@dataclass
class LayerProblem:
    """``w0``: dense GEMM weight ``[out, in]`` (float32); ``h``: Gram matrix ``[in, in]``
    (float64, undamped: the objective is measured without the ridge); ``cross``: optional
    ``X_d^T X`` of the dense model's inputs against these (module docstring)."""

    w0: Tensor
    h: Tensor
    cross: Tensor | None = None

    def __post_init__(self) -> None:
        self.w0 = self.w0.detach().float().clone()  # the weight is overwritten later
        self.h = self.h.detach().double()
        if self.h.shape != (self.w0.shape[1], self.w0.shape[1]):
            raise ValueError(f"Gram matrix {tuple(self.h.shape)} does not fit weight "
                             f"{tuple(self.w0.shape)}")
        if self.cross is not None:
            self.cross = self.cross.detach().double()
            if self.cross.shape != self.h.shape:
                raise ValueError(f"cross Gram matrix {tuple(self.cross.shape)} does not fit "
                                 f"weight {tuple(self.w0.shape)}")

    def rhs(self, damp: float | None = None) -> Tensor:
        """The linear term of the objective a solver minimises (float64): ``W0 H``, or
        ``W0 X_d^T X`` when aiming at the dense model's output; with ``damp``, plus the
        ridge's ``W0 (H_damped - H)``, so the ridge pulls towards ``W0`` (not towards zero)
        and the unconstrained minimiser stays ``W0`` when the target is ``W0 H``."""
        w = self.w0.double()
        out = w @ (self.h if self.cross is None else self.cross)
        if damp is not None:
            out += w * torch.diagonal(self.damped(damp) - self.h)
        return out

    def damped(self, damp: float = DEFAULT_DAMP) -> Tensor:
        """``H + damp * mean(diag H) * I``; inputs never seen (zero diagonal) get a unit
        diagonal so the matrix stays invertible (their weights cannot matter)."""
        h = self.h.clone()
        diag = torch.diagonal(h)
        dead = diag <= 0
        ridge = damp * float(diag[~dead].mean()) if bool((~dead).any()) else 1.0
        diag[dead] = 1.0
        diag.add_(ridge)
        return h

    def error(self, w: Tensor) -> float:
        """``tr((W - W0) H (W - W0)^T)``."""
        d = (w.double() - self.w0.double())
        return float(((d @ self.h) * d).sum())

    def energy(self) -> float:
        w = self.w0.double()
        return float(((w @ self.h) * w).sum())

    def relative_error(self, w: Tensor) -> float:
        """The error relative to the layer's output energy (0 = exact, 1 = all zeros)."""
        energy = self.energy()
        return self.error(w) / energy if energy > 0 else 0.0
