"""What compiling, and what the sparsity, buy on this machine (``prunekit bench``).

Three models run on random input of the model's input shape, at torch's thread
count: the loaded model eager (its pruned weights held densely, zeros multiplied), the
same architecture with *nothing pruned* compiled (every zero of the weights replaced by a
small nonzero, so no kernel can skip anything and no channel can go: what the graph
passes alone buy), and the pruned model compiled. Pruned compiled over dense compiled is
the part of the speedup that is the sparsity's.

They are timed in alternating rounds (one call of each per round), so a burst of load
falls on all three, and each speedup is a median over rounds. When the rounds disagree
wildly (their speedups differ by more than :data:`MAX_ROUND_RATIO`), no speedup is
printed: on a busy machine a single figure would be a guess.

Each layer's line gives the bytes its layout reads per activation row next to dense's:
at batch 1 that traffic, not the arithmetic, is what a layer costs.
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .choose import rounds_ms
from .compile import compile as compile_model

#: the most the per-round speedups may differ (max / min) for a speedup to be printed
MAX_ROUND_RATIO = 1.5
#: fewest alternating rounds timed
MIN_ROUNDS = 5


def densified(model: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of ``model`` with every zero of its weights replaced by a small nonzero (a
    tenth of the layer's typical weight): the same architecture with nothing pruned."""
    dense = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in dense.named_parameters():
            if not name.endswith("weight") or p.dim() < 2:
                continue
            zeros = p == 0
            if zeros.any():
                scale = float(p[~zeros].abs().mean()) if (~zeros).any() else 1.0
                noise = torch.rand(p.shape, generator=g) * 0.1 * scale + 1e-3 * scale
                p[zeros] = noise[zeros].to(p.dtype)
    return dense


def bench_model(model: nn.Module, input_shape: Sequence[int], *, name: str = "model",
                batch: int = 1, repeats: int = 20, plan_cache: str | Path | None = None,
                echo: Callable[[str], Any] = print) -> dict[str, Any]:
    """Time ``model`` (inputs of ``input_shape`` per example) eager, compiled with nothing
    pruned and compiled; print and return the figures. ``plan_cache``: where compile keeps
    its measured plans (a second bench of the same model measures no layer again). A model
    file is benched through :func:`prunekit.commands.bench`, which loads it."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"batch must be a positive integer, got {batch!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ConfigError(f"repeats must be a positive integer, got {repeats!r}")
    shape = list(input_shape)
    pruned = model.eval()
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(0))
    compiled = compile_model(pruned, x, plan_cache=plan_cache)
    dense_compiled = compile_model(densified(pruned), x, plan_cache=plan_cache)
    rounds = rounds_ms({"eager": lambda: pruned(x), "dense_compiled": lambda: dense_compiled(x),
                        "compiled": lambda: compiled(x)}, rounds=max(MIN_ROUNDS, repeats))
    ms = {name: statistics.median(t) for name, t in rounds.items()}
    result: dict[str, Any] = {
        "model": name, "batch": batch, "threads": torch.get_num_threads(),
        "dense_ms": ms["eager"], "dense_compiled_ms": ms["dense_compiled"],
        "compiled_ms": ms["compiled"], "rounds_ms": rounds,
        "plan": compiled.prunekit_plan.describe()}
    lines = [f"{name}: batch {batch}, {result['threads']} threads, "
             f"{len(rounds['eager'])} alternating rounds (median)",
             f"  dense (eager)              {ms['eager']:9.3f} ms",
             f"  dense compiled (no zeros)  {ms['dense_compiled']:9.3f} ms",
             f"  pruned compiled            {ms['compiled']:9.3f} ms"]
    for label, key, num, den in (("speedup", "speedup", "eager", "compiled"),
                                 ("of which compiling alone", "compile_speedup", "eager",
                                  "dense_compiled"),
                                 ("of which the sparsity", "sparsity_speedup",
                                  "dense_compiled", "compiled")):
        per_round = [a / b for a, b in zip(rounds[num], rounds[den], strict=True) if b > 0]
        low, high = min(per_round), max(per_round)
        if high > MAX_ROUND_RATIO * low:
            result[key] = None
            lines.append(f"  {label}: not printed, the rounds disagree ({low:.2f}x to "
                         f"{high:.2f}x): the machine is busy; run again when it is quiet")
        else:
            result[key] = ms[num] / ms[den]
            lines.append(f"  {label}: {result[key]:.2f}x (rounds {low:.2f}x to {high:.2f}x)")
    traffic = [c.traffic() for c in compiled.prunekit_plan.layers if c.dense_bytes_per_row]
    result["traffic"] = traffic
    lines += [f"  {line}" for line in result["plan"].splitlines()]
    if traffic:
        lines.append("  bytes read per activation row (the batch-1 yardstick):")
        lines += [f"    {line}" for line in traffic]
    echo("\n".join(lines))
    return result
