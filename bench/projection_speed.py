"""How long each sparsity scheme takes to project a whole ResNet-50.

Projection runs on every pruned weight of a model once per ADMM epoch (and at hard pruning),
so it must stay cheap next to training: the goal is under 2 s for the 25M weights of
ResNet-50 on a small CPU. The weights are random tensors of ResNet-50's real layer shapes
(53 convs: the stem, the 1x1/3x3/1x1 bottleneck convs and the 4 downsample convs; plus the
1000x2048 fc).

Every scheme in ``prunekit.schemes.available()`` is timed at sparsity 0.8, except those with
a fixed setting (nm: 2:4; unify: 0.5 pruned, 0.3 unified; quant: 4 bits); ``pattern`` only
applies to 3x3 convs and is timed on those. A scheme that cannot be imported or built is
reported as unavailable rather than stopping the run.

    python bench/projection_speed.py [--schemes block nm] [--repeats 3] [--out bench/results]

Writes ``projection_speed.json`` and ``projection_speed.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import time
from pathlib import Path

import torch

from common import RESULTS, command, machine, resnet50_shapes
from prunekit import schemes
from prunekit.errors import PrunekitError
from prunekit.files import atomic_write_text

LIMIT_S = 2.0
DEFAULT_SPARSITY = 0.8
#: name -> (options, sparsity) for schemes that need more than "sparsity 0.8"
SETTINGS: dict[str, tuple[dict, float | None]] = {
    "nm": ({"n": 2, "m": 4}, None),
    "unify": ({"unified": 0.3}, 0.5),
    "quant": ({"bits": 4}, None),
}


def applies(name: str, shape: tuple[int, ...]) -> bool:
    """Pattern pruning is defined on 3x3 kernels only."""
    return name != "pattern" or (len(shape) == 4 and shape[2:] == (3, 3))


def time_scheme(name: str, weights: dict[str, torch.Tensor], repeats: int) -> dict[str, object]:
    """One result row: median seconds to project every weight the scheme applies to."""
    options, sparsity = SETTINGS.get(name, ({}, DEFAULT_SPARSITY))
    row: dict[str, object] = {"scheme": name, "options": options, "sparsity": sparsity}
    try:
        scheme = schemes.get(name, **options)
        chosen = []
        for w in weights.values():
            if not applies(name, tuple(w.shape)):
                continue
            try:
                scheme.check(w.shape)
            except PrunekitError:
                continue
            chosen.append(w)
    except Exception as exc:  # noqa: BLE001  (a module that fails to import, bad options)
        return row | {"status": f"unavailable: {type(exc).__name__}: {exc}"}

    def run_once() -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        for w in chosen:
            scheme.project(w, sparsity)
        return time.perf_counter() - wall, time.process_time() - cpu

    try:
        run_once()  # warm-up: allocator, lazy imports, kernel dispatch caches
        runs = [run_once() for _ in range(repeats)]
    except Exception as exc:  # noqa: BLE001  (a broken scheme is reported, not fatal)
        return row | {"status": f"failed: {type(exc).__name__}: {exc}"}
    seconds = statistics.median(r[0] for r in runs)
    return row | {
        "status": "ok",
        "layers": len(chosen),
        "params": sum(w.numel() for w in chosen),
        "seconds": round(seconds, 4),
        "cpu_seconds": round(statistics.median(r[1] for r in runs), 4),
        "under_2s": seconds < LIMIT_S,
    }


def markdown(payload: dict) -> str:
    info, rows = payload["machine"], payload["rows"]
    load = ", ".join(f"{x:.1f}" for x in payload["load_average"])
    lines = [
        "# Projection speed on ResNet-50 weight shapes",
        "",
        f"- command: `{payload['command']}`",
        f"- machine: {info['cpu']}, {info['cores']} cores ({info['platform']}); "
        f"torch {info['torch']} with {info['torch_threads']} threads; Python {info['python']}",
        f"- date: {payload['date']}",
        f"- load average (1/5/15 min) when the run started: {load}",
        f"- {payload['total_params']:,} weights in {payload['layers']} tensors; median of "
        f"{payload['repeats']} runs after one warm-up; goal: under {LIMIT_S:g} s wall time",
        "",
        "Wall seconds is what the goal is about; CPU seconds (all threads together) shows the",
        "work done and is less disturbed by other processes sharing the machine.",
        "",
        "| scheme | options | sparsity | layers | params | wall s | CPU s | under 2 s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        opts = json.dumps(r["options"]) if r["options"] else "-"
        sparsity = "natural" if r["sparsity"] is None else f"{r['sparsity']:g}"
        if r["status"] == "ok":
            lines.append(
                f"| {r['scheme']} | {opts} | {sparsity} | {r['layers']} | {r['params']:,} "
                f"| {r['seconds']:.3f} | {r['cpu_seconds']:.3f} "
                f"| {'yes' if r['under_2s'] else 'NO'} |"
            )
        else:
            status = r["status"].replace("|", "\\|").splitlines()[0]
            lines.append(f"| {r['scheme']} | {opts} | {sparsity} | - | - | - | - | {status} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schemes", nargs="*", help="names to time (default: all available)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    weights = {name: torch.randn(shape) for name, shape in resnet50_shapes()}
    load = list(os.getloadavg())
    rows = []
    for name in args.schemes or schemes.available():
        row = time_scheme(name, weights, args.repeats)
        print(f"{name:10s} {row.get('seconds', row['status'])}", flush=True)
        rows.append(row)

    payload = {
        "command": command(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "load_average": load,
        "repeats": args.repeats,
        "layers": len(weights),
        "total_params": sum(w.numel() for w in weights.values()),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "projection_speed.json", json.dumps(payload, indent=2) + "\n")
    atomic_write_text(args.out / "projection_speed.md", markdown(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
