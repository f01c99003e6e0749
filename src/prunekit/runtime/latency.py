"""``prunekit bench model.pkz``: dense vs compiled latency of a saved model on this machine.

The dense time is the loaded model itself (its pruned weights held densely, zeros
multiplied); the compiled time is :func:`prunekit.compile` of it for the same input
shape. Both are medians of ``repeats`` timed calls after warm-up, at torch's current thread
count, on random input of the file's recorded input shape.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, DataError
from .choose import median_ms
from .compile import compile as compile_model


def bench_saved_model(path: str | Path, *, batch: int = 1, repeats: int = 20,
                      model: nn.Module | None = None,
                      echo: Callable[[str], Any] = print) -> dict[str, Any]:
    """Time the model in ``path`` dense and compiled; print and return the figures.
    ``model``: the architecture to load the weights into, for a file whose model was
    built by the user's own code (files never import code; see :func:`prunekit.artifacts.load`)."""
    from ..artifacts import load  # noqa: PLC0415  (the file format is above this layer)

    path = Path(path)
    if not path.is_file():
        raise DataError(f"model file not found: {path}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"batch must be a positive integer, got {batch!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ConfigError(f"repeats must be a positive integer, got {repeats!r}")
    loaded = load(path, model=model)
    shape = loaded.spec.get("input_shape")
    if not isinstance(shape, list) or not shape:
        raise DataError(f"{path} does not record the model's input shape")
    model = loaded.model.eval()
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(0))
    compiled = compile_model(model, x)
    dense_ms = median_ms(lambda: model(x), repeats)
    compiled_ms = median_ms(lambda: compiled(x), repeats)
    result = {"file": str(path), "batch": batch, "threads": torch.get_num_threads(),
              "dense_ms": dense_ms, "compiled_ms": compiled_ms,
              "speedup": dense_ms / compiled_ms if compiled_ms else float("inf"),
              "plan": compiled.prunekit_plan.describe()}
    traffic = [c.traffic() for c in compiled.prunekit_plan.layers if c.dense_bytes_per_row]
    result["traffic"] = traffic
    echo(f"{path.name}: batch {batch}, {result['threads']} threads\n"
         f"  dense    {dense_ms:9.3f} ms\n"
         f"  compiled {compiled_ms:9.3f} ms  ({result['speedup']:.2f}x)\n"
         + "\n".join(f"  {line}" for line in result["plan"].splitlines())
         + ("\n  bytes read per activation row (the batch-1 yardstick):\n" if traffic else "")
         + "\n".join(f"    {line}" for line in traffic))
    return result
