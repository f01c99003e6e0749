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
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
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

_CACHE: dict[tuple, tuple[str, dict[str, float]]] = {}


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


def fastest_calls_ms(fns: Mapping[str, Callable[[], Any]], rounds: int = REPEATS,
                     warmup: int = WARMUP) -> dict[str, float]:
    """Each of ``fns``'s fastest call in milliseconds, over at least ``rounds`` alternating
    rounds after warm-up (more, while they stay within ``ROUND_BUDGET_S`` in all)."""
    best = dict.fromkeys(fns, float("inf"))
    with torch.no_grad():
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        done, started = 0, time.perf_counter()
        while done < rounds or (done < MAX_ROUNDS
                                and time.perf_counter() - started < ROUND_BUDGET_S):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn()
                best[name] = min(best[name], 1e3 * (time.perf_counter() - start))
            done += 1
    return best


def fastest(key: tuple, candidates: Mapping[str, nn.Module], x: Any) -> tuple[str, dict]:
    """Name of the fastest of ``candidates`` (``"dense"`` among them) on input ``x``, and
    every candidate's fastest call in milliseconds; cached under ``key``."""
    full = (*key, torch.get_num_threads(), tuple(sorted(candidates)))
    if full in _CACHE:
        return _CACHE[full]
    args = x if isinstance(x, tuple) else (x,)
    times = fastest_calls_ms({name: (lambda m=m: m(*args)) for name, m in candidates.items()})
    best = min(times, key=times.__getitem__)
    if "dense" in times and times[best] * MARGIN > times["dense"]:
        best = "dense"
    _CACHE[full] = (best, times)
    return best, times


def shape_key(kind: str, weight: Tensor, x: Any) -> tuple:
    first = x[0] if isinstance(x, tuple) else x
    return (kind, tuple(weight.shape), int(torch.count_nonzero(weight)), tuple(first.shape))


def clear_cache() -> None:
    _CACHE.clear()
