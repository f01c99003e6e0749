"""Seconds per epoch of ADMM / reweighted training vs plain training (target: < 15% more).

Same model (the dense LeNet-5 from bench/dense_baseline.py), same data, same optimizer,
alternating the configurations so that drift in machine load hits them all alike; the
median of the repeats is reported.

    python bench/overhead.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from common import RESULTS, header, machine, write_json
from prunekit import data, models
from prunekit.files import atomic_write_text, load_checkpoint
from prunekit.methods import ADMM, Reweighted
from prunekit.targets import resolve
from prunekit.training import Trainer

ROOT = Path(__file__).resolve().parent.parent
DENSE = ROOT / "runs/bench-dense/dense.pt"
RULES = [{"layers": ["conv*", "fc*"], "scheme": "irregular", "sparsity": "lenet5-admm-71x"}]


def one_epoch(kind: str, train_loader) -> float:
    model = models.get("lenet5")
    model.load_state_dict(load_checkpoint(DENSE)["state_dict"])
    plugins = []
    if kind == "admm":
        plugins = [ADMM(model, resolve(model, RULES), rho=1e-3)]
    elif kind == "reweighted":
        plugins = [Reweighted(model, resolve(model, RULES), lam=2e-5)]
    config = {"epochs": 1, "optimizer": "adam", "lr": 1e-3, "schedule": "constant",
              "progress": False}
    trainer = Trainer(model, config, train_loader, None, plugins=plugins)
    start = time.perf_counter()
    trainer.fit()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    train_loader, _ = data.get_loaders("fashion_mnist", batch_size=128)
    kinds = ("plain", "admm", "reweighted")
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(args.repeats):
        for kind in kinds:
            times[kind].append(one_epoch(kind, train_loader))
    median = {k: statistics.median(v) for k, v in times.items()}
    overhead = {k: median[k] / median["plain"] - 1.0 for k in ("admm", "reweighted")}
    write_json("overhead.json", {"seconds_per_epoch": times, "median": median,
                                 "overhead": overhead, "target": 0.15,
                                 "threads": torch.get_num_threads(), "machine": machine()})
    rows = "\n".join(f"| {k} | {median[k]:.2f} | "
                     f"{'-' if k == 'plain' else f'{100 * overhead[k]:+.1f}%'} |" for k in kinds)
    atomic_write_text(
        RESULTS / "overhead.md",
        header("Training overhead of ADMM and reweighted vs plain training")
        + f"\nLeNet-5, Fashion-MNIST (60k images, batch 128), Adam; median of {args.repeats} "
        "epochs each, configurations interleaved.\n\n| training | s/epoch | overhead |\n"
        "|---|---|---|\n" + rows + "\n",
    )
    print(median, overhead)


if __name__ == "__main__":
    main()
