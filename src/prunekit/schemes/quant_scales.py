"""The least-squares quantization step: the exact solver behind the ``quant`` scheme.

The constraint set for one GEMM matrix (one RNN gate) is: every weight lies on the levels
``{0, ±s, ±2s, ..., ±L s}`` with ``L = 2^(b-1) - 1``, for one step ``s > 0`` shared by the
matrix. For a fixed ``s`` the nearest point rounds each weight to its nearest level (clamped
at ``±L s``); the step ``s`` is the one of least squared error, found by
:func:`best_scale`. The projection is the exact Euclidean projection onto the set (up to
rounding the step to ``25 - b`` significant bits, see :func:`best_scale`).

The error is a quadratic in ``s`` between consecutive *breakpoints* ``|w| / (q + 1/2)``
where a weight changes level, so sweeping the breakpoints of an interval of steps in order
and minimising each quadratic in closed form gives the least error over that interval
(:func:`_sweep`). Which interval is swept depends on the size of the matrix:

- small matrices (at most ``EXACT_BUDGET`` breakpoints, ``L`` per weight): every
  breakpoint, i.e. all steps that can be best;
- larger ones: a *window* of steps proven to hold the global minimum, found without
  sorting the weights. A histogram of ``|w|`` gives, for any interval of steps, a lower
  bound on the error anywhere inside it and, for any step, an upper bound on its error,
  each from prefix sums in ``O(L)``; branch and bound over intervals of steps keeps only
  those whose lower bound is within the tie tolerance of the best upper bound
  (:class:`_Histogram`). The weights whose level is the same at every step of that window
  enter through two sums; the others (a few percent) are gathered, and their breakpoints,
  binned by step, give the exact error at every bin edge and a tight lower bound inside
  each bin, which narrows the window again (:func:`_refine`) before the final sweep.

Both ways give the global least-squares step over all ``s > 0``. Large matrices take a
handful of single-threaded passes over the weights (numpy), which also keeps the cost
steady on a machine whose cores are busy with other work.

Power-of-two levels (:func:`_pow2_scale`) and per-row steps (:func:`fit_scales`) use the
same sweep.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from ..errors import PrunekitError
from .levels import magnitudes, max_level

EXACT_BUDGET = 1 << 16
_TIE = 1e-10  # errors this close (relative to the energy) count as equal
_MARGIN = 4 * _TIE  # bounds discard only what is this far (relative to energy) above the best
_HALF_BINS = 1 << 15  # histogram bins of |w|, per sign
_BIN_SLACK = 1.0 / 32  # how far (in bins) float32 maths may place a value from its true bin
_SPLIT = 16  # branch and bound: parts per split interval ...
_FINEST = 2.0**-12  # ... down to this relative width
_MAX_INTERVALS = 4096
_REFINE_BINS = 1 << 14  # bins of breakpoints when narrowing a window
_WIDEN = 2.0**-12  # the window is widened by this (relative) so both rounded steps lie inside
#: per-channel steps sweep every breakpoint of a row up to this many
_ROW_BUDGET = 1 << 20
#: power-of-two steps sweep every breakpoint of a matrix up to this many
_POW2_EVENTS = 1 << 23


def _dot(x: np.ndarray, y: np.ndarray) -> float:
    """``sum x y`` in one single-threaded pass (no BLAS threads)."""
    return float(np.einsum("i,i->", x, y))


# ------------------------------------------------------------------------ the sweep
def _events(
    a: np.ndarray, q_hi: np.ndarray, q_lo: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every level breakpoint of magnitudes ``a`` between levels ``q_hi`` and ``q_lo``:
    the step ``t = a / (q + 1/2)`` below which that weight moves from level ``q`` to
    ``q + 1``, with the changes of ``sum |w| q`` (``a``) and ``sum q^2`` (``2q + 1``)."""
    per_weight = q_lo - q_hi
    if per_weight.size and per_weight.max() <= 1:
        one = per_weight == 1
        values, q = a[one], q_hi[one]
    else:
        owner = np.repeat(np.arange(a.size), per_weight)
        first = np.cumsum(per_weight) - per_weight
        q = q_hi[owner] + np.arange(owner.size) - first[owner]
        values = a[owner]
    return values / (q + 0.5), values, (2 * q + 1).astype(np.float64)


