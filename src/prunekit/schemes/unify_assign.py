"""The exact block assignment behind the ``unify`` scheme: which micro-blocks to keep,
unify and prune, with exactly the requested numbers of each, at least total error
(:func:`assign_blocks`; why it is exact is in its docstring), and how many blocks of each
size class a rate takes (:func:`class_counts`)."""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError
from .base import keep_largest

KEEP, UNIFY, PRUNE = 0, 1, 2


# --------------------------------------------------------------------- assignment
#: sets of at most this many blocks are solved by the cut sweep directly
_BASE = 2048
#: blocks per sample when estimating prices
_SAMPLE = 8192
#: blocks of the coarser sample that brackets the prices of the first sample
_COARSE = 1024
#: width of a price box, in standard deviations of the sample's rank error
_WIDTH = 4.0
#: most widenings of a price bracket (each quadruples it: 2^1200 spans every double)
_WIDEN = 600


def _smallest_sums(values: np.ndarray, k: int) -> np.ndarray:
    """``out[j]`` = sum of the ``k`` smallest of ``values[:j]`` for ``j = 0..n``
    (``inf`` where ``j < k``), by one sweep with a max-heap of the current ``k`` smallest."""
    n = values.size
    if k == 0:
        return np.zeros(n + 1)
    if k > n:
        return np.full(n + 1, np.inf)
    items = values.tolist()
    heap = [-v for v in items[:k]]
    heapq.heapify(heap)
    total = math.fsum(items[:k])
    sums = [total]
    for v in items[k:]:
        if v < -heap[0]:
            total += v + heapq.heapreplace(heap, -v)  # add v, drop the largest kept
        sums.append(total)
    return np.concatenate([np.full(k, np.inf), np.asarray(sums)])


