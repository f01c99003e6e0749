"""Choose an implementation by measuring it on this machine, once per shape.

Which kernel wins depends on the shape, the sparsity, its structure, the batch and the
thread count (torch CSR needs about 90% zeros; a gathered block kernel wins from about
50%; at batch 64 dense MKL is hard to beat below 75%), so nothing is decided by rule: every
candidate runs on an input of the layer's real shape, the fastest wins, and dense stays
whenever no sparse candidate is faster. Candidates are compared by their *fastest* call,
not the median: on a busy machine a call that lost its core for a scheduler slice takes
milliseconds longer, and that says nothing about the kernel. The candidates are timed in
alternating rounds (one call of each per round), so a burst of load from another process
falls on all of them rather than on whichever was being timed. Results are cached per
(layer kind, weight shape, nonzeros, input shape, band layout, threads, candidates), so
compiling several models with the same layers measures each once.

Each candidate's *spread* is recorded too: how far its median round lies above its fastest
(relative). A sparse kernel replaces dense only when its fastest call beats dense's by
more than the larger of the two spreads (and at least :data:`MARGIN`): a win smaller than
the noise of the rounds is no win, and the same model compiled again makes the same
choice. The clock is injectable (``timer``) so that rule is tested on fixed times.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

#: timed calls per candidate (after warm-up)
REPEATS = 7
WARMUP = 2
#: cheap candidates get more rounds, up to this much timing in all (more chances at a quiet
#: slice for sub-millisecond calls, at a bounded cost to compile)
ROUND_BUDGET_S = 0.1
MAX_ROUNDS = 50
#: a sparse candidate must beat dense by this factor to replace it (noise margin)
MARGIN = 1.05

_CACHE: dict[tuple, tuple[str, dict[str, float], dict[str, float]]] = {}


def times_ms(fn: Callable[[], Any], repeats: int = REPEATS, warmup: int = WARMUP) -> list[float]:
    """Sorted wall times of ``repeats`` calls of ``fn()`` in milliseconds, after warm-up."""
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - start))
    return sorted(times)


def median_ms(fn: Callable[[], Any], repeats: int = REPEATS, warmup: int = WARMUP) -> float:
    """Median wall time of ``fn()`` in milliseconds."""
    times = times_ms(fn, repeats, warmup)
    return times[len(times) // 2]


#: ``timer(name, fn) -> ms``: one timed call of candidate ``name``
Timer = Callable[[str, Callable[[], Any]], float]


def wall_ms(name: str, fn: Callable[[], Any]) -> float:
    """The default :data:`Timer`: the wall time of one call of ``fn()``."""
    start = time.perf_counter()
    fn()
    return 1e3 * (time.perf_counter() - start)


def rounds_ms(fns: Mapping[str, Callable[[], Any]], rounds: int = REPEATS,
              warmup: int = WARMUP, timer: Timer | None = None) -> dict[str, list[float]]:
    """Every round's time of each of ``fns`` in milliseconds: at least ``rounds``
    alternating rounds (one call of each per round, ABAB...) after warm-up, more while they
    stay within ``ROUND_BUDGET_S`` in all (wall clock; an injected ``timer`` gets exactly
    ``rounds``)."""
    clock = timer or wall_ms
    times: dict[str, list[float]] = {name: [] for name in fns}
    with torch.no_grad():
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        done, started = 0, time.perf_counter()
        while done < rounds or (timer is None and done < MAX_ROUNDS
                                and time.perf_counter() - started < ROUND_BUDGET_S):
            for name, fn in fns.items():
                times[name].append(clock(name, fn))
            done += 1
    return times


def spread(times: list[float]) -> float:
    """How far the median round lies above the fastest, relative to the fastest."""
    ordered = sorted(times)
    best = ordered[0]
    return (ordered[len(ordered) // 2] - best) / best if best > 0 else 0.0


def fastest_calls_ms(fns: Mapping[str, Callable[[], Any]], rounds: int = REPEATS,
                     warmup: int = WARMUP, timer: Timer | None = None) -> dict[str, float]:
    """Each of ``fns``'s fastest call in milliseconds over alternating rounds
    (:func:`rounds_ms`)."""
    return {name: min(t) for name, t in rounds_ms(fns, rounds, warmup, timer).items()}


def pick(times: Mapping[str, list[float]]) -> str:
    """The fastest candidate by its fastest round; ``"dense"`` (when a candidate) unless
    the winner beats it by more than both spreads and :data:`MARGIN`."""
    best_ms = {name: min(t) for name, t in times.items()}
    best = min(best_ms, key=best_ms.__getitem__)
    if "dense" in times and best != "dense":
        margin = max(MARGIN - 1.0, spread(times[best]), spread(times["dense"]))
        if best_ms[best] * (1.0 + margin) >= best_ms["dense"]:
            best = "dense"
    return best


def fastest(key: tuple, candidates: Mapping[str, nn.Module], x: Any,
            timer: Timer | None = None) -> tuple[str, dict]:
    """:func:`measured` without the spreads."""
    best, times, _ = measured(key, candidates, x, timer)
    return best, times


def full_key(key: tuple, names: Any) -> tuple:
    """The cache key of a choice among ``names`` under ``key`` at torch's thread count."""
    return (*key, torch.get_num_threads(), tuple(sorted(names)))


