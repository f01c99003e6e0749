"""Accuracy vs compression for every method, from the same dense LeNet-5, same epoch budget.

Every run goes through the product's own path (`run_recipe` on the default recipe with
overrides), starting from the dense model that bench/dense_baseline.py trained, so the only
difference between rows is the method (and scheme). Each run spends the same number of
epochs after the dense model: pruning epochs + masked retraining epochs (`--budget`).

Irregular: ADMM, reweighted, gradual magnitude and one-shot magnitude at 10x/20x/40x/70x
(one global magnitude allocation across conv1..fc2 for everyone). Filter (conv1, conv2, fc1):
ADMM and gradual magnitude; block (BLK-REW 8x4 conv2 / 16x16 fc1 blocks): reweighted (the
BLK-REW method) and gradual magnitude; at 2x/4x/8x of the pruned layers' weights.

Runs go to `--workers` processes with one torch thread each (the 2-core machine does more
LeNet-5 epochs per second that way than with one 2-thread process).

Writes bench/results/compression.{json,md,png}; `ratio` is measured from the saved weights.

    python bench/compression.py [--budget 8] [--only admm:irregular:40]
"""

from __future__ import annotations

import argparse
import io
import json
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from common import RESULTS, command, header, machine, measured_by, write_json  # noqa: E402
from lenet_common import (  # noqa: E402
    ADAM,
    DENSE,
    RECIPE,
    ROOT,
    branch_overrides,
    rule,
    seconds_per_epoch,
)
from prunekit.files import atomic_write_bytes, atomic_write_text  # noqa: E402
from prunekit.pipeline import run_recipe  # noqa: E402
from prunekit.recipe import load_recipe  # noqa: E402

RUNS = ROOT / "runs/bench-compression"

IRREGULAR_RATIOS = (10, 20, 40, 70)
COLORS = {"admm": "tab:blue", "reweighted": "tab:orange", "gradual": "tab:green",
          "magnitude": "tab:red"}
STRUCTURED_RATIOS = (2, 4, 8)

# pruning epochs as a fraction of the budget
PRUNE_FRACTION = 0.5


def method_overrides(method: str, prune_epochs: int) -> dict[str, Any]:
    if method == "admm":
        return {"method": "admm", "rho": 3e-3, "rho_schedule": "geometric", "rho_growth": 2.0,
                "update_every": 1}
    if method == "reweighted":
        return {"method": "reweighted", "lam": 2e-5, "eps": 1e-3, "reweight_every": 1}
    if method == "gradual":
        return {"method": "gradual", "start_epoch": 0, "end_epoch": prune_epochs}
    if method == "magnitude":
        return {"method": "magnitude"}
    raise ValueError(method)


def run_one(method: str, scheme: str, ratio: float, budget: int,
            runs: Path = RUNS) -> dict[str, Any]:
    prune_epochs = max(1, round(budget * PRUNE_FRACTION))
    retrain_epochs = budget - prune_epochs
    if method == "magnitude":  # one-shot: prune at once, spend the whole budget retraining
        prune_epochs, retrain_epochs = 0, budget
    prune = method_overrides(method, prune_epochs)
    prune["targets"] = [rule(scheme, ratio)]
    prune["train"] = {**ADAM, "epochs": prune_epochs, "progress": False}
    overrides = branch_overrides(DENSE, prune, retrain_epochs)
    out = runs / f"{method}-{scheme}-{ratio}x"
    start = time.perf_counter()
    report = run_recipe(load_recipe(RECIPE, overrides), out, resume=True, progress=False,
                        echo=lambda *_: None)
    seconds = time.perf_counter() - start
    return {
        "model": "lenet5",
        "dataset": "fashion_mnist",
        "method": method,
        "scheme": scheme,
        "target_ratio": ratio,
        "ratio": report["compression_ratio_weights"],
        "ratio_all_params": report["compression_ratio"],
        "accuracy": report["accuracy"]["compressed"],
        "dense_accuracy": report["accuracy"]["dense"],
        "epochs": budget,
        "prune_epochs": prune_epochs,
        "retrain_epochs": retrain_epochs,
        "seconds": seconds,
        "seconds_per_epoch": seconds_per_epoch(report),
        "command": command(),
    }