def _sweep(
    t: np.ndarray, da: np.ndarray, dq: np.ndarray, lo: float, hi: float,
    dot0: float, sq0: float, energy: float,
) -> float:
    """Least-squares step over ``[lo, hi]`` from its level breakpoints.

    ``t`` are the breakpoints inside the interval, ``da`` / ``dq`` how much ``sum |w| q`` and
    ``sum q^2`` grow when a weight crosses one downwards (see :func:`_events`); ``dot0`` and
    ``sq0`` are those sums over *all* weights at ``hi``, and ``energy`` is ``sum w^2``.
    Between consecutive breakpoints the error ``energy - 2 s dot + s^2 sq`` is a quadratic
    in ``s``, minimised in closed form.
    """
    order = np.argsort(-t, kind="stable")
    t = np.clip(t[order], lo, hi)
    dot = dot0 + np.concatenate([[0.0], np.cumsum(da[order])])
    sq = sq0 + np.concatenate([[0.0], np.cumsum(dq[order])])
    upper = np.concatenate([[hi], t])
    lower = np.concatenate([t, [lo]])
    best = np.minimum(np.maximum(dot / np.maximum(sq, 1.0), lower), upper)
    s = np.where(sq > 0, best, upper)
    err = energy - 2 * s * dot + s * s * sq
    # among (numerically) tied minima take the largest step: on weights already on a grid
    # of levels that is the grid's own step, which keeps the projection idempotent
    ties = np.flatnonzero(err <= err.min() + _TIE * energy)
    return float(s[ties[0]])


def _representable(s: float, bits: int) -> list[float]:
    """The two steps next to ``s`` with ``25 - bits`` significant bits, so that every
    level ``q s`` (``|q| < 2^(bits-1)``) is exact in float32."""
    mantissa, exponent = math.frexp(s)
    keep = 25 - bits
    x = mantissa * (1 << keep)
    return [math.ldexp(math.floor(x), exponent - keep), math.ldexp(math.ceil(x), exponent - keep)]


def _round(x: np.ndarray, s: float, top: int) -> np.ndarray:
    """Nearest level index of each ``x`` for step ``s`` (float64 maths, ties to even)."""
    return np.clip(np.rint(x.astype(np.float64) / s), -top, top)


def _error(a: np.ndarray, s: float, top: int) -> float:
    """Squared error of rounding magnitudes ``a`` (float64) to the levels of step ``s``."""
    r = a - s * _round(a, s, top)
    return _dot(r, r)


def _small_scale(x: np.ndarray, bits: int) -> float:
    """Step by a sweep over every breakpoint between ``min|w| / (L + 1/2)`` and
    ``2 max|w|``: below the first every weight clamps at ``L s``, where the error still
    falls as ``s`` grows; above the second every weight rounds to 0 (the worst error)."""
    a = np.abs(x.astype(np.float64))
    a = a[a > 0]
    top = max_level(bits)
    lo, hi = float(a.min()) / (top + 0.5), 2.0 * float(a.max())
    q_hi = np.clip(np.floor(a / hi + 0.5), 0, top).astype(np.int64)
    s = _sweep(
        *_events(a, q_hi, np.full_like(q_hi, top)), lo, hi,
        _dot(a, q_hi.astype(np.float64)), float((q_hi * q_hi).sum()), _dot(a, a),
    )
    return min(_representable(s, bits), key=lambda c: _error(a, c, top))


