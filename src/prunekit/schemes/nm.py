"""N:M fine-grained structured sparsity (2:4, 4:8, ...).

In every GEMM row, each run of ``m`` consecutive columns keeps its ``n`` entries of largest
magnitude. The constraint is separable over runs and each run is an "at most n nonzeros"
set, so keeping the n largest |w| of every run is the exact Euclidean projection. Ties are
broken by position (the earlier entry is kept).

The rate is fixed by the pattern: ``natural_sparsity = 1 - n/m``, and ``sparsity=None``
means that rate. Asking for any other rate is an error, because no N:M pattern can meet it
(:meth:`NM.check_rate` says so before anything is projected), and for the same reason the
scheme cannot take rates from global allocation (``fixed_rate``).

When the GEMM width is not a multiple of ``m``, the trailing run of ``L < m`` columns keeps
``min(n, L)`` entries (it is a shorter run under the same "at most n" rule), so the achieved
sparsity of such a layer is slightly below ``1 - n/m``.

"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from .base import Scheme, check_sparsity


def _positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} must be a positive integer, got {value!r}")
    return value



#: up to this run length, ranking by pairwise comparison beats sorting each run
_COMPARE_MAX_M = 4


def _keep_top_n(runs: Tensor, n: int) -> Tensor:
    """Mask keeping the ``n`` largest entries of every row of ``runs`` ``[k, m]``; of equal
    entries the earlier wins. Short runs are ranked by pairwise comparison (``m*(m-1)``
    byte-sized passes, about 3x faster than a sort for m=4); longer ones by a stable sort."""
    m = runs.shape[1]
    keep = torch.empty(runs.shape, dtype=torch.bool, device=runs.device)
    if m <= _COMPARE_MAX_M:
        cols = runs.unbind(dim=1)
        beats = torch.empty(runs.shape[0], dtype=torch.bool, device=runs.device)
        rank = torch.empty(runs.shape[0], dtype=torch.uint8, device=runs.device)
        for i in range(m):
            rank.zero_()  # entries of run that beat entry i: larger, or equal and earlier
            for j in range(m):
                if j != i:
                    (torch.ge if j < i else torch.gt)(cols[j], cols[i], out=beats)
                    rank += beats.view(torch.uint8)
            keep[:, i] = rank < n
        return keep
    order = torch.sort(runs, dim=1, descending=True, stable=True).indices
    return keep.fill_(False).scatter_(1, order[:, :n], True)


class NM(Scheme):
    """N:M sparsity: at most ``n`` nonzeros in every ``m`` consecutive GEMM columns."""

    name = "nm"

    def __init__(self, *, n: int = 2, m: int = 4, **options) -> None:
        super().__init__(**options)
        self.n = _positive_int(n, "n")
        self.m = _positive_int(m, "m")
        if self.n > self.m:
            raise ConfigError(f"n must not exceed m in N:M sparsity, got n={n}, m={m}")
        self.natural_sparsity = 1.0 - self.n / self.m

    #: the only rate is ``natural_sparsity``: no allocation can hand out another one
    fixed_rate = True

    def check_rate(self, shape: Sequence[int], sparsity: float | None, *, gates: int = 1) -> None:
        """Raise unless ``sparsity`` is unset or the pattern's own ``1 - n/m``."""
        self.check(shape, gates=gates)
        self._rate(sparsity)

    def _rate(self, sparsity: float | None) -> float:
        if sparsity is None:
            return self.natural_sparsity
        s = check_sparsity(sparsity)
        if abs(s - self.natural_sparsity) > 1e-9:
            raise ConfigError(
                f"{self.n}:{self.m} sparsity has the fixed rate {self.natural_sparsity:g} "
                f"(1 - n/m); got sparsity={s:g}. Leave sparsity unset or choose n and m"
            )
        return self.natural_sparsity

    def _mask_2d(self, m: Tensor, sparsity: float, shape: torch.Size) -> Tensor:
        n_rows, n_cols = m.shape
        runs = -(-n_cols // self.m)
        # |w| >= 0, so padding with -1 makes padded slots lose to every real entry: a short
        # trailing run keeps min(n, L) real entries
        score = m.abs()
        if runs * self.m != n_cols:
            score = F.pad(score, (0, runs * self.m - n_cols), value=-1.0)
        keep = _keep_top_n(score.reshape(n_rows * runs, self.m), self.n)
        return keep.reshape(n_rows, runs * self.m)[:, :n_cols].contiguous()

    def _group_norms_2d(self, m: Tensor, shape: torch.Size) -> Tensor:
        """Per-entry |w|: N:M selects single entries, within fixed runs."""
        return m.reshape(-1).abs()

    def __repr__(self) -> str:
        return f"NM(n={self.n}, m={self.m})"
