"""Dense LeNet-5 on Fashion-MNIST with the demo recipe's full pre-training schedule.

Writes bench/results/dense_baseline.{json,md,png}: test accuracy per epoch, seconds per
epoch, and the final accuracy (the target is >= 91.5%). The trained weights are kept in
runs/bench-dense/ so the compression benchmark can start every method from the same model.

    python bench/dense_baseline.py [--recipe recipes/lenet5-fashion-admm.yaml]
"""

from __future__ import annotations

import argparse
import io
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from common import RESULTS, header, machine, write_json  # noqa: E402
from prunekit.files import atomic_write_bytes, atomic_write_text  # noqa: E402
from prunekit.pipeline import run_recipe  # noqa: E402
from prunekit.recipe import load_recipe  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipe", default=str(ROOT / "recipes/lenet5-fashion-admm.yaml"))
    parser.add_argument("--out", default=str(ROOT / "runs/bench-dense"))
    args = parser.parse_args()

    recipe = load_recipe(args.recipe, ["prune=null", "retrain=null", "train.progress=false"])
    report = run_recipe(recipe, args.out, resume=True, progress=False)
    history = [r for r in report["history"] if r["stage"] == "pretrain"]
    accuracy = [r["test_accuracy"] for r in history]
    seconds = [r["seconds"] for r in history]
    result = {
        "model": "lenet5",
        "dataset": recipe["data"]["name"],
        "recipe": str(Path(args.recipe).relative_to(ROOT)),
        "train": recipe["train"],
        "epochs": len(history),
        "final_accuracy": accuracy[-1],
        "best_accuracy": max(accuracy),
        "target_accuracy": 0.915,
        "meets_target": accuracy[-1] >= 0.915,
        "seconds_per_epoch_median": statistics.median(seconds),
        "accuracy_per_epoch": accuracy,
        "seconds_per_epoch": seconds,
        "machine": machine(),
    }
    write_json("dense_baseline.json", result)

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(range(1, len(accuracy) + 1), [100 * a for a in accuracy], marker="o")
    ax.axhline(91.5, color="grey", linestyle="--", label="target 91.5%")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Dense LeNet-5 on Fashion-MNIST")
    ax.legend()
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    atomic_write_bytes(RESULTS / "dense_baseline.png", buf.getvalue())

    pairs = enumerate(zip(accuracy, seconds, strict=True), 1)
    rows = "\n".join(f"| {i} | {100 * a:.2f} | {s:.1f} |" for i, (a, s) in pairs)
    atomic_write_text(
        RESULTS / "dense_baseline.md",
        header("Dense LeNet-5 on Fashion-MNIST")
        + f"\nFinal test accuracy **{100 * accuracy[-1]:.2f}%** (target >= 91.5%), "
        f"median {result['seconds_per_epoch_median']:.1f} s per epoch.\n\n"
        "| epoch | test accuracy (%) | seconds |\n|---|---|---|\n" + rows + "\n\n"
        "![accuracy curve](dense_baseline.png)\n",
    )
    print(f"final accuracy {accuracy[-1]:.4f}; results in {RESULTS}")


if __name__ == "__main__":
    main()