def plan(only: list[str] | None) -> list[tuple[str, str, int]]:
    """Every run, the most telling first (40x and 70x irregular, then the structured
    schemes), so a benchmark cut short still has comparable rows for every method."""
    irregular = [(m, "irregular", r) for m in ("admm", "reweighted", "gradual", "magnitude")
                 for r in IRREGULAR_RATIOS]
    structured = [(m, "filter", r) for m in ("admm", "gradual") for r in STRUCTURED_RATIOS]
    structured += [(m, "block", r) for m in ("reweighted", "gradual") for r in STRUCTURED_RATIOS]
    priority = {40: 0, 70: 1, 4: 2, 8: 3, 20: 4, 2: 5, 10: 6}
    runs = sorted(irregular + structured, key=lambda run: priority[run[2]])
    if only:
        wanted = {tuple(o.split(":")) for o in only}
        runs = [r for r in runs if (r[0], r[1], str(r[2])) in wanted]
    return runs


def write_results(rows: list[dict[str, Any]]) -> None:
    write_json("compression.json", rows)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, scheme in zip(axes, ("irregular", "filter", "block"), strict=True):
        budgets = sorted({r["epochs"] for r in rows})
        for epochs in budgets:
            for method in ("admm", "reweighted", "gradual", "magnitude"):
                pts = sorted((r["ratio"], 100 * r["accuracy"]) for r in rows
                             if r["method"] == method and r["scheme"] == scheme
                             and r["epochs"] == epochs)
                label = method if len(budgets) == 1 else f"{method}, {epochs} epochs"
                style = "-" if epochs == budgets[0] else ":"
                if pts:
                    ax.plot(*zip(*pts, strict=True), style, marker="o", label=label,
                            color=COLORS[method])
        dense = [100 * r["dense_accuracy"] for r in rows if r["scheme"] == scheme]
        if dense:
            ax.axhline(dense[0], color="grey", linestyle="--", label="dense")
        ax.set_xscale("log")
        ax.set_xlabel("compression ratio of pruned weights (measured)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"LeNet-5 / Fashion-MNIST, {scheme}")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(RESULTS / "compression.png", buf.getvalue())

    lines = ["| method | scheme | target | measured ratio | accuracy (%) | dense (%) | delta |"
             " epochs (prune+retrain) | s/epoch prune | s/epoch retrain |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        spe = r["seconds_per_epoch"]
        lines.append(
            f"| {r['method']} | {r['scheme']} | {r['target_ratio']}x | {r['ratio']:.1f}x | "
            f"{100 * r['accuracy']:.2f} | {100 * r['dense_accuracy']:.2f} | "
            f"{100 * (r['accuracy'] - r['dense_accuracy']):+.2f} | "
            f"{r['prune_epochs']}+{r['retrain_epochs']} | "
            f"{spe.get('prune', float('nan')):.1f} | {spe.get('retrain', float('nan')):.1f} |"
        )
    atomic_write_text(
        RESULTS / "compression.md",
        header("Accuracy vs compression, LeNet-5 on Fashion-MNIST")
        + "\nSame dense model for every row; every method gets the same number of epochs "
        "after it (column `epochs`; ADMM, reweighted, gradual: half pruning, half masked "
        "retraining with the same settings; one-shot: the whole budget retraining). "
        "Ratio = weights of the pruned layers / their nonzeros, measured from the saved "
        "weights. Runs went two at a time, one torch thread each, so s/epoch is per process.\n\n"
        + "\n".join(lines)
        + measured_by(rows)
        + "\n![accuracy vs ratio](compression.png)\n",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--budget", type=int, default=6, help="epochs after the dense model")
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel")
    parser.add_argument("--replot", action="store_true",
                        help="only redraw the table and plot from compression.json")
    parser.add_argument("--runs", type=Path, default=RUNS,
                        help="run directories (one per budget: finished runs are reused)")
    parser.add_argument("--only", nargs="*", help="method:scheme:ratio items to run")
    args = parser.parse_args()
    if args.replot:
        write_results(json.loads((RESULTS / "compression.json").read_text()))
        return
    if not DENSE.exists():
        raise SystemExit(f"{DENSE} missing: run bench/dense_baseline.py first")
    existing = RESULTS / "compression.json"
    rows = json.loads(existing.read_text()) if existing.exists() else []
    todo = plan(args.only)
    with ProcessPoolExecutor(args.workers, initializer=torch.set_num_threads,
                             initargs=(1,)) as pool:
        futures = [pool.submit(run_one, m, s, r, args.budget, args.runs) for m, s, r in todo]
        for future in as_completed(futures):
            row = future.result()
            key = (row["method"], row["scheme"], row["target_ratio"], row["epochs"])
            rows = [r for r in rows
                    if (r["method"], r["scheme"], r["target_ratio"], r["epochs"]) != key]
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("method", "scheme", "target_ratio", "ratio",
                                                  "accuracy")}), flush=True)
            rows.sort(key=lambda r: (r["epochs"], r["scheme"], r["method"], r["target_ratio"]))
            write_results(rows)
    print(f"machine: {machine()['cpu']}")


if __name__ == "__main__":
    main()
