"""What the LeNet-5 compression benchmarks share (``compression.py``,
``compression_seeds.py``, ``mask_overlap.py``): the recipe and the dense model every run
branches from, the overrides of one branch, and where the seed runs live. A module, not a
script: the scripts import it (as they import ``common``), never each other.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from prunekit.files import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes/lenet5-fashion-admm.yaml"
#: made by ``make bench-dense`` (bench/dense_baseline.py)
DENSE = ROOT / "runs/bench-dense/dense.pt"
#: the run directories of compression_seeds.py, one folder per dense model
SEED_RUNS = ROOT / "runs/bench-seeds"
#: the optimizer settings of every pruning and retraining stage
ADAM = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "schedule": "constant"}


def rule(scheme: str, ratio: float) -> dict[str, Any]:
    sparsity = round(1.0 - 1.0 / ratio, 6)
    if scheme == "irregular":
        return {"layers": ["conv*", "fc*"], "scheme": "irregular", "sparsity": sparsity,
                "allocation": "global"}
    if scheme == "filter":  # the classifier's output layer keeps all its rows
        return {"layers": ["conv*", "fc1"], "scheme": "filter", "sparsity": sparsity}
    if scheme == "block":
        return {"layers": ["conv2", "fc1"], "scheme": "block", "sparsity": sparsity}
    raise ValueError(scheme)


def branch_overrides(dense: Path, prune: dict[str, Any], retrain_epochs: int,
                     seed: int | None = None, retrain: dict[str, Any] | None = None) -> list[str]:
    """Recipe overrides for one run from the dense checkpoint: the prune section as given,
    masked retraining with the shared Adam settings changed by ``retrain`` (and the seed
    when given)."""
    overrides = [
        f"model.checkpoint={dense}",
        "train.epochs=0",
        "train.progress=false",
        f"prune={json.dumps(prune)}",
        "retrain=" + json.dumps({**ADAM, "lr": 5e-4, "schedule": "cosine",
                                 "epochs": retrain_epochs, "progress": False,
                                 **(retrain or {})}),
    ]
    return overrides if seed is None else [*overrides, f"seed={seed}"]


def seconds_per_epoch(report: dict[str, Any]) -> dict[str, float]:
    by_stage: dict[str, list[float]] = {}
    for record in report.get("history") or []:
        by_stage.setdefault(record["stage"], []).append(record["seconds"])
    return {stage: sum(s) / len(s) for stage, s in by_stage.items()}


def dense_label(path: Path = DENSE) -> str:
    """Which dense model a row starts from: rows compare only within one (dense trainings
    of the same recipe on other CPUs differ by a few tenths of a point). The label digests
    the weights, not the file (which also holds timings), so a retraining that gives the
    same weights (same recipe, same kind of CPU) continues the same rows."""
    digest = hashlib.sha256()
    for name, value in load_checkpoint(path)["state_dict"].items():
        digest.update(name.encode())
        digest.update(value.contiguous().numpy().tobytes())
    return "w-" + digest.hexdigest()[:10]