# -------------------------------------------------------------- the proven window
class _Histogram:
    """Bounds on the quantisation error from a histogram of ``|w|``.

    Bin ``b`` nominally holds ``|w|`` in ``[b, b+1) * width``; bins are computed in the
    input's precision, so a value may sit up to ``_BIN_SLACK`` of a bin outside it. All
    bounds use the widened extents ``[b - slack, b + 1 + slack]``, so they hold for every
    value the bin may contain. Sums of ``c_b (b - alpha)^2`` over a range of bins come from
    three prefix sums, so each bound costs ``O(L)`` per step or interval of steps.
    """

    def __init__(self, counts: np.ndarray, width: float, top: int) -> None:
        b = np.arange(counts.size, dtype=np.float64)
        self.bins = counts.size
        self.top = top
        self.width = width
        self.p0 = np.concatenate([[0.0], np.cumsum(counts)])
        self.p1 = np.concatenate([[0.0], np.cumsum(counts * b)])
        self.p2 = np.concatenate([[0.0], np.cumsum(counts * b * b)])
        #: an upper bound on sum w^2
        self.energy = float((counts * (b + 1 + _BIN_SLACK) ** 2).sum()) * width**2
        #: rounding in the prefix sums, which grow like n max|w|^2
        self.rounding = 1e-13 * float(counts.sum()) * (counts.size * width) ** 2

    def _sum(self, i: np.ndarray, j: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        """``sum_{i <= b < j} c_b (b - alpha)^2`` (0 for empty ranges), elementwise."""
        i = np.clip(i, 0, self.bins).astype(np.int64)
        j = np.maximum(i, np.clip(j, 0, self.bins).astype(np.int64))
        n0 = self.p0[j] - self.p0[i]
        n1 = self.p1[j] - self.p1[i]
        n2 = self.p2[j] - self.p2[i]
        return np.maximum(n2 - 2 * alpha * n1 + alpha * alpha * n0, 0.0)

    def lower(self, s1: np.ndarray, s2: np.ndarray) -> np.ndarray:
        """A lower bound on the error at every step in ``[s1, s2]`` (arrays, ``s1 >= 0``).

        For steps in the interval the level ``q`` lies in ``[q s1, q s2]``, so a value's
        error is at least its squared distance to the union of those intervals. Between
        ``q s2`` and ``(q+1) s1`` (when they do not overlap) that distance rises from one
        end and falls to the other; a bin wholly inside such a gap contributes at least the
        distance of its nearer extent; the last level's interval is followed by a gap to
        infinity. Bins touching an interval contribute 0.
        """
        eps, top = _BIN_SLACK, self.top
        q = np.arange(top, dtype=np.float64)
        u = (q * s2[:, None]) / self.width
        v = ((q + 1) * s1[:, None]) / self.width
        first = np.ceil(u + eps)  # first bin wholly above q s2
        stop = np.where(u < v, np.floor(v - 1 - eps) + 1, 0)  # bins wholly below (q+1) s1
        mid = np.floor((u + v) / 2 - 0.5) + 1  # first bin whose centre is past the midpoint
        rising = self._sum(first, np.minimum(mid, stop), u + eps)
        falling = self._sum(np.maximum(mid, first), stop, v - 1 - eps)
        end = top * s2 / self.width
        tail = self._sum(np.ceil(end + eps), np.full_like(end, self.bins), end + eps)
        return (rising.sum(axis=1) + falling.sum(axis=1) + tail) * self.width**2

    def upper(self, s: np.ndarray) -> np.ndarray:
        """An upper bound on the error at every step in ``s`` (array, ``s > 0``).

        Each bin is charged by the position of its centre: between level ``q`` and the
        midpoint above it, the distance to ``q s`` from its upper extent; between the
        midpoint and level ``q + 1``, the distance to ``(q+1) s`` from its lower extent;
        past ``L s``, the distance to ``L s`` from its upper extent. A value's error is at
        most its distance to any level, so each charge bounds every value in the bin.
        """
        eps, top = _BIN_SLACK, self.top
        q = np.arange(top, dtype=np.float64)
        r = s[:, None] / self.width
        start = np.ceil(q * r - 0.5)  # first bin whose centre is at or past level q
        mid = np.ceil((q + 0.5) * r - 0.5)
        stop = np.ceil((q + 1) * r - 0.5)
        rising = self._sum(start, mid, q * r - 1 - eps)
        falling = self._sum(mid, stop, (q + 1) * r + eps)
        end = top * s / self.width
        tail = self._sum(np.ceil(end - 0.5), np.full_like(end, self.bins), end - 1 - eps)
        return (rising.sum(axis=1) + falling.sum(axis=1) + tail) * self.width**2

    def window(self, amax: float) -> tuple[float, float]:
        """Branch and bound: an interval of steps that holds every step whose error is
        within the tie tolerance of the global minimum."""
        top = self.top
        grid = amax * 2.0 * np.geomspace(2.0**-21, 1.0, 65)
        s1 = np.concatenate([[0.0], grid[:-1]])
        s2 = grid.copy()
        best = math.inf
        margin = _MARGIN * self.energy + self.rounding
        for _ in range(40):
            lower = self.lower(s1, s2)
            mids = np.where(s1 > 0, np.sqrt(s1 * s2), s2 / 2)
            best = min(best, float(self.upper(mids).min()))
            alive = lower <= best + margin
            if not alive.any():  # only rounding could do this: keep everything
                return 0.0, 2.0 * amax
            s1, s2 = s1[alive], s2[alive]
            # narrower intervals gain little: the bounds are only as tight as a bin, and
            # the window is narrowed further by the breakpoints themselves (_refine)
            wide = (s2 > s1 * (1 + _FINEST)) & ((s2 - s1) * top > 0.5 * self.width)
            if not wide.any() or s1.size * _SPLIT > _MAX_INTERVALS:
                break
            keep1, keep2 = s1[~wide], s2[~wide]
            a, b = s1[wide], s2[wide]
            from_zero = a == 0
            a = np.where(from_zero, b * 2.0**-10, a)
            parts = np.geomspace(a, b, _SPLIT + 1, axis=1)  # [k, SPLIT + 1]
            new1, new2 = parts[:, :-1].reshape(-1), parts[:, 1:].reshape(-1)
            s1 = np.concatenate([keep1, new1, np.zeros(int(from_zero.sum()))])
            s2 = np.concatenate([keep2, new2, a[from_zero]])
        return float(s1.min()), float(s2.max())


def _refine(
    t: np.ndarray, da: np.ndarray, dq: np.ndarray, lo: float, hi: float,
    dot0: float, sq0: float, energy: float,
) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Narrow ``[lo, hi]`` around the minimum without sorting the breakpoints.

    With breakpoints binned by step, the error at a bin edge is exact from suffix sums of
    the bins above it, and inside a bin, a weight crossing its breakpoint ``t`` changes the
    error by ``(2q+1) s (s - t) >= (2q+1) s (s - top edge)``, which gives a lower bound per
    bin that is tight to a bin's width. Bins whose bound exceeds the best edge (plus the
    tie tolerance) are dropped; returns the span of the rest and the masks of breakpoints
    inside it and above it (those are crossed at every step of the span).
    """
    bins = _REFINE_BINS
    span = hi - lo
    index = np.clip(np.floor((t - lo) * (bins / span)), 0, bins - 1).astype(np.intp)
    a_bin = np.bincount(index, weights=da, minlength=bins)
    w_bin = np.bincount(index, weights=dq, minlength=bins)
    a_above = np.concatenate([np.cumsum(a_bin[::-1])[::-1], [0.0]])
    w_above = np.concatenate([np.cumsum(w_bin[::-1])[::-1], [0.0]])
    edges = lo + span * np.arange(bins + 1) / bins
    # exact error at each edge: every breakpoint in a bin at or above it is crossed
    at_edge = energy - 2 * edges * (dot0 + a_above) + edges**2 * (sq0 + w_above)
    best = float(at_edge.min())
    # inside bin j: the bins above are crossed, bin j's breakpoints bounded as above
    s_lo, s_hi = edges[:-1], edges[1:]
    lin = dot0 + a_above[1:] + 0.5 * s_hi * w_bin  # error >= energy - 2 s lin + s^2 quad
    quad = sq0 + w_above[1:] + w_bin
    s = np.clip(np.where(quad > 0, lin / np.maximum(quad, 1e-300), s_hi), s_lo, s_hi)
    lower = energy - 2 * s * lin + s * s * quad
    alive = np.flatnonzero(lower <= best + _MARGIN * energy)
    first, last = (int(alive[0]), int(alive[-1])) if alive.size else (0, bins - 1)
    inside = (index >= first) & (index <= last)
    return float(edges[first]), float(edges[last + 1]), inside, index > last


class _Window:
    """The weights sorted into "fixed level inside ``[lo, hi]``" and "changes level".

    Every weight already has a histogram bin; a bin whose (widened) extent lies between
    the level-``q`` thresholds ``(q - 1/2) hi`` and ``(q + 1/2) lo`` keeps level ``q`` at
    every step of the window. Those weights enter the sweep through ``sum |w| q`` and
    ``sum q^2``; the weights of the other bins are gathered and take part one by one.
    """

    def __init__(
        self, x: np.ndarray, bins: np.ndarray, counts: np.ndarray, width: float, top: int,
        lo: float, hi: float,
    ) -> None:
        self.x, self.top, self.lo, self.hi = x, top, lo, hi
        signed = np.arange(counts.size) - _HALF_BINS  # bin i holds x in [i, i + 1) * width
        inner = np.where(signed >= 0, signed, -signed - 1)  # its |x| bin
        # least level in the bin at hi, most at lo; nudged outwards so that rounding can
        # only make a bin look changing, never fixed
        ext_lo = np.maximum(inner - _BIN_SLACK, 0.0) * (width * (1 - 1e-12))
        ext_hi = (inner + 1 + _BIN_SLACK) * (width * (1 + 1e-12))
        level = self.levels(ext_lo, hi)
        fixed = level == self.levels(ext_hi, lo)
        self.signed_level = np.where(fixed, np.where(signed >= 0, level, -level), 0)
        self.signed_level = self.signed_level.astype(np.float64)
        x64 = x.astype(np.float64)
        self.sq_fixed = _dot(counts, self.signed_level**2)
        self.dot_fixed = _dot(x64, self.signed_level.take(bins))
        self.energy = _dot(x64, x64)
        self.bins = bins
        self.changing = np.flatnonzero((~fixed).take(bins))
        self.a = np.abs(x64[self.changing])
        self.q_hi = self.levels(self.a, hi)
        self.q_lo = self.levels(self.a, lo)

    def levels(self, a: np.ndarray, s: float) -> np.ndarray:
        """Level of magnitudes ``a`` at step ``s`` (the higher one at a midpoint)."""
        if s == 0.0:  # every nonzero weight clamps at the top level
            return np.where(a > 0, self.top, 0).astype(np.int64)
        return np.clip(np.floor(a / s + 0.5), 0, self.top).astype(np.int64)

    def best_step(self) -> float:
        """The sweep over the window, first narrowed by :func:`_refine`."""
        lo, hi = self.lo, self.hi
        dot0 = self.dot_fixed + _dot(self.a, self.q_hi.astype(np.float64))
        sq0 = self.sq_fixed + float((self.q_hi * self.q_hi).sum())
        t, da, dq = _events(self.a, self.q_hi, self.q_lo)
        if t.size > _REFINE_BINS:
            lo, hi, inside, above = _refine(t, da, dq, lo, hi, dot0, sq0, self.energy)
            dot0 += float(da[above].sum())
            sq0 += float(dq[above].sum())
            t, da, dq = t[inside], da[inside], dq[inside]
        return _sweep(t, da, dq, lo, hi, dot0, sq0, self.energy)

    def error(self, s: float) -> float:
        """Squared error at step ``s``."""
        if not self.lo < s < self.hi:
            return _error(np.abs(self.x.astype(np.float64)), s, self.top)
        q = _round(self.a, s, self.top)
        dot = self.dot_fixed + _dot(self.a, q)
        sq = self.sq_fixed + _dot(q, q)
        return self.energy - 2 * s * dot + s * s * sq

    def quantized(self, s: float) -> np.ndarray:
        """The weights rounded to the levels of a step strictly inside the window: weights
        of fixed bins take their bin's level (none of them is near a midpoint at such a
        step, so this is the nearest level), the others are rounded one by one."""
        values = (self.signed_level * s).astype(self.x.dtype)
        out = values.take(self.bins)
        changing = self.x[self.changing]
        out[self.changing] = (_round(changing, s, self.top) * s).astype(self.x.dtype)
        return out


def _bins(x: np.ndarray, amax: float) -> np.ndarray:
    """Histogram bin of every value: ``floor((x + max) / width)`` in ``x``'s precision
    (off by at most ``_BIN_SLACK`` of a bin), ``2 * _HALF_BINS + 1`` bins."""
    if max(_HALF_BINS / amax, 2 * amax) > float(np.finfo(x.dtype).max) / 4:
        x = x.astype(np.float64)  # weights so tiny or huge that float32 would overflow
    t = x + x.dtype.type(amax)
    t *= x.dtype.type(_HALF_BINS / amax)
    return t.astype(np.intp)


def _histogram(x: np.ndarray, amax: float, top: int) -> tuple[_Histogram, np.ndarray, np.ndarray]:
    """The bounds of :class:`_Histogram`, with every value's signed bin and their counts."""
    bins = _bins(x, amax)
    counts = np.bincount(bins, minlength=2 * _HALF_BINS + 1).astype(np.float64)
    folded = counts[_HALF_BINS:].copy()  # |x| bins 0.._HALF_BINS
    folded[:-1] += counts[:_HALF_BINS][::-1]
    return _Histogram(folded, amax / _HALF_BINS, top), bins, counts


