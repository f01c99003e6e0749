"""The scheme protocol: a constraint set on one weight and its exact Euclidean projection.

Schemes are pure tensor maths and know nothing of ``nn.Module``. Every scheme works on the
2-D *GEMM view* of a weight: a conv weight ``[out, in/groups, kh, kw]`` is the matrix
``[out, in/groups*kh*kw]``, a linear weight is already ``[out, in]``, and an RNN weight that
stacks ``gates`` gate matrices along dim 0 (LSTM: 4, GRU: 3) is handled one gate at a time,
so each gate gets the requested sparsity on its own.

A subclass implements the maths on one GEMM matrix (``_mask_2d`` and, for schemes whose
projection is not "keep the chosen support", ``_project_2d``); this base class does the
reshaping, the argument checks and the bookkeeping, so each scheme file stays about maths.

Sparsity is always the fraction of weights that become zero. Structured schemes prune whole
groups, so the achieved sparsity is rounded to whole groups; it is always *measured* from
the result (:func:`measured_sparsity`), never assumed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, TargetError


def check_sparsity(sparsity: float, what: str = "sparsity") -> float:
    """Validate a requested pruning rate: a number in [0, 1)."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise ConfigError(f"{what} must be a number in [0, 1), got {sparsity!r}")
    if not 0.0 <= float(sparsity) < 1.0:
        raise ConfigError(f"{what} must be in [0, 1), got {sparsity}")
    return float(sparsity)


def count_to_prune(n_items: int, sparsity: float) -> int:
    """How many of ``n_items`` equal-sized items to prune for ``sparsity`` (nearest whole
    item)."""
    return min(n_items, int(math.floor(sparsity * n_items + 0.5)))


def groups_to_prune(n_groups: int, sparsity: float) -> int:
    """:func:`count_to_prune`, except that a rate below 1 always keeps one group: rounding
    to whole groups must not zero a whole weight (or gate) that the user asked to keep a
    fraction of (a 16-weight layer at 0.97 keeps one weight, not none). Schemes call this
    for every count of prunable units they take."""
    return max(0, min(count_to_prune(n_groups, sparsity), n_groups - 1))


def measured_sparsity(w: Tensor) -> float:
    """Fraction of exact zeros in ``w``."""
    return 0.0 if w.numel() == 0 else float((w == 0).sum().item()) / w.numel()


def parse_block_shape(block: object) -> tuple[int, int]:
    """Validate a ``(rows, cols)`` block option (YAML gives a list, Python a tuple)."""
    ok = isinstance(block, (tuple, list)) and len(block) == 2
    if ok:
        ok = all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in block)
    if not ok:
        raise ConfigError(f"block must be two positive integers (rows, cols), got {block!r}")
    return int(block[0]), int(block[1])



def kernel_positions(shape: Sequence[int]) -> int:
    """GEMM columns per input channel: ``kh*kw`` for a conv weight, 1 for linear/RNN."""
    return math.prod(shape[2:]) if len(shape) > 2 else 1


def gemm_view(w: Tensor) -> Tensor:
    """The 2-D GEMM matrix of a weight: dim 0 is the output, the rest is flattened."""
    if w.dim() == 1:
        return w.reshape(1, -1)
    return w.reshape(w.shape[0], math.prod(w.shape[1:]))


def split_gates(w: Tensor, gates: int) -> list[Tensor]:
    """Split an RNN weight stacked along dim 0 into its ``gates`` gate matrices (views)."""
    if gates < 1 or w.shape[0] % gates:
        raise ConfigError(f"weight of shape {tuple(w.shape)} cannot be split into {gates} gates")
    return list(w.chunk(gates, dim=0)) if gates > 1 else [w]


def _working(w: Tensor) -> Tensor:
    """The GEMM matrix the hooks compute on: float64 stays float64, so kept weights come
    back bit for bit; every other dtype (half, bfloat16, float32) is computed in float32."""
    m = gemm_view(w.detach())
    return m if m.dtype == torch.float64 else m.float()


def shares_storage(a: Tensor, b: Tensor) -> bool:
    """Whether ``a`` lives in ``b``'s memory (a view of it, or ``b`` itself)."""
    if a.numel() == 0 or b.numel() == 0:
        return False
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


# numpy's selection and sort (introselect, x86-simd-sort) ran 4-9x faster than torch's on
# CPU in a one-off timing here (86M float32: partition 0.67 s vs kthvalue 3.1 s; sorting
# rows of 590k: 17 ms vs 150 ms; bench/global_allocation.py times the whole allocation).
# The numpy arrays are views of the tensors; only the selection's own copy is made.
_NUMPY_DTYPES = (torch.float32, torch.float64, torch.float16)


