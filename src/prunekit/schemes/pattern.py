"""Pattern sparsity with connectivity pruning (PatDNN) for 3x3 convolution kernels.

Every 3x3 kernel keeps the weights of one *pattern*: a 3x3 0/1 mask with ``entries`` ones
(4 by default) taken from a small *library* of ``patterns`` masks (8 by default), and
*connectivity pruning* then removes whole kernels. Because every kernel of a layer uses a
pattern from the same short list, a compiler can generate one dense inner loop per pattern,
and the pattern id costs a few bits per kernel instead of an index per weight.

The library. Given as ``library=`` it is fixed. Otherwise it is chosen from the layer's own
weights: for every nonzero kernel take its *top shape*, the positions of its ``entries``
largest |w| (ties: the earlier position wins), and keep the ``patterns`` most frequent top
shapes (ties in frequency: the shape with the smaller 9-bit code, bit ``i`` = position
``i`` in row-major order, wins). When fewer distinct shapes occur the library is just those,
and then every kernel already matches its own best shape.

The projection, exact *given the library*. The constraint set is: every kernel's support
lies inside one library pattern, and at most ``N - r`` of the ``N`` kernels are nonzero.
A kernel projected onto a pattern loses the energy (sum of squares) outside it, so each
kernel takes the pattern that keeps the most energy (ties: the earlier library entry), and
the ``r`` kernels whose best kept energy is smallest are removed (ties: the earlier kernel
goes first). The library itself is a data-dependent choice, not part of the optimisation.

Rates. Patterns alone give sparsity ``1 - entries/9`` (``natural_sparsity``, used when the
sparsity is left unset); a request below that is an error. A request ``s`` above it removes
``r = count_to_prune(N, (s - p0) / (1 - p0))`` kernels with ``p0 = 1 - entries/9``: the
nearest whole kernel, so the achieved sparsity is within half a kernel of ``s`` (more if the
kept patterns hold zeros of their own). A rate below 1 always keeps at least one kernel.
:meth:`Pattern.check_rate` says whether a rate fits before anything is projected, and
:meth:`Pattern.rate_of_groups` maps a fraction of kernels removed to the weight sparsity it
gives, so global allocation can rank kernels (its groups) and hand out rates this scheme
can meet.

Speed: everything is a handful of whole-tensor operations on the ``[9, N]`` table of
kernel magnitudes (pairwise rank counting for top shapes, ``bincount`` of 9-bit codes, one
``[K, 9] @ [9, N]`` product for the best pattern), with no per-kernel Python loop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..errors import ConfigError, TargetError
from .base import Scheme, groups_to_prune, keep_largest

KERNEL = 9  # weights in a 3x3 kernel
_BIT_VALUES = torch.tensor([1 << i for i in range(KERNEL)], dtype=torch.int64)


def _positive_int(value: object, what: str, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} must be a positive integer, got {value!r}")
    if high is not None and value > high:
        raise ConfigError(f"{what} must be at most {high}, got {value}")
    return value


def codes_to_masks(codes: Tensor) -> Tensor:
    """``[K]`` 9-bit codes -> ``[K, 9]`` boolean masks (bit ``i`` = position ``i``)."""
    return (codes.reshape(-1, 1) & _BIT_VALUES.to(codes.device)) != 0


def masks_to_codes(masks: Tensor) -> Tensor:
    """``[K, 9]`` boolean masks -> ``[K]`` 9-bit codes."""
    return (masks.long() * _BIT_VALUES.to(masks.device)).sum(dim=1)


def top_shapes(mags: Tensor, entries: int) -> Tensor:
    """9-bit code of the ``entries`` largest magnitudes of every kernel.

    ``mags`` is ``[9, N]`` (one column per kernel). A position's rank is the number of
    positions that beat it, where position ``i`` beats a later ``j`` when
    ``mags[i] >= mags[j]``: ties go to the earlier position, so the result is deterministic.
    Counting over the 36 pairs is cheaper than sorting a million tiny rows.
    """
    rank = torch.zeros(mags.shape, dtype=torch.int8, device=mags.device)
    for i in range(KERNEL):
        for j in range(i + 1, KERNEL):
            earlier_wins = mags[i] >= mags[j]
            rank[j] += earlier_wins
            rank[i] += ~earlier_wins
    top = rank < entries
    codes = torch.zeros(mags.shape[1], dtype=torch.int64, device=mags.device)
    for i in range(KERNEL):
        codes += top[i].long() << i
    return codes


def most_frequent(codes: Tensor, k: int) -> Tensor:
    """The ``k`` most frequent codes (ties: the smaller code), only codes that occur."""
    counts = torch.bincount(codes, minlength=1 << KERNEL)
    order = torch.argsort(-counts, stable=True)[:k]
    return order[counts[order] > 0]


def _parse_library(library: object, entries: int | None) -> tuple[Tensor, int]:
    """A fixed library as ``[K, 9]`` booleans, and the common number of ones."""
    try:
        masks = torch.as_tensor(library, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError(f"library must be a list of 3x3 0/1 masks, got {library!r}") from None
    if masks.dim() != 3 or masks.shape[1:] != (3, 3) or masks.shape[0] == 0:
        raise ConfigError(
            f"library must be a non-empty list of 3x3 0/1 masks, got shape {tuple(masks.shape)}"
        )
    if not bool(((masks == 0) | (masks == 1)).all()):
        raise ConfigError("library masks must hold only 0 and 1")
    flat = masks.reshape(-1, KERNEL).bool()
    ones = flat.sum(dim=1).tolist()
    want = ones[0] if entries is None else entries
    for i, n in enumerate(ones):
        if n != want:
            raise ConfigError(f"library pattern {i} has {n} ones, expected entries={want}")
    codes = masks_to_codes(flat).tolist()
    if len(set(codes)) != len(codes):
        raise ConfigError("library holds the same pattern twice")
    _positive_int(want, "entries", KERNEL)
    return flat, want


class Pattern(Scheme):
    """PatDNN kernel patterns plus connectivity pruning. See the module docstring."""

    name = "pattern"

    def __init__(
        self,
        *,
        patterns: int | None = None,
        entries: int | None = None,
        library: Sequence | Tensor | None = None,
        **options,
    ) -> None:
        super().__init__(**options)
        self.library: Tensor | None = None
        if library is not None:
            self.library, self.entries = _parse_library(library, entries)
            n = self.library.shape[0]
            if patterns is not None and patterns != n:
                raise ConfigError(f"patterns={patterns!r} but the library holds {n} patterns")
            self.patterns = n
        else:
            self.entries = _positive_int(4 if entries is None else entries, "entries", KERNEL)
            # at most C(9, entries) distinct shapes exist; a larger K is simply all of them
            self.patterns = min(
                _positive_int(8 if patterns is None else patterns, "patterns"),
                math.comb(KERNEL, self.entries),
            )
        self.natural_sparsity = 1.0 - self.entries / KERNEL

    # ------------------------------------------------------------------ public
    def check(self, shape: Sequence[int], *, gates: int = 1) -> None:
        if len(shape) != 4 or tuple(shape[2:]) != (3, 3):
            raise TargetError(
                f"scheme 'pattern' needs a 3x3 conv weight [out, in, 3, 3], got shape "
                f"{tuple(shape)}"
            )

    def check_rate(self, shape: Sequence[int], sparsity: float | None, *, gates: int = 1) -> None:
        """Raise if this scheme cannot give a weight of ``shape`` the rate ``sparsity``: it
        must be a 3x3 conv and the rate at least the patterns' own ``1 - entries/9``."""
        self.check(shape, gates=gates)
        if sparsity is not None:
            self._min_rate(sparsity)

    def rate_of_groups(self, fraction: float) -> float:
        """Sparsity of a layer whose kernels keep their patterns and ``fraction`` of them are
        removed by connectivity pruning (``fraction = k / N`` gives exactly ``k`` kernels)."""
        p0 = self.natural_sparsity
        return p0 + (1.0 - p0) * fraction

    def library_for(self, w: Tensor) -> Tensor:
        """The library used for conv weight ``w``, as ``[K, 3, 3]`` booleans."""
        self.check(w.shape)
        with torch.no_grad():
            mags = w.detach().float().reshape(-1, KERNEL).abs().t()
            return self._library(mags).reshape(-1, 3, 3)

    # ------------------------------------------------------------------- maths
    def _library(self, mags: Tensor) -> Tensor:
        """``[K, 9]`` boolean library for kernels ``mags`` (``[9, N]`` magnitudes)."""
        if self.library is not None:
            return self.library.to(mags.device)
        nonzero = (mags != 0).any(dim=0)
        codes = most_frequent(top_shapes(mags, self.entries)[nonzero], self.patterns)
        if codes.numel() == 0:  # an all-zero layer: any pattern projects it to zero
            codes = torch.tensor([(1 << self.entries) - 1], device=mags.device)
        return codes_to_masks(codes)

    def _min_rate(self, sparsity: float) -> float:
        """Fraction of kernels connectivity pruning must remove for ``sparsity``."""
        p0 = self.natural_sparsity
        if sparsity < p0 - 1e-6:
            raise ConfigError(
                f"pattern with entries={self.entries} keeps {self.entries} of 9 weights per "
                f"kernel, so its sparsity is at least {p0:.4f} (1 - {self.entries}/9); "
                f"got {sparsity:g}"
            )
        return 0.0 if p0 >= 1.0 else min(1.0, max(0.0, (sparsity - p0) / (1.0 - p0)))

    def _mask_2d(self, m: Tensor, sparsity: float, shape: torch.Size) -> Tensor:
        removed_fraction = self._min_rate(sparsity)
        mags = m.reshape(-1, KERNEL).abs().t().contiguous()  # [9, N]
        lib = self._library(mags)
        kept_energy, best = (lib.to(mags.dtype) @ (mags * mags)).max(dim=0)
        keep = keep_largest(kept_energy, groups_to_prune(best.numel(), removed_fraction))
        return (lib[best] & keep[:, None]).reshape(m.shape)

    def _group_norms_2d(self, m: Tensor, shape: torch.Size) -> Tensor:
        """One L2 norm per kernel: connectivity pruning removes kernels as units."""
        return torch.linalg.vector_norm(m.reshape(-1, KERNEL), dim=1)

    def __repr__(self) -> str:
        fixed = ", library=fixed" if self.library is not None else ""
        return f"Pattern(patterns={self.patterns}, entries={self.entries}{fixed})"