def _window_search(x: np.ndarray, bits: int, amax: float) -> tuple[float, _Window]:
    top = max_level(bits)
    histogram, bins, counts = _histogram(x, amax, top)
    lo, hi = histogram.window(amax)
    widened = lo * (1 - _WIDEN), hi * (1 + _WIDEN)
    window = _Window(x, bins, counts, histogram.width, top, *widened)
    s = window.best_step()
    return min(_representable(s, bits), key=window.error), window


# -------------------------------------------------------------------------- public
def _flat(w: Tensor) -> np.ndarray:
    """The weights as a flat float32 (float64 stays float64) numpy array."""
    x = w.detach().reshape(-1)
    x = x if x.dtype == torch.float64 else x.float()
    return x.cpu().contiguous().numpy()


def _max_abs(x: np.ndarray) -> float:
    """``max |x|``; a weight with inf or NaN has no least-squares step."""
    if x.size == 0:
        return 0.0
    amax = max(-float(x.min()), float(x.max()))
    if not math.isfinite(amax):
        raise PrunekitError(f"scheme 'quant' needs finite weights, got max |w| = {amax}")
    return amax


def best_scale(w: Tensor, bits: int, *, budget: int = EXACT_BUDGET) -> float:
    """Least-squares step ``s`` for quantising ``w`` to ``bits`` (0.0 for an all-zero ``w``).

    Global over ``s > 0``: by a sweep over all level breakpoints when there are at most
    ``budget`` of them, else over a window proven to hold the minimum (see the module
    docstring). The step is then rounded to ``25 - bits`` significant bits (the better
    neighbour, a relative change below ``2^(bits-25)``) so that every level is an exact
    float32 number: quantised weights are exact integer multiples of the step, and
    projecting them again changes nothing."""
    x = _flat(w)
    amax = _max_abs(x)
    if amax == 0.0:
        return 0.0
    if x.size * max_level(bits) <= budget:
        return _small_scale(x, bits)
    return _window_search(x, bits, amax)[0]