#: choices read from a plan file (:func:`stored_plan`): used before measuring anything
_STORED: dict[str, list] | None = None
#: every choice made while a plan file is open, to be written back
_USED: dict[str, list] | None = None


def lookup(full: tuple) -> tuple[str, dict, dict] | None:
    """A choice already made for ``full`` (a plan file's, then this process's), or None."""
    if _STORED is not None and repr(full) in _STORED:
        best, times, spread = _STORED[repr(full)]
        found = (best, dict(times), dict(spread))
    else:
        found = _CACHE.get(full)
    if found is not None and _USED is not None:
        _USED[repr(full)] = list(found)
    return found


@contextlib.contextmanager
def stored_plan(stored: dict[str, list]) -> Iterator[dict[str, list]]:
    """While open, :func:`lookup` answers from ``stored`` first, and every choice made
    (stored or measured) is collected in the yielded dict (a plan file's contents)."""
    global _STORED, _USED  # noqa: PLW0603  (one compile at a time holds a plan file)
    _STORED, _USED = stored, {}
    try:
        yield _USED
    finally:
        _STORED, _USED = None, None


def measured(key: tuple, candidates: Mapping[str, nn.Module], x: Any,
             timer: Timer | None = None) -> tuple[str, dict, dict]:
    """Name of the fastest of ``candidates`` (``"dense"`` among them, kept unless beaten
    beyond the spread, see :func:`pick`) on input ``x``, every candidate's fastest call
    (ms) and its spread; cached under ``key`` (not with an injected ``timer``)."""
    full = full_key(key, candidates)
    found = lookup(full) if timer is None or _STORED is not None else None
    if found is not None:
        return found
    args = x if isinstance(x, tuple) else (x,)
    rounds = rounds_ms({name: (lambda m=m: m(*args)) for name, m in candidates.items()},
                       timer=timer)
    best = pick(rounds)
    found = (best, {n: min(t) for n, t in rounds.items()},
             {n: spread(t) for n, t in rounds.items()})
    if timer is None:
        _CACHE[full] = found
    if _USED is not None:
        _USED[repr(full)] = list(found)
    return found


def shape_key(kind: str, weight: Tensor, x: Any) -> tuple:
    first = x[0] if isinstance(x, tuple) else x
    return (kind, tuple(weight.shape), int(torch.count_nonzero(weight)), tuple(first.shape))


def clear_cache() -> None:
    _CACHE.clear()