def _as_numpy(t: Tensor) -> Any:
    """A numpy view of ``t`` when it is a CPU tensor of a dtype numpy has, else None."""
    if t.device.type != "cpu" or t.dtype not in _NUMPY_DTYPES or t.requires_grad:
        return None
    return t.numpy()


def kth_smallest(flat: Tensor, k: int, *, overwrite: bool = False) -> Tensor:
    """The ``k``-th smallest entry (1-based) of a 1-D tensor, as a 0-d tensor: what
    ``flat.kthvalue(k).values`` gives (NaN ranks last in both). With ``overwrite`` the
    selection may reorder ``flat`` in place instead of copying it (for a scratch tensor
    of a whole model's scores, the copy is a third of the time)."""
    array = _as_numpy(flat)
    if array is None:
        return flat.kthvalue(k).values
    if overwrite:
        array.partition(k - 1)
        return torch.tensor(array[k - 1], dtype=flat.dtype)
    return torch.tensor(np.partition(array, k - 1)[k - 1], dtype=flat.dtype)


def sorted_rows(t: Tensor) -> Tensor:
    """``torch.sort(t, dim=-1).values``, through numpy where it can."""
    array = _as_numpy(t)
    if array is None:
        return torch.sort(t, dim=-1).values
    return torch.from_numpy(np.sort(array, axis=-1))


def keep_largest(scores: Tensor, n_prune: int) -> Tensor:
    """Boolean mask over ``scores`` (any shape) keeping all but the ``n_prune`` smallest.

    Ties are broken by position (the earlier of two equal scores is pruned first, as a
    stable sort would), so the result is deterministic. The cut is found by selection
    (:func:`kth_smallest`, linear time, several times faster than a sort here) rather than a
    full sort: projection runs on every weight of a model, many times during training.
    """
    flat = scores.reshape(-1)
    n = flat.numel()
    if n_prune <= 0:
        return torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    if n_prune >= n:
        return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    cut = kth_smallest(flat, n_prune)
    keep = flat > cut
    missing = (n - n_prune) - int(torch.count_nonzero(keep).item())
    if missing > 0:
        # several entries equal the cut: keep the last ``missing`` of them by position
        ties = torch.nonzero(flat == cut).flatten()
        keep[ties[len(ties) - missing :]] = True
    return keep.reshape(scores.shape)


def keep_largest_sized(scores: Tensor, sizes: Tensor, sparsity: float) -> Tensor:
    """Group mask (True = kept) for groups of *different* sizes: prune groups in order of
    increasing score (ties by position) and stop at the prefix whose pruned weight count is
    nearest to ``sparsity * sizes.sum()`` (on a tie, the larger prefix), never all of them.

    With equal sizes this is exactly ``groups_to_prune(n_groups, sparsity)`` groups. For any
    sizes, the kept groups are those of largest score, so when ``scores`` are group norms the
    result is the exact projection onto "keep at most that many groups".
    """
    flat, sz = scores.reshape(-1), sizes.reshape(-1)
    if flat.numel() == 0:
        return torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    if bool((sz == sz[0]).all()):
        return keep_largest(scores, groups_to_prune(flat.numel(), sparsity))
    order = torch.argsort(flat, stable=True)
    pruned_weights = torch.cat([sz.new_zeros(1), sz[order].cumsum(0)]).double()
    error = (pruned_weights - sparsity * float(pruned_weights[-1])).abs()
    # never the whole prefix: a rate below 1 always leaves a group (see groups_to_prune)
    error = error[: max(flat.numel(), 1)]
    n_prune = int(torch.nonzero(error == error.min()).max().item())
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep[order[:n_prune]] = False
    return keep.reshape(scores.shape)


