"""Choose an implementation by measuring it on this machine, once per shape.

Which kernel wins depends on the shape, the sparsity, its structure, the batch and the
thread count (torch CSR needs about 90% zeros; a gathered block kernel wins from about
50%; at batch 64 dense MKL is hard to beat below 75%), so nothing is decided by rule: every
candidate runs on an input of the layer's real shape, the fastest wins, and dense stays
whenever no sparse candidate is faster. Candidates are compared by their *fastest* call,
not the median: on a busy machine a call that lost its core for a scheduler slice takes
milliseconds longer, and that says nothing about the kernel. Results are cached per
(layer kind, weight shape, nonzeros, input shape, band layout, threads, candidates), so
compiling several models with the same layers measures each once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

#: timed calls per candidate (after warm-up); the median counts
REPEATS = 7
WARMUP = 2
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


def fastest(key: tuple, candidates: Mapping[str, nn.Module], x: Any) -> tuple[str, dict]:
    """Name of the fastest of ``candidates`` (``"dense"`` among them) on input ``x``, and
    every candidate's fastest call in milliseconds; cached under ``key``."""
    full = (*key, torch.get_num_threads(), tuple(sorted(candidates)))
    if full in _CACHE:
        return _CACHE[full]
    args = x if isinstance(x, tuple) else (x,)
    times = {name: times_ms(lambda m=m: m(*args))[0] for name, m in candidates.items()}
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