def _smallest(values: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` entries of ``candidates`` (indices) with smallest ``values`` (stable)."""
    return candidates[np.argsort(values[candidates], kind="stable")[:k]]


def _select(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` smallest ``values`` (the earlier of two equal ones first)."""
    keep = keep_largest(torch.from_numpy(values), k).numpy()
    return np.flatnonzero(~keep)


def _cut_assign(p: np.ndarray, u: np.ndarray, n_prune: int, n_unify: int) -> np.ndarray:
    """The exact assignment by the best cut of the blocks sorted by ``p - u`` (see
    :func:`assign_blocks`); ``O(n log n)`` with two heap sweeps."""
    n = p.size
    state = np.full(n, KEEP, dtype=np.int8)
    if n_unify == 0 or n_prune == 0:
        state[_select(p if n_unify == 0 else u, n_prune + n_unify)] = (
            PRUNE if n_unify == 0 else UNIFY
        )
        return state
    order = np.argsort(p - u, kind="stable")
    # cost of the best split at every cut k (only n_prune <= k <= n - n_unify is feasible)
    cost = np.full(n + 1, np.inf)
    cost[: n - n_unify + 1] = _smallest_sums(p[order[: n - n_unify]], n_prune)
    tail = _smallest_sums(u[order[::-1][: n - n_prune]], n_unify)  # [t]: last t
    cost[n_prune:] += tail[::-1]
    cut = int(np.argmin(cost))
    state[_smallest(p, order[:cut], n_prune)] = PRUNE
    state[_smallest(u, order[cut:], n_unify)] = UNIFY
    return state


def _prices(
    p: np.ndarray, u: np.ndarray, d: np.ndarray, a: int, b: int,
    around: tuple[float, float] | None = None,
) -> tuple[float, float]:
    """Approximately optimal prices ``(alpha_P, alpha_U)`` of pruning and unifying.

    For a price of unifying, the best price of pruning makes exactly ``a`` blocks prefer
    pruning: the ``a``-th smallest ``max(p, d + alpha_U)``. The number of blocks that then
    prefer unifying grows with ``alpha_U``; regula falsi (Illinois) finds where it is ``b``,
    starting from the bracket ``around`` when given (widened until it brackets).
    """
    def count(alpha_u: float) -> tuple[int, float]:
        g = np.maximum(p, d + alpha_u)
        alpha_p = float(np.partition(g, a - 1)[a - 1])
        return int(np.count_nonzero(np.maximum(u, alpha_p - d) < alpha_u)) - b, alpha_p

    floor, ceiling = float(u.min()) - 1.0, float(u.max()) + float(d.max() - d.min()) + 1.0
    lo, hi = (floor, ceiling) if around is None else around
    f_lo, p_lo = count(lo)
    f_hi, p_hi = count(hi)
    # Widen until the bracket holds the crossing. The step starts positive and quadruples,
    # so a few hundred rounds span any float range; the cap makes that explicit, because
    # a zero step (a degenerate bracket) would otherwise never move.
    step = hi - lo if hi > lo else max(ceiling - floor, 1.0)
    for _ in range(_WIDEN):
        if not (f_lo > 0 and lo > floor):
            break
        step *= 4
        lo = max(lo - step, floor)
        f_lo, p_lo = count(lo)
    for _ in range(_WIDEN):
        if not (f_hi < 0 and hi < ceiling):
            break
        step *= 4
        hi = min(hi + step, ceiling)
        f_hi, p_hi = count(hi)
    best = (abs(f_lo), lo, p_lo) if abs(f_lo) <= abs(f_hi) else (abs(f_hi), hi, p_hi)
    side = 0
    for _ in range(40):
        if best[0] == 0 or f_lo >= 0 or f_hi <= 0 or not hi > lo:
            break
        x = (lo * f_hi - hi * f_lo) / (f_hi - f_lo)
        if not lo < x < hi:
            x = 0.5 * (lo + hi)
        f_x, p_x = count(x)
        if abs(f_x) < best[0]:
            best = (abs(f_x), x, p_x)
        if f_x < 0:
            lo, f_lo = x, f_x
            f_hi = f_hi / 2 if side == -1 else f_hi
            side = -1
        else:
            hi, f_hi = x, f_x
            f_lo = f_lo / 2 if side == 1 else f_lo
            side = 1
    return best[2], best[1]


def _sample(n: int, size: int) -> np.ndarray:
    """``size`` evenly spread positions out of ``n``."""
    return (np.arange(size) * (n / size)).astype(np.int64)


def _box(
    p: np.ndarray, u: np.ndarray, d: np.ndarray, a: int, b: int, width: float,
    around: tuple[float, float] | None,
) -> tuple[float, float, float, float]:
    """A box ``(P_lo, P_hi, U_lo, U_hi)`` of prices likely to hold the optimal ones,
    from the prices of a sample and the spread of its order statistics; ``around`` is a
    guess of the range of ``alpha_U`` (the last box), else a coarser sample gives one."""
    n = p.size
    if n > _SAMPLE:
        pick = _sample(n, _SAMPLE)
        p, u, d = p[pick], u[pick], d[pick]
        a = min(max(round(a * _SAMPLE / n), 1), _SAMPLE - 1)
        b = min(max(round(b * _SAMPLE / n), 1), _SAMPLE - a)
    m = p.size
    # a tiny deterministic jitter breaks ties between equal costs, which would otherwise
    # stall the search for prices (the pad below keeps the box around the unjittered ones)
    jitter = 2.0**-30 * float(p.max()) * ((np.arange(m) * 0.6180339887498949) % 1.0)
    p, u = p + jitter, u + jitter[::-1]
    d = p - u

    def band(values: np.ndarray, k: int, t: int) -> tuple[float, float]:
        i, j = max(k - 1 - t, 0), min(k - 1 + t, values.size - 1)
        part = np.partition(values, [i, j])
        return float(part[i]), float(part[j])

    def spread(k: int, size: int) -> int:
        return math.ceil(width * math.sqrt(k * (1 - k / size))) + 2

    if around is None and m > _COARSE:
        few = _sample(m, _COARSE)
        ca = min(max(round(a * _COARSE / m), 1), _COARSE - 1)
        cb = min(max(round(b * _COARSE / m), 1), _COARSE - ca)
        cp, cu, cd = p[few], u[few], d[few]
        coarse_p, _ = _prices(cp, cu, cd, ca, cb)
        around = band(np.maximum(cu, coarse_p - cd), cb, spread(cb, _COARSE))
    alpha_p, alpha_u = _prices(p, u, d, a, b, around)
    t_p, t_u = (spread(a, m), spread(b, m)) if n > _SAMPLE else (2, 2)
    p_lo, p_hi = band(np.maximum(p, d + alpha_u), a, t_p)
    u_lo, u_hi = band(np.maximum(u, alpha_p - d), b, t_u)
    # each price moves the other's order statistics by at most its own change; the pad
    # keeps a box around prices that sit exactly on many tied costs
    wp, wu = (p_hi - p_lo) / 2, (u_hi - u_lo) / 2
    pad = 1e-6 * max(abs(p_lo), abs(p_hi), abs(u_lo), abs(u_hi), 1e-300)
    return p_lo - wu - pad, p_hi + wu + pad, u_lo - wp - pad, u_hi + wp + pad


def _certified(
    p: np.ndarray, u: np.ndarray, d: np.ndarray, state: np.ndarray, a: int, b: int,
    box: tuple[float, float, float, float],
) -> bool:
    """Whether the blocks fixed by ``box`` are provably where every optimal assignment
    puts them, given the exact solution ``state`` of the remaining blocks ``p, u``."""
    p_lo, p_hi, u_lo, u_hi = box
    pruned, unified, kept = state == PRUNE, state == UNIFY, state == KEEP

    def most(x: np.ndarray, where: np.ndarray) -> float:
        return float(x[where].max()) if where.any() else -math.inf

    def least(x: np.ndarray, where: np.ndarray) -> float:
        return float(x[where].min()) if where.any() else math.inf

    # prices under which every remaining block's own state is one of its cheapest: a
    # range for each price and for their difference
    price_p = (most(p, pruned), least(p, kept))
    price_u = (most(u, unified), least(u, kept))
    price_d = (most(d, pruned), least(d, unified))  # of alpha_P - alpha_U

    def inside(t: float) -> tuple[tuple[float, float], ...] | None:
        """Those prices at least ``t`` inside the box, if any."""
        rp = (max(price_p[0], p_lo + t), min(price_p[1], p_hi - t))
        ru = (max(price_u[0], u_lo + t), min(price_u[1], u_hi - t))
        rd = (max(price_d[0], rp[0] - ru[1]), min(price_d[1], rp[1] - ru[0]))
        return (rp, ru, rd) if rp[0] <= rp[1] and ru[0] <= ru[1] and rd[0] <= rd[1] else None

    found = inside(0.0)
    if found is None:
        return False
    low, high = 0.0, min(p_hi - p_lo, u_hi - u_lo) / 2
    for _ in range(60):  # the deepest such prices, by bisection on the depth
        depth = (low + high) / 2
        deeper = inside(depth)
        low, high, found = (depth, high, deeper) if deeper else (low, depth, found)
    rp, ru, rd = found
    difference = (rd[0] + rd[1]) / 2
    alpha_p = (max(rp[0], ru[0] + difference) + min(rp[1], ru[1] + difference)) / 2
    alpha_u = alpha_p - difference
    margin = min(alpha_p - p_lo, p_hi - alpha_p, alpha_u - u_lo, u_hi - alpha_u)
    cost = math.fsum(p[pruned]) + math.fsum(u[unified])
    dual = math.fsum(np.minimum(0.0, np.minimum(u - alpha_u, p - alpha_p)))
    dual += a * alpha_p + b * alpha_u
    # rounding: a few units in the last place per term of the sums, and in each comparison
    scale = max(abs(alpha_p), abs(alpha_u), float(p.max(initial=0.0)), 1e-300)
    tolerance = 1e-14 * scale * (p.size + a + b + 1)
    return cost - dual + tolerance < margin - 1e-12 * scale


def _reduced_assign(
    p: np.ndarray, u: np.ndarray, n_prune: int, n_unify: int, width: float
) -> np.ndarray | None:
    """The exact assignment, found by fixing most blocks with prices; ``None`` when the
    result cannot be certified (then the caller solves the whole problem).

    Why it is exact. With prices ``alpha = (alpha_P, alpha_U)`` (0 for keeping), the
    *reduced cost* of a block in a state is its cost minus the state's price minus the
    block's cheapest such value; it is >= 0, and for every assignment with the right
    counts, total cost = ``D(alpha)`` + the sum of its reduced costs, where ``D`` is the
    LP dual objective. A block that, for every price in a box, strictly prefers one state
    is *fixed*: its other states have reduced cost at least the distance of ``alpha`` to the
    box's edge. Solve the remaining blocks exactly (with the counts left over); if that
    solution admits prices ``alpha`` in the box (its blocks all in a cheapest state) whose
    duality gap ``cost - D(alpha)`` is below that distance, no optimal assignment can put a
    fixed block elsewhere, so fixed blocks plus the exact rest is optimal.
    """
    state = np.full(p.size, KEEP, dtype=np.int8)
    where = np.arange(p.size)
    d = p - u
    a, b = n_prune, n_unify
    box = (-math.inf, math.inf, -math.inf, math.inf)
    while p.size > _BASE and a > 0 and b > 0:
        around = None if box[2] == -math.inf else (box[2], box[3])
        p_lo, p_hi, u_lo, u_hi = _box(p, u, d, a, b, width, around)
        box = (max(box[0], p_lo), min(box[1], p_hi), max(box[2], u_lo), min(box[3], u_hi))
        if not (box[0] < box[1] and box[2] < box[3]):
            return None
        p_lo, p_hi, u_lo, u_hi = box
        to_prune = (p < p_lo) & (d < p_lo - u_hi)
        to_unify = (u < u_lo) & (d > p_hi - u_lo)
        to_keep = (p > p_hi) & (u > u_hi)
        rest = np.flatnonzero(~(to_prune | to_unify | to_keep))
        pruned, unified = int(np.count_nonzero(to_prune)), int(np.count_nonzero(to_unify))
        if pruned > a or unified > b or (a - pruned) + (b - unified) > rest.size:
            return None
        state[where[to_prune]] = PRUNE
        state[where[to_unify]] = UNIFY
        shrunk = rest.size < 0.7 * p.size
        where, p, u, d = where[rest], p[rest], u[rest], d[rest]
        a, b = a - pruned, b - unified
        if not shrunk:
            break
    sub = _cut_assign(p, u, a, b)
    if box[0] > -math.inf and not _certified(p, u, d, sub, a, b, box):
        return None
    state[where] = sub
    return state


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
    Both running sums over all cuts come from one heap sweep each: ``O(n log n)``, but a
    step of Python per block. Large problems first fix most blocks by prices (LP duality,
    see :func:`_reduced_assign`) and sweep only the rest; all-zero blocks cost nothing in
    any state and go to pruning, then unifying, first (any other block there could swap
    with them at no gain).
    """
    p = prune_cost.detach().double().cpu().reshape(-1).numpy()
    u = unify_cost.detach().double().cpu().reshape(-1).numpy()
    return torch.from_numpy(_assign_costs(p, u, n_prune, n_unify))


def _assign_costs(p: np.ndarray, u: np.ndarray, n_prune: int, n_unify: int) -> np.ndarray:
    """:func:`assign_blocks` on float64 arrays; returns the states as an int8 array."""
    u = np.minimum(np.maximum(u, 0.0), p)
    n = p.size
    if n_prune < 0 or n_unify < 0 or n_prune + n_unify > n:
        raise ConfigError(
            f"cannot prune {n_prune} and unify {n_unify} of {n} blocks"
        )
    state = np.full(n, KEEP, dtype=np.int8)
    zero = np.flatnonzero(p == 0)
    first = min(zero.size, n_prune)
    second = min(zero.size - first, n_unify)
    state[zero[:first]] = PRUNE
    state[zero[first : first + second]] = UNIFY
    rest = np.flatnonzero(p != 0) if zero.size else slice(None)
    a, b = n_prune - first, n_unify - second
    if a + b > 0:
        if zero.size:
            p, u = p[rest], u[rest]
        sub = None
        if a > 0 and b > 0 and p.size > _BASE:
            sub = _reduced_assign(p, u, a, b, _WIDTH)
            if sub is None:
                sub = _reduced_assign(p, u, a, b, 4 * _WIDTH)
        state[rest] = _cut_assign(p, u, a, b) if sub is None else sub
    return state


# ------------------------------------------------------------------- class counts
def class_counts(classes: Sequence[int], sizes: Sequence[float], rate: float) -> list[int]:
    """Blocks to take from each size class (``classes[k]`` blocks of ``sizes[k]`` weights)
    for ``rate`` of all weights: every class rounds ``rate * classes[k]`` down or up, and of
    those choices the one whose weight total is nearest ``rate * sum(classes * sizes)`` wins
    (on a tie, the larger total, as :func:`count_to_prune` rounds half up). Moving from "all
    down" to "all up" one class at a time changes the total by one block per step, so the
    best choice is within half a block (of the largest size) of the request."""
    exact = [rate * n for n in classes]
    low = [min(n, math.floor(x)) for n, x in zip(classes, exact, strict=True)]
    target = math.fsum(x * z for x, z in zip(exact, sizes, strict=True))
    scale = 1e-9 * max(1.0, math.fsum(n * z for n, z in zip(classes, sizes, strict=True)))
    best: tuple[float, float] | None = None
    chosen = low
    for up in itertools.product((0, 1), repeat=len(classes)):
        counts = [min(n, lo + u) for n, lo, u in zip(classes, low, up, strict=True)]
        total = math.fsum(c * z for c, z in zip(counts, sizes, strict=True))
        key = (round(abs(total - target) / scale), -total)
        if best is None or key < best:
            best, chosen = key, counts
    return chosen


def _keep_one_block(n_prune: list[int], classes: Sequence[int]) -> list[int]:
    """``n_prune`` with one block of the largest class kept when it would prune them all."""
    if sum(n_prune) < sum(classes) or not classes:
        return n_prune
    largest = max(range(len(classes)), key=lambda k: classes[k])
    return [c - (k == largest) for k, c in enumerate(n_prune)]