class Scheme:
    """Base class of every sparsity scheme. See the module docstring.

    The whole interface the rest of prunekit uses is declared here, with a default for
    every optional capability, so a scheme registered from outside the package
    (:func:`prunekit.schemes.register`) needs only ``name`` and the 2-D hooks, and nothing
    above this package asks a scheme what it is (no ``isinstance``, no ``getattr``)."""

    name: str = "scheme"
    #: the scheme fixes its own rate (N:M); ``sparsity=None`` then means "the natural rate"
    natural_sparsity: float | None = None
    #: the only rate is ``natural_sparsity``: global allocation cannot hand out another
    fixed_rate: bool = False
    #: whether the scheme zeroes weights (a quantizer only moves them onto levels)
    prunes: bool = True
    #: whether it removes whole output rows (filters), so a removed row's bias goes too
    removes_rows: bool = False
    #: what hardening freezes of it: ``"support"`` (a mask), ``"levels"`` (quantization
    #: levels inside a mask, see :meth:`row_scales`) or ``"unified"`` (micro-block
    #: unification, see :meth:`states`); only the last part of a composite may be other
    #: than ``"support"``
    frozen_kind: str = "support"

    def __init__(self, **options) -> None:
        if options:
            raise ConfigError(f"scheme {self.name!r} got unknown options: {sorted(options)}")

    # ---------------------------------------------------------------- public API
    def project(self, w: Tensor, sparsity: float | None = None, *, gates: int = 1) -> Tensor:
        """Exact Euclidean projection of ``w`` onto the scheme's constraint set.

        Returns a new tensor of ``w``'s shape and dtype; ``w`` is never modified and the
        result never shares its storage.
        """
        s = self._rate(sparsity)
        self.check(w.shape, gates=gates)
        with torch.no_grad():
            parts = [
                self._project_2d(_working(g), s, g.shape).reshape(g.shape)
                for g in split_gates(w, gates)
            ]
            out = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
            if shares_storage(out, w):
                out = out.clone()
        return out.to(w.dtype)

    def mask(self, w: Tensor, sparsity: float | None = None, *, gates: int = 1) -> Tensor:
        """Boolean mask (True = kept) of the support the projection keeps."""
        s = self._rate(sparsity)
        self.check(w.shape, gates=gates)
        with torch.no_grad():
            parts = [
                self._mask_2d(_working(g), s, g.shape).reshape(g.shape)
                for g in split_gates(w, gates)
            ]
        return torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]

    def group_norms(self, w: Tensor, *, gates: int = 1) -> Tensor:
        """L2 norm of every group the scheme prunes as a unit, as one 1-D tensor.

        Differentiable in ``w``: reweighted and group-lasso methods penalise these.
        """
        self.check(w.shape, gates=gates)
        parts = [self._group_norms_2d(gemm_view(g), g.shape) for g in split_gates(w, gates)]
        return torch.cat(parts) if len(parts) > 1 else parts[0]  # cat would copy even one

    def check(self, shape: Sequence[int], *, gates: int = 1) -> None:
        """Raise :class:`TargetError` if this scheme cannot apply to a weight of ``shape``."""
        if len(shape) < 2:
            raise TargetError(
                f"scheme {self.name!r} needs a weight with >= 2 dims, got {tuple(shape)}"
            )

    # ------------------------------------------- optional capabilities (defaults)
    @property
    def parts(self) -> list[Scheme]:
        """The schemes applied in order (a composite's parts; else just this one)."""
        return [self]

    def part_rates(self, sparsity: float | None) -> list[float | None]:
        """The rate each of :attr:`parts` is asked for when this scheme is asked for
        ``sparsity``."""
        return [sparsity]

    def check_rate(self, shape: Sequence[int], sparsity: float | None, *,
                   gates: int = 1) -> None:
        """Raise if a weight of ``shape`` cannot be given the rate ``sparsity`` (costs no
        projection: resolving runs it on every target before any weight changes)."""
        self._rate(sparsity)

    def rate_of_groups(self, fraction: float) -> float:
        """The sparsity that prunes ``fraction`` of the scheme's groups (the groups of
        :meth:`group_norms`); the identity unless groups prune unevenly (pattern)."""
        return fraction

    def storage_hints(self, shape: Sequence[int]) -> dict[str, Any]:
        """Structure facts the model file uses to choose an index encoding for a weight of
        ``shape`` that this scheme constrains."""
        hints: dict[str, Any] = {"scheme": self.name}
        if len(shape) > 2:
            hints["kernel"] = math.prod(shape[2:])
        return hints

    def row_scales(self, w: Tensor, *, gates: int = 1) -> Tensor:
        """The quantization step of every GEMM row (``frozen_kind == "levels"`` only)."""
        raise NotImplementedError(f"scheme {self.name!r} has no quantization levels")

    def states(self, w: Tensor, sparsity: float) -> Tensor:
        """The micro-block assignment (``frozen_kind == "unified"`` only)."""
        raise NotImplementedError(f"scheme {self.name!r} unifies no blocks")

    # ------------------------------------------------------- subclass hooks (2-D)
    def _mask_2d(self, m: Tensor, sparsity: float, shape: torch.Size) -> Tensor:
        raise NotImplementedError

    def _project_2d(self, m: Tensor, sparsity: float, shape: torch.Size) -> Tensor:
        """Default: the projection onto a support constraint keeps the chosen entries."""
        return torch.where(self._mask_2d(m, sparsity, shape), m, 0.0)

    def _group_norms_2d(self, m: Tensor, shape: torch.Size) -> Tensor:
        raise NotImplementedError

    # ----------------------------------------------------------------- helpers
    def _rate(self, sparsity: float | None) -> float:
        if sparsity is None:
            if self.natural_sparsity is None:
                raise ConfigError(f"scheme {self.name!r} needs a sparsity in [0, 1)")
            return self.natural_sparsity
        return check_sparsity(sparsity)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