def quantize(m: Tensor, s: float, bits: int) -> Tensor:
    """Round ``m`` to the nearest of ``{0, ±s, ..., ±L s}`` (float64 maths, ``m``'s dtype)."""
    if s == 0.0:
        return torch.zeros_like(m)
    top = max_level(bits)
    q = torch.round(m.double() / s).clamp(-top, top)
    return (q * s).to(m.dtype)


def _project(m: Tensor, bits: int) -> Tensor:
    """``quantize(m, best_scale(m, bits), bits)``, reusing the window's pass for large
    matrices instead of rounding every weight again."""
    x = _flat(m)
    amax = _max_abs(x)
    if amax == 0.0 or x.size * max_level(bits) <= EXACT_BUDGET:
        return quantize(m, best_scale(m, bits), bits)
    s, window = _window_search(x, bits, amax)
    if not window.lo < s < window.hi:  # the minimum always lies well inside its window
        return quantize(m, s, bits)
    return torch.from_numpy(window.quantized(s)).reshape(m.shape).to(m.device, m.dtype)


def _pow2_scale(x: np.ndarray, bits: int) -> float:
    """Least-squares step for power-of-two levels ``{0, ±s, ±2s, ..., ±2^(L-1) s}``.

    Between breakpoints (where a weight changes level) the error is a quadratic in ``s``, as
    for uniform levels, so the sweep of :func:`_sweep` over the breakpoints of an interval
    gives its least error exactly. The interval: above ``1.5 max|w| / 2^(L-1)`` no weight
    reaches the top level, and halving the step maps the level set onto itself minus that
    unused level, so such a step is never better; below ``min|w| / 2^(L-1)`` every weight
    clamps at the top level and the error only falls as ``s`` grows. Between the two the
    sweep is exact (global). A layer whose magnitudes span so many octaves that the
    breakpoints exceed ``_POW2_EVENTS`` sweeps only the two octaves below the upper end."""
    a = np.abs(x.astype(np.float64))
    a = a[a > 0]
    mags = magnitudes(bits, "pow2").numpy()
    top = float(mags[-1])
    hi = 1.5 * float(a.max()) / top
    lo = float(a.min()) / top
    octaves = min(mags.size - 1, math.log2(max(hi / lo, 1.0)) + 2)
    if a.size * octaves > _POW2_EVENTS:
        lo = hi / 6.0
    mids = (mags[:-1] + mags[1:]) / 2
    level_hi = np.searchsorted(mids, a / hi, side="right")
    ts, das, dqs = [], [], []
    for j in range(mags.size - 1):  # weight crosses from level j to j+1 at s = a / mids[j]
        t = a / mids[j]
        inside = (t >= lo) & (t <= hi)
        ts.append(t[inside])
        das.append(a[inside] * (mags[j + 1] - mags[j]))
        dqs.append(np.full(int(inside.sum()), mags[j + 1] ** 2 - mags[j] ** 2))
    c_hi = mags[level_hi]
    s = _sweep(np.concatenate(ts), np.concatenate(das), np.concatenate(dqs), lo, hi,
               _dot(a, c_hi), _dot(c_hi, c_hi), _dot(a, a))
    return float(np.float32(s))



def fit_scales(m: Tensor, bits: int, level_set: str = "uniform", per: str = "layer") -> Tensor:
    """Least-squares step of the 2-D ``m`` (one value, repeated per row) or of every row
    (``per="channel"``), as a float64 ``[rows]`` tensor; an all-zero row or matrix gets 0."""
    def step(x: Tensor, budget: int) -> float:
        flat = _flat(x)
        if _max_abs(flat) == 0.0:
            return 0.0
        if level_set == "pow2":
            return _pow2_scale(flat, bits)
        return best_scale(x, bits, budget=budget)

    if per == "channel":  # rows are short: the full sweep beats the window's fixed cost
        return torch.tensor([step(row, _ROW_BUDGET) for row in m], dtype=torch.float64)
    return torch.full((m.shape[0],), step(m, EXACT_BUDGET), dtype=torch.float64)

